"""What the command line prints besides its results: notices about what a reading left out, and tables."""

from __future__ import annotations

import sys

__all__ = ["PROG", "Phases", "print_notices", "print_table", "show_progress", "quiet_third_party_warnings"]

PROG = "tlora-analysis"


def print_notices(sources) -> None:
    """Each source's notices (what its reading left out or assumed), one ``notice:`` line each, on stderr
    (a source, or a mapping with ``notices`` such as an inspect table's attrs)."""
    for source in sources:
        lines = source.get("notices", ()) if isinstance(source, dict) else getattr(source, "notices", ())
        for line in lines or ():
            print(f"{PROG}: notice: {' '.join(str(line).split())}", file=sys.stderr)


def print_table(table) -> None:
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(table.to_string(index=False))


class Phases:
    """One plain line on stderr as each phase of a long command ends (``read 3 sources``, ``computed the tables``,
    ``drew 14 figures``), with the time since the command began: where stderr is no terminal (a log, CI, a pipe)
    no progress bar is drawn, and a command silent for minutes looks hung. ``--no-progress`` silences it; on a
    terminal the progress bars speak instead."""

    def __init__(self, args) -> None:
        import time

        self._clock = time.monotonic
        self.start = self._clock()
        self.on = not getattr(args, "no_progress", False) and not sys.stderr.isatty()

    def done(self, what: str) -> None:
        if self.on:
            print(f"{PROG}: progress: {what} ({self._clock() - self.start:.1f} s)", file=sys.stderr, flush=True)


def show_progress(args) -> bool:
    """Progress bars on a terminal only, never into a log or a pipe, and never with ``--no-progress``."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


THIRD_PARTY_NOISE = (
    (FutureWarning, r"(transformers|peft|torch|accelerate)(\.|$)", ""),
    (UserWarning, r"peft(\.|$)", r"(Failed to load the CUDA extension|Setting boft_n_butterfly_factor|Specified to not save|"
                                  r"OSF does not support unmerging|Unexpected keyword arguments|fan_in_fan_out)"),
    (UserWarning, r"torch(\.|$)", r"(Converting a tensor with requires_grad|TypedStorage is deprecated)"),
)
"""Warnings of the libraries underneath that say nothing to a user of the command line: deprecations addressed to
their own callers, and peft's notes on how it built an adapter the toolkit reads. Library code never filters them."""


def quiet_third_party_warnings() -> None:
    import warnings

    for category, module, message in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message or "", category=category, module=module)


def add_download(p) -> None:
    p.add_argument("--download", action="store_true",
                   help="fetch sources and bases given as Hub ids (owner/name[@revision][:subfolder]) and the base a fetched "
                        "adapter names: JSON and safetensors files only (also TLORA_ANALYSIS_DOWNLOAD=1)")
