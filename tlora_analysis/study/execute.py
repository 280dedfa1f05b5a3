"""Running a study's cells: locally as subprocesses sharing the cores, or through submitit (SLURM, or its
local executor). A cell is one ``train`` run; running the same spec again reuses finished cells and
resumes interrupted ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import TrainConfig, option
from ..errors import InputError
from ..processes import threads_per_worker
from .directory import STUDY_FORMAT, STUDY_FORMAT_VERSION, STUDY_JSON, Study, readable
from .spec import MAX_CELLS, StudySpec, parse_spec

__all__ = ["Executor", "EXECUTORS", "run_study", "run_cell"]

EXECUTORS = ("local", "submitit-local", "slurm")


def _spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*old, *new]))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]


def _prepare(spec: StudySpec, out: Path, extend: bool) -> dict:
    """The study.json to run with: new, or the existing one when the spec is unchanged (or only extends it)."""
    from ..io import read_json

    cells = spec.cells()
    if not (out / STUDY_JSON).exists():
        if out.exists() and (not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())):
            raise InputError(f"{out}: exists and is not a study directory; choose another --out")
        return {"format": STUDY_FORMAT, "format_version": STUDY_FORMAT_VERSION, "spec": spec.raw, "cells": {}}
    meta = read_json(out / STUDY_JSON, "study.json")
    if meta.get("format") != STUDY_FORMAT:
        raise InputError(f"{out / STUDY_JSON}: not a tlora-analysis study.json")
    old = meta.get("spec") or {}
    if old == spec.raw:
        return meta
    changes = "; ".join(_spec_changes(old, spec.raw))
    if not extend:
        raise InputError(f"{out}: holds a study with another spec ({changes}); use --extend to add cells, or another --out")
    old_spec = parse_spec(old)
    for name, settings in old_spec.cells().items():
        if name not in cells or {**old_spec.fixed, **settings} != {**spec.fixed, **cells[name]}:
            raise InputError(f"{out}: --extend may only add cells, but this spec changes or drops cell {name} ({changes})")
    return {**meta, "spec": spec.raw}


def run_cell(study_dir: str | Path, name: str, threads: int | None = None) -> str:
    """Train, resume or reuse one cell of a study; the unit of work every executor runs."""
    from ..io import read_json
    from ..training import resume, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    study = Study(study_dir)
    config = study.spec.config(study.settings(name))
    run_dir = study.run_dir(name)
    if run_dir.is_symlink():
        raise InputError(f"{run_dir}: is a symbolic link; a study's cells are written only inside the study")
    if (run_dir / "run.json").is_file():
        meta = read_json(run_dir / "run.json", "run.json")
        if not isinstance(meta.get("config"), dict) or asdict(TrainConfig.from_dict(meta["config"])) != asdict(config):
            raise InputError(f"{run_dir}: holds a run with other settings than cell {name} of the study")
        if meta.get("status") == "finished" and readable(run_dir):
            return "reused"
        if meta.get("status") == "finished":  # a file of it is damaged or gone: kept aside, and the cell trained again
            run_dir.rename(_aside(run_dir))
            train(config, run_dir, progress=False)
            return "trained again (the damaged run kept as " + _aside(run_dir, existing=True).name + ")"
        resume(run_dir, progress=False)
        return "resumed"
    train(config, run_dir, progress=False)
    return "trained"


def _aside(run_dir: Path, existing: bool = False) -> Path:
    """Where a damaged cell's run is kept: ``NAME.damaged``, ``NAME.damaged-2``, ... (with ``existing``, the last one used)."""
    candidates = [run_dir.with_name(f"{run_dir.name}.damaged" + (f"-{i}" if i > 1 else "")) for i in range(1, 1000)]
    free = next(i for i, c in enumerate(candidates) if not c.exists())
    return candidates[free - 1] if existing else candidates[free]


def _cell_main(argv: list[str]) -> int:
    """``python -m tlora_analysis.study DIR NAME THREADS``: one cell in its own process (the local executor)."""
    study_dir, name, threads = argv
    started = time.perf_counter()
    try:
        status = run_cell(study_dir, name, int(threads))
        print(f"{name}: {status} in {time.perf_counter() - started:.1f} s", flush=True)
    except InputError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


