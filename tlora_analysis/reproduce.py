"""The main job: a small study of LoRA, TLoRA and head-only on the default task over several seeds,
then every table, figure and the report with seed confidence intervals.

The study lives in ``runs_dir`` (a study directory). Running the job again reuses its
finished cells and resumes interrupted ones. A study with other settings there is replaced
only with ``retrain=True``, and only after the new one has finished (it is run beside the
old one and then swapped in), so nothing is lost to a failed or interrupted run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from .config import ANALYSIS, REPRODUCE_EPOCHS, REPRODUCE_SEEDS, ReproduceOptions
from .errors import InputError
from .io import atomic_write_json, read_json
from .processes import threads_per_worker
from .results import study_results, write_tables
from .study import load_study
from .study.directory import STUDY_FORMAT, STUDY_JSON
from .study.execute import Executor, run_study

REPRODUCE_METHODS = ("lora", "tlora", "head")


def reproduce_spec(epochs: int = REPRODUCE_EPOCHS, seeds: int = REPRODUCE_SEEDS, **overrides) -> dict:
    """The main job's study: LoRA, TLoRA and head-only at each method's default learning rate, ``seeds`` seeds."""
    return {"method": list(REPRODUCE_METHODS), "seed": list(range(seeds)), "epochs": epochs,
            **{k: v for k, v in overrides.items() if v is not None}}


def _check_replaceable(study_dir: Path) -> None:
    """Refuse, before any work, to replace a directory that is not a study this tool wrote."""
    if study_dir.is_symlink() or (study_dir.exists() and not study_dir.is_dir()):
        raise InputError(f"{study_dir}: exists and is not a study directory; choose another --runs-dir")
    if study_dir.is_dir() and any(study_dir.iterdir()) and (
        not (study_dir / STUDY_JSON).is_file() or read_json(study_dir / STUDY_JSON, "study.json").get("format") != STUDY_FORMAT
    ):
        raise InputError(f"{study_dir}: holds files but no tlora-analysis study; reproduce will not replace it, choose another --runs-dir")


def _run_or_reuse(spec: dict, study_dir: Path, retrain: bool, executor: Executor, progress: bool, log: Callable[[str], None]):
    """Run the study in ``study_dir``; with ``retrain`` (or another spec there and ``retrain``), run it beside
    the old one and swap it in only once it has finished."""
    existing = (study_dir / STUDY_JSON).is_file()
    if existing and not retrain and read_json(study_dir / STUDY_JSON, "study.json").get("spec") != spec:
        raise InputError(f"{study_dir}: holds a study with other settings; pass --retrain to replace it once the new one "
                         "has finished, or choose another --runs-dir")
    if not existing or not retrain:
        return run_study(spec, study_dir, executor=executor, progress=progress, log=log)
    fresh = Path(tempfile.mkdtemp(prefix=f".{study_dir.name}.new-", dir=study_dir.parent))
    fresh.rmdir()
    try:
        study = run_study(spec, fresh, executor=executor, progress=progress, log=log)
        if (study.runs.status != "finished").any():
            raise InputError(f"{fresh}: some cells failed; the old study in {study_dir} is kept")
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    retired = study_dir.with_name(f".{study_dir.name}.old-{os.getpid()}")
    os.rename(study_dir, retired)
    os.rename(fresh, study_dir)
    shutil.rmtree(retired)
    return load_study(study_dir)


def reproduce(options: ReproduceOptions | None = None, *, progress: bool = True, log: Callable[[str], None] = print, **overrides) -> dict:
    """Run (or reuse) the main study, write its tables to ``runs_dir/tables`` and figures, report.html and
    results.json to ``out`` (see :class:`~tlora_analysis.config.ReproduceOptions`).

    ``overrides`` are other ``train`` settings for every cell (batch_size, ...).
    """
    from .analysis.compare import compare_study
    from .figures import render_study
    from .models import all_layer_shapes, base_weights
    from .report import write_study_report

    started, options = time.perf_counter(), options or ReproduceOptions()
    out, runs_dir, seeds, epochs, jobs = Path(options.out), Path(options.runs_dir), options.seeds, options.epochs, options.jobs
    spec = reproduce_spec(epochs, seeds, max_train_samples=options.max_train_samples, max_eval_samples=options.max_eval_samples,
                          model=options.model, **overrides)
    _check_replaceable(runs_dir)
    log(f"study: {', '.join(REPRODUCE_METHODS)} x {seeds} seeds, {epochs} epochs, {jobs} jobs of {threads_per_worker(jobs)} threads; "
        f"each cell's epochs are logged in {runs_dir / 'logs'}/ (a LoRA or TLoRA cell takes about 80 s on 2 quiet cores)")
    study = _run_or_reuse(spec, runs_dir, options.retrain, Executor(jobs=jobs), progress, log)
    if (study.runs.status != "finished").any():
        raise InputError(f"{runs_dir}: some cells did not finish (see study.json and logs/); run the same command again to resume")
    log("analysing ...")
    adapted = study.finished(adapted_only=True)
    shapes = all_layer_shapes(run.layers for run, _ in adapted)
    weights = base_weights(spec.get("model", "default"), list(shapes), shapes)
    tables = compare_study(study, weights)
    write_tables(tables, runs_dir / "tables")
    log("drawing figures ...")
    render_study(tables, out, sources={name: str(study.run_dir(name)) for name in study.cells}, settings={"study": spec, **asdict(ANALYSIS)})
    write_study_report(tables, study, out / "report.html", figure_dir=out, sensitivity=out / "sensitivity")
    results = study_results(tables, list(study.swept))
    atomic_write_json(out / "results.json", results)
    log("")
    log(f"{'method':<8}{'mean':>8}{'95% CI':>18}  per seed")
    for method, r in results["methods"].items():
        ci = f"[{r.get('ci_low', float('nan')):.3f}, {r.get('ci_high', float('nan')):.3f}]"
        log(f"{method:<8}{r['mean']:>8.3f}{ci:>18}  {', '.join(f'{v:.3f}' for v in r['per_seed'])}")
    log(f"figures, report.html and results.json in {out}/; tables in {runs_dir / 'tables'}/ ({time.perf_counter() - started:.0f}s)")
    return results
