"""Studies: a grid of training runs from one TOML spec, run by an existing engine, analysed together.

A spec is ``train``'s options in snake_case. A scalar is fixed; a list is swept; a table
keyed by method gives per-method values (each a scalar or a list)::

    method = ["lora", "tlora"]
    seed = [0, 1, 2]
    rank = [4, 8]
    epochs = 3
    lr = { lora = 1e-3, tlora = [1e-2, 3e-2] }

The grid is the product of the lists. Each cell is an ordinary run directory,
``DIR/runs/<name>``, named from what is swept (``tlora-r8-lr3e-2-s1``). ``DIR/study.json``
records the spec and each cell's status; the runs themselves are the truth, so a study
killed at any moment is resumed by running the same command again: finished cells are
reused, interrupted ones resumed (as ``train --resume``), the rest started.

Cells run as separate processes: locally, ``jobs`` at a time with the machine's threads
divided between them, or through submitit (SLURM, or submitit's local executor).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .config import TRAIN_METHODS, TrainConfig, option
from .errors import InputError

__all__ = ["StudySpec", "Study", "Executor", "parse_spec", "run_study", "load_study", "EXECUTORS", "cell_threads"]

STUDY_FORMAT = "tlora-analysis-study"
STUDY_FORMAT_VERSION = 1
STUDY_JSON = "study.json"
EXECUTORS = ("local", "submitit-local", "slurm")

SPEC_KEYS = tuple(f.name for f in fields(TrainConfig))
LIST_FIELDS = ("targets", "report_to")  # a list of strings is one value of these; a list of lists sweeps them
SHORT = {"rank": "r", "lr": "lr", "seed": "s", "alpha": "a", "epochs": "e", "batch_size": "bs", "max_train_samples": "n",
         "targets": "t", "init": "init", "task": "", "model": ""}
"""How a swept setting appears in a cell's name; other settings use their own name."""


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.1:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(map(_format_value, value))
    return str(value).replace("/", "_")


@dataclass
class StudySpec:
    """A parsed study spec: fixed settings, swept lists, and per-method values."""

    fixed: dict[str, Any] = field(default_factory=dict)
    swept: dict[str, list] = field(default_factory=dict)
    per_method: dict[str, dict[str, list]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return self.swept.get("method") or [self.fixed["method"]]

    @property
    def named(self) -> list[str]:
        """The settings that appear in cell names: every swept or per-method key, in spec order, seed last."""
        keys = [k for k in self.raw if k != "method" and (k in self.swept or k in self.per_method)]
        return sorted(keys, key=lambda k: k == "seed")

    def cells(self, where: str = "study spec") -> dict[str, dict[str, Any]]:
        """``name -> settings`` (what is swept, plus ``method``) for every cell of the grid."""
        cells: dict[str, dict[str, Any]] = {}
        for method in self.methods:
            options = {k: v for k, v in self.swept.items() if k != "method"}
            options.update({k: values[method] for k, values in self.per_method.items() if method in values})
            keys = [k for k in self.named if k in options]
            for combo in itertools.product(*(options[k] for k in keys)):
                settings = {"method": method, **dict(zip(keys, combo))}
                name = "-".join([method] + [f"{SHORT.get(k, k.replace('_', ''))}{_format_value(v)}" for k, v in zip(keys, combo)])
                if name in cells:
                    raise InputError(f"{where}: two cells would both be named {name!r}; make the swept values distinct")
                cells[name] = settings
        return cells

    def config(self, settings: Mapping[str, Any]) -> TrainConfig:
        return TrainConfig(**{**self.fixed, **settings})


def parse_spec(source: str | Path | Mapping[str, Any]) -> StudySpec:
    """Read a spec from a TOML file, TOML text or a dict, and check every cell's settings.

    Every problem is an :class:`InputError` naming the file and the key: a TOML syntax error
    (with its line), an unknown key, an empty list, a per-method value for a method that is
    not in the grid, and any value ``train`` would reject.
    """
    where = "study spec"
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such study spec (a TOML file)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"{path}: not valid TOML ({err})") from err
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not a text file ({err})") from err
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(SPEC_KEYS)}")
    if "method" not in raw:
        raise InputError(f"{where}: needs 'method' (one of {', '.join(TRAIN_METHODS)}, or a list of them)")
    spec = StudySpec(raw=raw)
    for key, value in raw.items():
        if isinstance(value, dict):
            if key == "method":
                raise InputError(f"{where}: 'method' cannot be given per method")
            spec.per_method[key] = {m: _as_list(v, f"{key}.{m}", where) for m, v in value.items()}
        elif isinstance(value, list) and not (key in LIST_FIELDS and all(isinstance(v, str) for v in value)):
            spec.swept[key] = _as_list(value, key, where)
        else:
            spec.fixed[key] = value
    methods = spec.methods
    for key, values in spec.per_method.items():
        stray = sorted(set(values) - set(methods))
        if stray:
            raise InputError(f"{where}: '{key}' gives a value for method {stray[0]!r}, which is not in the grid (methods: {', '.join(methods)})")
    cells = spec.cells(where)
    for name, settings in cells.items():
        try:
            spec.config(settings)
        except InputError as err:
            raise InputError(f"{where}: cell {name}: {err}") from err
        except TypeError as err:
            raise InputError(f"{where}: cell {name}: {err}") from err
    return spec


