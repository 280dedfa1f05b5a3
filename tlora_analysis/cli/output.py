"""What the command line prints besides its results: notices about what a reading left out, and tables."""

from __future__ import annotations

import sys

__all__ = ["PROG", "print_notices", "print_table"]

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
