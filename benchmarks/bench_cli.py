"""How fast the command line answers: ``--help`` and an argument error, each a fresh process.

The ratio of interest is the start-up of the bare interpreter (the floor) to ours; the
table also shows what ``import torch`` alone costs, which the CLI used to pay up front.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from harness import table

REPEATS = 7

COMMANDS = {
    "python -c pass (the floor)": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "tlora-analysis --help": [sys.executable, "-m", "tlora_analysis", "--help"],
    "tlora-analysis train --help": [sys.executable, "-m", "tlora_analysis", "train", "--help"],
    "tlora-analysis train --rank x (argument error)": [sys.executable, "-m", "tlora_analysis", "train", "--rank", "x"],
}


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> str:
    times = {name: [] for name in COMMANDS}
    for _ in range(REPEATS):  # alternate the commands so that machine noise hits all alike
        for name, command in COMMANDS.items():
            times[name].append(wall(command))
    rows = [[name, f"{statistics.median(t) * 1000:.0f} ms", f"{min(t) * 1000:.0f} ms"] for name, t in times.items()]
    return table(["command", "median wall time", "fastest"], rows)


if __name__ == "__main__":
    print(main())
