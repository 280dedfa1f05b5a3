"""Run every benchmark and print Markdown tables for benchmarks/README.md (``make bench``, ~10 min on 2 cores)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import bench_adapters  # noqa: E402
import bench_analysis  # noqa: E402
import bench_big_base  # noqa: E402
import bench_cli  # noqa: E402
import bench_model_step  # noqa: E402
import bench_peft_big_base  # noqa: E402
import bench_recording  # noqa: E402
import bench_scale  # noqa: E402
import bench_single_files  # noqa: E402
import bench_storage  # noqa: E402
import bench_study  # noqa: E402
import bench_training  # noqa: E402
from harness import machine  # noqa: E402

BENCHMARKS = [
    ("1. Analysis speed and memory vs dense", bench_analysis),
    ("2. Scale: a 70B-shaped pair of runs", bench_scale),
    ("3. Storage per epoch", bench_storage),
    ("4. Recording overhead", bench_recording),
    ("5. Adapter forward + backward", bench_adapters),
    ("6. Command-line start-up", bench_cli),
    ("7. Where a training epoch goes", bench_training),
    ("8. A 7B-shaped study", bench_study),
    ("9. inspect with a sharded 7B-shaped base", bench_big_base),
    ("10. A training step of real-shaped models", bench_model_step),
    ("12. inspect of 7B-shaped peft adapters against a sharded base", bench_peft_big_base),
    ("14. Reading a kohya/LyCORIS file of many modules", bench_single_files),
]

if __name__ == "__main__":
    started = time.perf_counter()
    print(f"Machine: {machine()}\n")
    for title, module in BENCHMARKS:
        print(f"### {title}\n", flush=True)
        print(module.main(), "\n", flush=True)
    print(f"(all benchmarks: {time.perf_counter() - started:.0f} s)")
