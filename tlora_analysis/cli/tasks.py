"""``tlora-analysis tasks``: one study's results on several tasks side by side (the command line's across_tasks)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError


def add_tasks(sub) -> None:
    p = sub.add_parser("tasks", help="one study's results on several tasks side by side: which findings transfer",
                       description="Read the results.json that figures wrote for the same study on several tasks (TASK=PATH, "
                                   "at least two) and write, into --out, the tables accuracy.csv, claims.csv, transfer.csv "
                                   "(each claim reading's verdict per task, and whether it transfers) and ladder.csv (each "
                                   "method's columns per task, and whether their CIs overlap), and their figures.")
    p.add_argument("results", nargs="+", metavar="TASK=RESULTS", help="a task's label and its results.json, e.g. "
                                                                      "default=figures/results.json")
    p.add_argument("--out", required=True, help="directory for the tables, figures and figures.json")
    p.add_argument("--formats", nargs="+", default=["png", "pdf"], choices=["png", "pdf", "svg"], help="figure formats")
    p.set_defaults(func=_cmd_tasks)


def _cmd_tasks(args) -> int:
    from ..analysis.across_tasks import across_tasks
    from ..figures import render_tasks
    from ..io import check_output, read_json, split_label
    from ..results import write_tables

    named = [split_label(argument) for argument in args.results]
    if any(label is None or not label.strip() for label, _ in named):
        raise InputError("tasks: give each results file as TASK=PATH, e.g. default=figures/results.json")
    if len({label for label, _ in named}) < len(named):
        raise InputError("tasks: each TASK label once")
    check_output(Path(args.out), [Path(path) for _, path in named], "dir")
    tables = across_tasks({label: read_json(path, "results.json") for label, path in named})
    for path in write_tables(tables, Path(args.out)):
        print(path)
    for entry in render_tasks(tables, args.out, sources=dict(named), formats=tuple(args.formats)):
        for name in entry["files"]:
            print(Path(args.out) / name)
    return 0
