"""``train --nproc-per-node N``: torchrun's own launcher, run in-process, so that a failure ends in one line.

Started from the shell, torchrun answers a failed process with its own traceback and failure table after the
process's ``error:`` line. Here the settings are checked once before any process starts, the processes are
torchrun's (``torch.distributed.run``, standalone rendezvous), and a failure is summed up in one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from .errors import InputError

__all__ = ["launch_processes"]


USER_ERROR = 2
"""A process's exit status after it printed its one ``error:`` line."""


def launch_processes(nproc: int, train_arguments: Sequence[str]) -> int:
    """Run ``tlora-analysis train TRAIN_ARGUMENTS`` as ``nproc`` torchrun processes on this machine; the exit status.

    A process that stopped on a user's mistake has said why in its one line (rank 0 alone prints the lines all
    ranks share), so only a failure of another kind adds a line here."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise InputError(f"--nproc-per-node must be at least 1, got {nproc}")
    for name in ("torch.distributed.elastic", "torch.distributed.run"):  # SIGTERM notices, the OMP_NUM_THREADS banner
        logging.getLogger(name).setLevel(logging.CRITICAL)
    launcher = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "tlora_analysis", "train",
                                             *train_arguments])
    try:
        run(launcher)
    except ChildFailedError as err:
        codes = sorted({failure.exitcode for failure in err.failures.values()})
        if USER_ERROR in codes:  # the others were stopped by torchrun (a negative status: its signal)
            return USER_ERROR
        raise InputError(f"train: {len(err.failures)} of {nproc} processes failed (exit status {', '.join(map(str, codes))}); "
                         "their output is above") from err
    return 0
