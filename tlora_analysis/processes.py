"""Worker processes that share this machine's cores: how many threads each may use, and one way to start them.

Why threads are divided: a torch process takes as many threads as there are cores, so two workers on two cores
run four. On a machine with other work, an oversubscribed OpenMP team waits for a descheduled thread at every
parallel region: a float64 (8 x 384) @ (384 x 384) product took 15 ms with two threads beside other work and
0.2 ms with one. Training cells, analysis workers and drawing workers therefore each get the cores divided by
the jobs, at least one thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

__all__ = ["cores", "threads_per_worker", "spawn_pool"]


def cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(jobs: int) -> int:
    """Threads for each of ``jobs`` workers sharing this machine: its cores divided, at least one."""
    return max(1, cores() // max(1, jobs))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def spawn_pool(jobs: int) -> ProcessPoolExecutor:
    """``jobs`` fresh (spawned, so no inherited torch or matplotlib state) worker processes, each limited to
    :func:`threads_per_worker` threads."""
    import multiprocessing

    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_limit_threads,
                               initargs=(threads_per_worker(jobs),))
