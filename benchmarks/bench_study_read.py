"""Reading a study back: ``figures`` cold (no stored tables) with the cells read in this process (``--jobs 1``) and by
worker processes (``--jobs`` the cores), warm (nothing changed), ``report`` after ``figures`` (which reuses what
``figures`` wrote for the same sources) and after one changed cell.

Usage: ``python benchmarks/bench_study_read.py STUDY`` (e.g. ``runs/wordnet`` after ``make wordnet``). The study is
copied to a temporary folder (its own stored tables left out), and each ``figures`` runs in a fresh process, one after
another in this one run, so the times compare; each one's peak resident memory is GNU time's.
"Warm again into the same folder" keeps the figures drawn there from the same tables (figures.json's
``inputs_sha256``). "One changed cell" rewrites one byte of one cell's last snapshot, as a retrained or new cell would change its files.
The committed figures must not move: the warm results.json is compared with the cold one byte for byte.
"""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tlora_analysis.analysis.cell_workers import default_jobs

CLI = [sys.executable, "-m", "tlora_analysis"]


def run_command(command: str, study: Path, out: Path, *options: str) -> tuple[float, float]:
    """Wall seconds and peak resident GiB of one ``command`` (``figures``, ``report``) in a fresh process (GNU time's maximum
    resident set: the largest one process of the command reached, the command's or one worker's)."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *CLI, command, str(study), "--out", str(out), "--no-progress", *options],
                          check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak = next(int(line.split(":")[1]) for line in done.stderr.splitlines() if "Maximum resident set size" in line)
    return seconds, peak / 2**20


def change_one_cell(study: Path) -> str:
    snapshot = sorted(sorted((study / "runs").iterdir())[-1].glob("snapshots/*.safetensors"))[-1]
    data = bytearray(snapshot.read_bytes())
    data[-3] ^= 1
    snapshot.write_bytes(bytes(data))
    return snapshot.parent.parent.name


def main(source: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        study = Path(folder) / "study"
        shutil.copytree(source, study, ignore=shutil.ignore_patterns("cache"))
        cells = len(list((study / "runs").iterdir()))
        rows = [("cold, --jobs 1 (no stored tables)", *run_command("figures", study, Path(folder) / "cold", "--jobs", "1"))]
        shutil.rmtree(study / "cache")
        rows.append((f"cold, --jobs {default_jobs()} (no stored tables)", *run_command("figures", study, Path(folder) / "parallel")))
        rows.append(("warm (nothing changed)", *run_command("figures", study, Path(folder) / "warm")))
        rows.append(("warm again into the same folder (its figures kept)", *run_command("figures", study, Path(folder) / "warm")))
        rows.append(("report after figures (beside them)", *run_command("report", study, Path(folder) / "warm" / "report.html")))
        same = all(filecmp.cmp(Path(folder) / "cold" / "results.json", Path(folder) / other / "results.json", shallow=False)
                   for other in ("parallel", "warm"))
        changed = change_one_cell(study)
        rows.append((f"one changed cell ({changed})", *run_command("figures", study, Path(folder) / "changed")))
    print(f"`figures {source}` ({cells} cells), each in a fresh process; results.json of the parallel and the warm read "
          f"equal to the cold one byte for byte: {same}\n")
    print("| read | seconds | / cold | peak GiB |\n|---|---|---|---|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / rows[0][1]:.2f} | {peak:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/wordnet")
