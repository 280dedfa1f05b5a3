"""13. Where a study's time goes, per method: each finished cell's training and evaluation seconds from its run.json.

``python benchmarks/study_times.py runs/atlas`` prints a Markdown table (one row per method: cells, seconds of
training per epoch, of evaluation per epoch, and per cell in all), for the study timings in benchmarks/README.md.
A cell's wall time adds its process start, model load and snapshots (a few seconds) to what run.json records.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from harness import table


def cell_times(study: Path) -> dict[str, list[tuple[float, float, int]]]:
    """Per method, each finished cell's (training s, evaluation s, epochs) from its run.json."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for run_json in sorted(study.glob("runs/*/run.json")):
        meta = json.loads(run_json.read_text())
        epochs = [e for e in meta.get("epochs", []) if e.get("epoch", 0) > 0]
        if meta.get("status") != "finished" or not epochs:
            continue
        train = sum(e.get("time_s", 0.0) for e in epochs)
        evaluate = sum(e.get("eval_time_s", 0.0) for e in epochs)
        out.setdefault(meta["method"], []).append((train, evaluate, len(epochs)))
    return out


def main(study: Path) -> str:
    rows = []
    for method, cells in cell_times(study).items():
        per_epoch = [t / n for t, _, n in cells]
        eval_per_epoch = [e / n for _, e, n in cells]
        rows.append([method, len(cells), f"{statistics.median(per_epoch):.1f}", f"{statistics.median(eval_per_epoch):.1f}",
                     f"{statistics.median([t + e for t, e, _ in cells]):.0f}"])
    total = sum(t + e for cells in cell_times(study).values() for t, e, _ in cells)
    rows.append(["**all cells**", sum(r[1] for r in rows), "", "", f"**{total:.0f}** (cell-seconds)"])
    return table(["method", "cells", "training s / epoch (median)", "evaluation s / epoch", "training + evaluation s / cell"], rows)


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/atlas")))