@dataclass
class Executor:
    """Where a study's cells run; each field is a ``tlora-analysis study`` option."""

    executor: str = option("local", "local: subprocesses on this machine; slurm: a SLURM job array through submitit; "
                                    "submitit-local: submitit's local executor (checks a SLURM setup on one machine)",
                           choices=EXECUTORS)
    jobs: int = option(1, "cells run at a time; locally the machine's cores are divided between them")
    partition: str | None = option(None, "slurm: the partition")
    gpus: int = option(0, "slurm, submitit-local: GPUs per cell")
    timeout_min: int = option(24 * 60, "slurm, submitit-local: minutes a cell may run")
    cpus_per_task: int | None = option(None, "slurm: CPU cores per cell (default: this machine's cores / --jobs)")
    mem_gb: float | None = option(None, "slurm: memory per cell in GB")
    max_cells: int = option(MAX_CELLS, "the most cells a spec may give; a larger grid is refused before any cell is listed")

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        for name in ("jobs", "timeout_min", "max_cells"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:300]


def _run_local(study: Path, names: list[str], executor: Executor, on_done: Callable[[str, bool, str, str], None]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ..distributed import TORCHRUN_VARIABLES

    threads = threads_per_worker(executor.jobs)
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}  # each cell is one run of its own
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")

    def one(name: str) -> None:
        log = study / "logs" / f"{name}.log"
        if log.is_symlink():  # planted: replaced, never appended through
            log.unlink()
        with open(log, "ab") as handle:
            code = subprocess.call([sys.executable, "-m", "tlora_analysis.study", str(study), name, str(threads)],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
        on_done(name, code == 0, str(log.relative_to(study)), "" if code == 0 else _last_line(log) or f"exit status {code}")

    with ThreadPoolExecutor(max_workers=executor.jobs) as pool:
        for future in [pool.submit(one, name) for name in names]:
            future.result()


def _check_engine(executor: Executor) -> None:
    """Refuse an executor this machine cannot use before the study directory is made."""
    if executor.executor == "local":
        return
    try:
        import submitit  # noqa: F401
    except ImportError as err:
        raise InputError(f"--executor {executor.executor} needs submitit: pip install 'tlora-analysis[cluster]'") from err
    if executor.executor == "slurm" and not shutil.which("sbatch"):
        raise InputError("--executor slurm: SLURM is not usable here (no sbatch on PATH); nothing was written")


def _run_submitit(study: Path, names: list[str], executor: Executor, on_done: Callable[[str, bool, str, str], None]) -> None:
    import submitit

    folder = study / "logs" / "submitit"
    threads = executor.cpus_per_task or threads_per_worker(executor.jobs)
    pending, running = list(names), {}
    if executor.executor == "slurm":  # one job array; SLURM runs `jobs` of it at a time
        try:
            engine = submitit.AutoExecutor(folder=folder, cluster="slurm")
        except Exception as err:  # submitit says what it lacks (srun, sbatch) in its own words
            raise InputError(f"--executor slurm: SLURM is not usable here ({str(err).splitlines()[0][:200]})") from err
        engine.update_parameters(timeout_min=executor.timeout_min, slurm_partition=executor.partition, gpus_per_node=executor.gpus,
                                 cpus_per_task=threads, slurm_array_parallelism=executor.jobs,
                                 **({"mem_gb": executor.mem_gb} if executor.mem_gb else {}))
        with engine.batch():
            submitted = [(name, engine.submit(run_cell, str(study), name, threads)) for name in pending]
        running, pending = dict(submitted), []
    else:  # submitit's local executor starts every job it is given at once: hand it `jobs` at a time
        engine = submitit.LocalExecutor(folder=folder)
        engine.update_parameters(timeout_min=executor.timeout_min, gpus_per_node=executor.gpus)
    while pending or running:
        while pending and len(running) < executor.jobs:
            name = pending.pop(0)
            running[name] = engine.submit(run_cell, str(study), name, threads)
        for name, job in list(running.items()):
            if not job.done():
                continue
            del running[name]
            log = os.path.relpath(job.paths.stderr, study)
            try:
                job.result()
                on_done(name, True, log, "")
            except Exception as err:  # submitit wraps the cell's own exception; the log holds its traceback
                lines = [line for line in str(err).splitlines() if line.strip()]
                on_done(name, False, log, (lines[-1] if lines else repr(err))[:300])
        time.sleep(0.5)


def _check_finished_configs(out: Path, spec: StudySpec, cells: dict) -> None:
    """A finished cell is reused only if the spec still gives it the settings it was trained with: a
    method's default learning rate may have changed since, and a stale cell must not pass as new."""
    from ..config import non_settings
    from ..io import read_json

    skip = set(non_settings())
    for name, settings in cells.items():
        path = out / "runs" / name / "run.json"
        if path.is_symlink() or not path.is_file():
            continue
        recorded = read_json(path, "run.json").get("config")
        if not isinstance(recorded, dict):
            continue
        old, new = asdict(TrainConfig.from_dict(recorded)), asdict(spec.config(settings))
        changed = [k for k in new if k not in skip and old.get(k) != new[k]]
        if changed:
            key = changed[0]
            raise InputError(f"{out}: cell {name} was trained with {key} {old.get(key)!r}, the spec now gives {new[key]!r} "
                             "(did a default change?); run the study into another --out, or remove that cell's run to retrain it")


def _record_cells(out: Path, meta: dict, cells: dict) -> tuple[dict, list[str]]:
    """Write study.json with a record per cell, finished where its run finished (whatever an earlier
    record says: a kill may have come between the two); returns the records and the cells to run."""
    from ..io import atomic_write_json

    for folder in ("logs", "runs"):
        if (out / folder).is_symlink():
            raise InputError(f"{out / folder}: is a symbolic link; a study writes only inside its own directory")
        (out / folder).mkdir(parents=True, exist_ok=True)
    records = meta.setdefault("cells", {})
    for name, settings in cells.items():
        records.setdefault(name, {"settings": settings, "status": "pending", "log": f"logs/{name}.log"})
    atomic_write_json(out / STUDY_JSON, meta)
    study = Study(out)
    for name in cells:
        if study.status(name) == "finished":
            records[name]["status"] = "finished"
    atomic_write_json(out / STUDY_JSON, meta)
    return records, [name for name in cells if study.status(name) != "finished"]  # damaged ones are trained again


def run_study(spec: str | Path | Mapping | StudySpec, out: str | Path, *, executor: Executor | None = None, extend: bool = False,
              progress: bool = True, log: Callable[[str], None] = print) -> Study:
    """Run every unfinished cell of a study and return it.

    Args:
        spec: a TOML path, TOML-shaped dict or :class:`StudySpec`.
        out: the study directory. Running the same spec again reuses finished cells and
            resumes interrupted ones; another spec is refused unless ``extend`` only adds cells.
        executor: where the cells run (default: local processes, one at a time).
        extend: accept a spec that adds cells to the existing study.
        progress: show a tqdm bar over cells.
        log: where one line per finished or failed cell goes.

    A failed cell is recorded with its log path and does not stop the others.
    """
    from tqdm.auto import tqdm

    from ..io import atomic_write_json
    from ..lock import RunLock

    executor = executor or Executor()
    spec = spec if isinstance(spec, StudySpec) else parse_spec(spec, max_cells=executor.max_cells)
    _check_engine(executor)
    out = Path(out)
    meta = _prepare(spec, out, extend)
    lock = RunLock.acquire(out)
    try:
        cells = spec.cells()
        _check_finished_configs(out, spec, cells)
        records, todo = _record_cells(out, meta, cells)
        log(f"{out}: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run "
            f"({executor.executor}, {executor.jobs} at a time, {threads_per_worker(executor.jobs)} threads each)")
        bar = tqdm(total=len(todo), desc="study cells", disable=not progress)
        guard = threading.Lock()  # the local executor reports from one thread per job

        def done(name: str, ok: bool, log_path: str, error: str) -> None:
            with guard:
                records[name] = {"settings": cells[name], "status": "finished" if ok else "failed", "log": log_path,
                                 **({"error": error} if error else {})}
                atomic_write_json(out / STUDY_JSON, meta)
                bar.update(1)
                log(f"{name}: {'finished' if ok else 'FAILED: ' + error + ' (log: ' + str(out / log_path) + ')'}")

        runner = _run_local if executor.executor == "local" else _run_submitit
        runner(out, todo, executor, done)
        bar.close()
    finally:
        lock.release()
    study = Study(out)
    failed = [n for n in cells if study.status(n) == "failed"]
    if failed:
        log(f"{len(failed)} of {len(cells)} cells failed: {', '.join(failed)}; see their logs, fix, and run the study again")
    return study