def _as_list(value: Any, key: str, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"{where}: '{key}' is an empty list, so the grid is empty")
    if any(isinstance(v, dict) for v in values):
        raise InputError(f"{where}: '{key}' holds a table; give a value or a list of values")
    return values


def cell_threads(jobs: int) -> int:
    """Threads per job when ``jobs`` cells share this machine: its cores divided, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, jobs))


# --------------------------------------------------------------------------- the study directory
class Study:
    """A study directory: its spec, its cells and their runs.

    ``runs`` is a DataFrame with one row per cell: its swept settings, status, final
    metric and parameter counts. :meth:`run` opens one cell's :class:`~tlora_analysis.store.Run`.
    """

    def __init__(self, path: str | Path) -> None:
        from .io import read_json

        self.path = Path(path)
        meta = read_json(self.path / STUDY_JSON, "study.json")
        where = str(self.path / STUDY_JSON)
        if meta.get("format") != STUDY_FORMAT:
            raise InputError(f"{where}: 'format' should be {STUDY_FORMAT!r}, got {meta.get('format')!r}")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > STUDY_FORMAT_VERSION:
            raise InputError(f"{where}: format_version {version!r} is not one this tlora-analysis reads (up to {STUDY_FORMAT_VERSION})")
        self.meta = meta
        self.spec = parse_spec(meta.get("spec") or {})
        self.cells: dict[str, dict[str, Any]] = self.spec.cells(where)
        self._runs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {len(self.cells)} cells)"

    @property
    def swept(self) -> list[str]:
        """The settings that vary between cells (always including ``method`` and, if swept, ``seed``)."""
        return ["method", *self.spec.named]

    def settings(self, name: str) -> dict[str, Any]:
        """A cell's value of every swept setting, e.g. ``{"method": "tlora", "lr": 0.03, "seed": 1}``; a
        per-method setting that this cell's method does not sweep shows the value it trained with."""
        if name not in self.cells:
            raise InputError(f"{self.path}: no cell named {name!r} (cells: {', '.join(self.cells)})")
        config = asdict(self.spec.config(self.cells[name]))
        return {key: config[key] for key in self.swept}

    def run_dir(self, name: str) -> Path:
        return self.path / "runs" / name

    def status(self, name: str) -> str:
        """finished, interrupted (resumable), failed (see study.json for the log) or pending."""
        from .io import read_json

        run_json = self.run_dir(name) / "run.json"
        recorded = self.meta.get("cells", {}).get(name, {})
        if run_json.is_file():
            if read_json(run_json, "run.json").get("status") == "finished":
                return "finished"
            return "failed" if recorded.get("status") == "failed" else "interrupted"
        return "failed" if recorded.get("status") == "failed" else "pending"

    def run(self, name: str):
        """The :class:`~tlora_analysis.store.Run` of one cell (loaded once)."""
        from .store import load_run

        if name not in self._runs:
            self.settings(name)
            self._runs[name] = load_run(self.run_dir(name))
        return self._runs[name]

    def finished(self, adapted_only: bool = False) -> list[tuple[Any, dict[str, Any]]]:
        """``(run, settings)`` for every finished cell, in grid order; ``adapted_only`` skips head-only runs."""
        out = []
        for name in self.cells:
            if self.status(name) != "finished":
                continue
            run = self.run(name)
            if adapted_only and not run.layers:
                continue
            out.append((run, self.settings(name)))
        return out

    @property
    def runs(self):
        """One row per cell: swept settings, status, final metric, parameter counts and path."""
        import pandas as pd

        rows = []
        for name in self.cells:
            status = self.status(name)
            row = {"run": name, **self.settings(name), "status": status, "path": str(self.run_dir(name))}
            if status == "finished":
                run = self.run(name)
                metric = run.meta.get("main_metric")
                row.update(metric=metric, final_metric=run.metrics[run.epochs[-1]].get(metric), epochs=run.epochs[-1])
                counts = run.meta.get("parameter_counts", {})
                row.update(adapter_params=counts.get("adapter_trainable"), head_params=counts.get("other_trainable"),
                           frozen_random_params=counts.get("frozen_random"),
                           trainable_params=(counts.get("adapter_trainable") or 0) + (counts.get("other_trainable") or 0))
            elif status == "failed":
                row["log"] = str(self.path / self.meta.get("cells", {}).get(name, {}).get("log", ""))
            rows.append(row)
        return pd.DataFrame(rows)


