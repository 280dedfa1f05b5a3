"""Where `make reproduce` spends its time, from a fresh clone: the venv, each kind of study cell,
the analysis, and the figures with the report (benchmark 11; ``python benchmarks/bench_reproduce.py``).

The job runs as a user runs it (``make reproduce`` in a fresh ``git clone`` of HEAD, so the venv is
built from the package index); each output line is timestamped as it arrives, the stages are the
spans between the lines that open them, and each cell's wall time (process start, model load,
training, snapshots) is the "trained in N s" line of its log.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = (("venv and install", "study:"), ("study cells (2 jobs)", "analysing"), ("analysis", "drawing figures"),
          ("figures and report", "figures, report.html and results.json"))


def timed_lines(command: list[str], cwd: Path) -> list[tuple[float, str]]:
    started, lines = time.perf_counter(), []
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            lines.append((time.perf_counter() - started, line.rstrip()))
    if process.returncode:
        sys.exit(f"{' '.join(command)} failed:\n" + "\n".join(line for _, line in lines[-20:]))
    return lines


def stage_times(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    out, start = [], 0.0
    for name, marker in STAGES:
        end = next(t for t, line in lines if marker in line)
        out.append((name, end - start))
        start = end
    return [*out, ("total", lines[-1][0])]


def cell_times(study: Path) -> dict[str, list[float]]:
    kinds = defaultdict(list)
    for log in sorted((study / "logs").glob("*.log")):
        found = re.search(r": trained in ([\d.]+) s", log.read_text())
        if found:
            kinds[log.stem.rsplit("-s", 1)[0]].append(float(found.group(1)))
    return dict(kinds)


def main(keep: str | None = None) -> None:
    """``keep``: clone into this directory and leave it there (its figures/ are the job's output)."""
    with tempfile.TemporaryDirectory() as scratch:
        clone = Path(keep) if keep else Path(scratch) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        lines = timed_lines(["make", "reproduce"], clone)
        print("| stage | wall time (s) |\n|---|---|")
        for name, seconds in stage_times(lines):
            print(f"| {name} | {seconds:.0f} |")
        print("\n| cell kind | wall time per cell (s), each | mean |\n|---|---|---|")
        for kind, seconds in cell_times(clone / "runs" / "reproduce").items():
            print(f"| {kind} | {', '.join(f'{s:.0f}' for s in seconds)} | {sum(seconds) / len(seconds):.0f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
