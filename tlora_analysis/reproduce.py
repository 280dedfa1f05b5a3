"""The main job: train LoRA, TLoRA and a head-only baseline on the default task, analyse, draw, report.

Runs that already finished with the same settings are reused (``retrain=True`` forces
training again); an unfinished run is resumed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .analysis import compare_runs
from .analysis.compare import SETTINGS
from .config import REPRODUCE_EPOCHS, TrainConfig
from .errors import InputError
from .figures import render_all
from .models import base_weights
from .report import write_report
from .store import RUN_FORMAT, Run, atomic_write_bytes, atomic_write_json, load_run, read_json
from .training import resume, train


def _check_replaceable(run_dir: Path) -> None:
    """Refuse, before any work, to replace a directory that is not a run this tool wrote."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise InputError(f"{run_dir}: exists and is not a run directory; reproduce writes its runs there, choose another --runs-dir")
    if run_dir.is_dir() and any(run_dir.iterdir()) and (
        not (run_dir / "run.json").is_file() or read_json(run_dir / "run.json", "run.json").get("format") != RUN_FORMAT
    ):
        raise InputError(f"{run_dir}: holds files but no tlora-analysis run; reproduce will not replace it, choose another --runs-dir")


def _train_or_reuse(config: TrainConfig, run_dir: Path, retrain: bool, progress: bool, log: Callable[[str], None]) -> Run:
    """Reuse or resume a run with these settings; otherwise train a new one beside the old, and
    only once it has finished swap it in and delete the old run."""
    if (run_dir / "run.json").exists() and not retrain:
        meta = read_json(run_dir / "run.json", "run.json")
        if meta.get("config") == asdict(config):
            if meta.get("status") == "finished":
                log(f"reusing finished run {run_dir}")
                return load_run(run_dir)
            return resume(run_dir, progress=progress, log=log)
    if not run_dir.exists():
        return train(config, run_dir, progress=progress, log=log)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.new-", dir=run_dir.parent))
    fresh.rmdir()
    try:
        train(config, fresh, progress=progress, log=log)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    retired = run_dir.with_name(f".{run_dir.name}.old-{os.getpid()}")
    os.rename(run_dir, retired)
    os.rename(fresh, run_dir)
    shutil.rmtree(retired)
    return load_run(run_dir)


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        atomic_write_bytes(path, table.to_csv(index=False).encode())
        paths.append(path)
    return paths


def reproduce(out: str | Path = "figures", runs_dir: str | Path = "runs/reproduce", *, epochs: int = REPRODUCE_EPOCHS, seed: int = 0,
              retrain: bool = False, progress: bool = True, log: Callable[[str], None] = print, **overrides) -> dict:
    """Train (or reuse) the three runs, write tables to ``runs_dir/tables``, figures and report.html to ``out``."""
    started = time.perf_counter()
    out, runs_dir = Path(out), Path(runs_dir)
    configs = {method: TrainConfig(method=method, epochs=epochs, seed=seed, **overrides) for method in ("lora", "tlora", "head")}
    for method in configs:  # every input is checked before anything is trained or replaced
        _check_replaceable(runs_dir / method)
    runs = {method: _train_or_reuse(config, runs_dir / method, retrain, progress, log) for method, config in configs.items()}
    log("analysing ...")
    lora, tlora = runs["lora"], runs["tlora"]
    weights = base_weights(configs["lora"].model, lora.layer_names)
    tables = compare_runs([lora, tlora], weights)
    write_tables(tables, runs_dir / "tables")
    log("drawing figures ...")
    settings = {"epochs": epochs, "seed": seed, **SETTINGS}
    render_all(tables, out, sources={m: str(r.path) for m, r in runs.items()}, settings=settings)
    write_report(tables, [lora, tlora], out / "report.html", figure_dir=out)
    results = {
        method: {
            "final_metric": run.metrics[run.epochs[-1]].get(run.meta["main_metric"]),
            "metric": run.meta["main_metric"],
            "parameter_counts": run.meta["parameter_counts"],
            "train_seconds": round(sum(run.record(e).get("time_s", 0.0) for e in run.epochs), 1),
        }
        for method, run in runs.items()
    }
    atomic_write_json(out / "results.json", results)
    log("")
    log(f"{'method':<8}{'accuracy':>10}{'adapter params':>16}{'head params':>13}{'frozen random':>15}")
    for method, r in results.items():
        c = r["parameter_counts"]
        log(f"{method:<8}{r['final_metric']:>10.4f}{c['adapter_trainable']:>16,}{c['other_trainable']:>13,}{c['frozen_random']:>15,}")
    log(f"figures, report.html and results.json in {out}/; tables in {runs_dir / 'tables'}/ ({time.perf_counter() - started:.0f}s)")
    return results
