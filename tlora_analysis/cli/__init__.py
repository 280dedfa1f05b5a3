"""``tlora-analysis``: train, analyse, draw, report, inspect and export from the shell.

User mistakes (bad paths, corrupt files, wrong arguments) end with one ``error:`` line
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import InputError
from ..methods.spec import METHOD_SPECS
from .analysis import add_analyze, add_compare, add_figures, add_report
from .checkpoint import add_export, add_inspect
from .output import PROG, quiet_third_party_warnings
from .tasks import add_tasks
from .train import add_reproduce, add_study, add_train


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    methods = ", ".join(spec.label for spec in METHOD_SPECS.values() if spec.adapts_layers)
    parser = argparse.ArgumentParser(prog=PROG, description=f"Train, record and analyse how low-rank adapters ({methods}) change a "
                                                            "pretrained transformer, and inspect any adapter's update geometry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [add_train, add_study, add_analyze, add_figures, add_report, add_compare, add_tasks, add_reproduce, add_inspect, add_export]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. User mistakes and OS errors on files print one ``error:`` line and return 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_third_party_warnings()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from ..hub import downloads

    try:
        with downloads(getattr(args, "download", False)):  # the Hub only when this command was asked to
            return args.func(args)
    except InputError as err:
        return _error(str(err))
    except BrokenPipeError:  # `tlora-analysis inspect RUN | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a read-only or full disk, a missing permission: the user's to fix
        return _error(f"{err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs and files already written are kept", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    """Print the line once: under torchrun every rank checks the same settings, so rank 0 speaks for them all,
    and another rank only about itself (its messages start with "rank"). A process whose RANK is not a rank
    below WORLD_SIZE has no rank 0 to speak for it, so it speaks."""
    if not _rank_zero_speaks_for_me() or message.startswith("rank "):
        print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _rank_zero_speaks_for_me() -> bool:
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return rank.isdigit() and world.isdigit() and 0 < int(rank) < int(world)


if __name__ == "__main__":
    sys.exit(main())
