"""A study's cells read in worker processes: each per-run table not yet stored is computed by a worker and stored
in the study's table cache, and the command then reads every cell's table from the cache as it would anyway.

Why through the cache: a worker's table reaches the command as the same stored file a later ``figures`` reads, so
the parallel path and the sequential one cannot disagree, and whatever a worker fails on (a damaged cell, a killed
worker) is simply not stored: the command computes it itself and says what is wrong in its own one line. Memory
follows one cell per worker: a worker opens one cell, computes one table and lets it go.

``--jobs N`` (``TLORA_ANALYSIS_JOBS``, default the machine's cores) sets the workers; 1 reads every cell in the
command's own process. Workers start only when at least two cells lack a table, so a warm read starts none.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..processes import cores, spawn_pool

__all__ = ["cell_workers", "prefill", "default_jobs", "LARGEST_ARGUMENTS"]

LARGEST_ARGUMENTS = 64 << 20
"""Arguments that pickle larger than this (a base's W0 held as tensors) are not sent to workers: cells are read here."""
_WORKERS: contextvars.ContextVar[_Workers | None] = contextvars.ContextVar("tlora_analysis_cell_workers", default=None)


def default_jobs() -> int:
    """``TLORA_ANALYSIS_JOBS`` where set, else the cores this process may use."""
    text = os.environ.get("TLORA_ANALYSIS_JOBS", "")
    if text.strip().isdigit() and int(text) > 0:
        return int(text)
    return cores()


class _Workers:
    """The pool of one command, started at its first use."""

    def __init__(self, jobs: int) -> None:
        self.jobs, self.pool = jobs, None

    def get(self) -> ProcessPoolExecutor:
        if self.pool is None:
            self.pool = spawn_pool(self.jobs)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


@contextlib.contextmanager
def cell_workers(jobs: int | None = None):
    """Within it, per-run tables of a study's cells are computed by ``jobs`` worker processes (see the module)."""
    from ..errors import InputError

    jobs = default_jobs() if jobs is None else jobs
    if jobs < 1:
        raise InputError(f"--jobs: expected a whole number of at least 1, got {jobs}")
    workers = _Workers(jobs) if jobs > 1 else None
    token = _WORKERS.set(workers)
    try:
        yield
    finally:
        _WORKERS.reset(token)
        if workers is not None:
            workers.close()


def prefill(analysis, runs: list, args: tuple, kwargs: dict) -> None:
    """Store ``analysis``'s table of every run in ``runs`` that is a study's cell without one, computed by workers."""
    from .table_cache import _native, cache_for

    workers = _WORKERS.get()
    if workers is None or len(runs) < 2:
        return
    name = analysis.__qualname__
    todo = [run for run in runs if (cache := cache_for(run)) is not None and not cache.stored(name, run, args, kwargs)]
    if len(todo) < 2:
        return
    try:
        arguments = pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):  # an argument only this process holds: read here
        return
    if len(arguments) > LARGEST_ARGUMENTS:
        return
    cells = [(str(_native(run).path), run.name) for run in todo]
    try:
        futures = [workers.get().submit(_fill, analysis.__module__, name, path, label, arguments) for path, label in cells]
        for future in futures:
            future.exception()  # a failed cell is not stored: the command computes it and reports it itself
    except BrokenProcessPool:  # a worker was killed (memory): the rest are read here
        workers.close()


def _fill(module: str, name: str, path: str, label: str, arguments: bytes) -> None:
    """In a worker: open one cell and compute (so store) one table of it."""
    from ..sources.labels import Labelled
    from ..store import load_run

    args, kwargs = pickle.loads(arguments)
    analysis = importlib.import_module(module)
    for part in name.split("."):
        analysis = getattr(analysis, part)
    run = load_run(path)
    analysis(run if run.name == label else Labelled(run, label), *args, **kwargs)