def load_study(path: str | Path) -> Study:
    """Open a study directory written by :func:`run_study`."""
    path = Path(path)
    if not (path / STUDY_JSON).is_file():
        raise InputError(f"{path}: not a study directory (no {STUDY_JSON})")
    return Study(path)


def _spec_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    keys = list(dict.fromkeys([*old, *new]))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys if old.get(k) != new.get(k)]


def _prepare(spec: StudySpec, out: Path, extend: bool) -> dict:
    """The study.json to run with: new, or the existing one when the spec is unchanged (or only extends it)."""
    from .io import read_json

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
    from .io import read_json
    from .training import resume, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    study = Study(study_dir)
    config = study.spec.config(study.settings(name))
    run_dir = study.run_dir(name)
    if (run_dir / "run.json").is_file():
        meta = read_json(run_dir / "run.json", "run.json")
        if not isinstance(meta.get("config"), dict) or asdict(TrainConfig.from_dict(meta["config"])) != asdict(config):
            raise InputError(f"{run_dir}: holds a run with other settings than cell {name} of the study")
        if meta.get("status") == "finished":
            return "reused"
        resume(run_dir, progress=False)
        return "resumed"
    train(config, run_dir, progress=False)
    return "trained"


def _cell_main(argv: list[str]) -> int:
    """``python -m tlora_analysis.study DIR NAME THREADS``: one cell in its own process (the local executor)."""
    study_dir, name, threads = argv
    try:
        print(f"{name}: {run_cell(study_dir, name, int(threads))}", flush=True)
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

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        for name in ("jobs", "timeout_min"):
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

    threads = cell_threads(executor.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}

    def one(name: str) -> None:
        log = study / "logs" / f"{name}.log"
        with open(log, "ab") as handle:
            code = subprocess.call([sys.executable, "-m", "tlora_analysis.study", str(study), name, str(threads)],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env)
        on_done(name, code == 0, str(log.relative_to(study)), "" if code == 0 else _last_line(log) or f"exit status {code}")

    with ThreadPoolExecutor(max_workers=executor.jobs) as pool:
        for future in [pool.submit(one, name) for name in names]:
            future.result()


def _run_submitit(study: Path, names: list[str], executor: Executor, on_done: Callable[[str, bool, str, str], None]) -> None:
    try:
        import submitit
    except ImportError as err:
        raise InputError(f"--executor {executor.executor} needs submitit: pip install 'tlora-analysis[cluster]'") from err
    folder = study / "logs" / "submitit"
    threads = executor.cpus_per_task or cell_threads(executor.jobs)
    pending, running = list(names), {}
    if executor.executor == "slurm":  # one job array; SLURM runs `jobs` of it at a time
        engine = submitit.AutoExecutor(folder=folder, cluster="slurm")
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

    from .io import atomic_write_json
    from .lock import RunLock

    spec = spec if isinstance(spec, StudySpec) else parse_spec(spec)
    executor = executor or Executor()
    out = Path(out)
    meta = _prepare(spec, out, extend)
    lock = RunLock.acquire(out)
    try:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "runs").mkdir(exist_ok=True)
        cells = spec.cells()
        records = meta.setdefault("cells", {})
        for name, settings in cells.items():
            records.setdefault(name, {"settings": settings, "status": "pending", "log": f"logs/{name}.log"})
        atomic_write_json(out / STUDY_JSON, meta)
        study = Study(out)
        for name in cells:  # cells that finished before a kill are finished, whatever the record says
            if study.status(name) == "finished":
                records[name]["status"] = "finished"
        atomic_write_json(out / STUDY_JSON, meta)
        todo = [name for name in cells if study.status(name) != "finished"]
        log(f"{out}: {len(cells)} cells, {len(cells) - len(todo)} finished, {len(todo)} to run "
            f"({executor.executor}, {executor.jobs} at a time, {cell_threads(executor.jobs)} threads each)")
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


if __name__ == "__main__":
    sys.exit(_cell_main(sys.argv[1:]))
