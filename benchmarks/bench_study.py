"""8. A 7B-shaped study: 2 methods x 10 seeds, q and v of 32 layers (4096 x 4096), r = 16, epochs 0..10.

Built from random factors and stored on disk as an ordinary study directory, then opened
with ``load_study`` and analysed with ``compare_study`` in a fresh process: every per-run
table over seeds with its bootstrap CIs, every same-method cross-seed pair and every
matched-seed LoRA–TLoRA pair at the last epoch (cosine, φ), the claims per seed and their
summary, and the single-pair tables of seed 0. Peak resident memory is the whole process's.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import machine, megabytes, table

from tlora_analysis.adapters import layer_seed, tensor_sha256, tlora_frozen_matrices
from tlora_analysis.store import RunWriter

LAYERS, RANK, EPOCHS, SEEDS, SHAPE = int(os.environ.get("BENCH_STUDY_LAYERS", "32")), 16, 10, int(os.environ.get("BENCH_STUDY_SEEDS", "10")), (4096, 4096)
NAMES = [f"model.layers.{i}.self_attn.{m}" for i in range(LAYERS) for m in ("q_proj", "v_proj")]


def write_run(path: Path, method: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed + (1000 if method == "tlora" else 0))
    d_out, d_in = SHAPE
    layers = {}
    for name in NAMES:
        if method == "lora":
            layers[name] = {"method": "lora", "shape": [d_out, d_in], "rank": RANK, "seed": seed, "scaling": 2.0, "lora_alpha": 32}
        else:
            s = layer_seed(seed, name)
            a, c = tlora_frozen_matrices(s, d_out, d_in, RANK)
            layers[name] = {"method": "tlora", "shape": [d_out, d_in], "rank": RANK, "seed": s,
                            "frozen_sha256": {"tlora_A": tensor_sha256(a), "tlora_C": tensor_sha256(c)}}
    config = {"method": method, "seed": seed, "rank": RANK, "epochs": EPOCHS, "task": "default", "model": "default"}
    writer = RunWriter(path, {"method": method, "rank": RANK, "seed": seed, "layers": layers, "main_metric": "accuracy", "config": config,
                              "parameter_counts": {"adapter_trainable": 0, "other_trainable": 0, "frozen_random": 0}})
    a_fixed = {name: torch.randn(RANK, d_in, generator=generator) / d_in**0.5 for name in NAMES}
    for epoch in range(EPOCHS + 1):
        grow = epoch / EPOCHS
        if method == "lora":
            tensors = {k: v for name in NAMES for k, v in ((f"{name}.lora_A", a_fixed[name]),
                                                           (f"{name}.lora_B", torch.randn(d_out, RANK, generator=generator) * 0.01 * grow))}
        else:
            tensors = {k: v for name in NAMES for k, v in ((f"{name}.tlora_B", torch.randn(RANK, RANK, generator=generator) * 0.1 * grow),
                                                           (f"{name}.tlora_alpha", torch.tensor(1.0 + 0.1 * torch.randn(1, generator=generator).item())))}
        writer.write_epoch(epoch, tensors, {"metrics": {"accuracy": 0.5 + 0.04 * epoch}})
    writer.update(status="finished")
    writer.close()


def write_study(root: Path) -> Path:
    spec = {"method": ["lora", "tlora"], "seed": list(range(SEEDS))}
    (root / "runs").mkdir(parents=True)
    for method in spec["method"]:
        for seed in spec["seed"]:
            write_run(root / "runs" / f"{method}-s{seed}", method, seed)
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    return root


def analyse(study_dir: str, queue) -> None:
    """In one process, side by side: the analysis alone, then what ``figures`` and ``report`` do on top of it."""
    from tlora_analysis.analysis.compare import compare_study
    from tlora_analysis.cli import main as cli
    from tlora_analysis.study import load_study

    start = time.perf_counter()
    tables = compare_study(load_study(study_dir), function_examples=0)
    elapsed = time.perf_counter() - start
    rows = sum(len(t) for t in tables.values() if hasattr(t, "__len__") and not isinstance(t, dict))
    pairs = tables["controls"].groupby("kind").apply(lambda g: len(g[["run_a", "run_b"]].drop_duplicates()), include_groups=False).to_dict()
    commands = {}
    with tempfile.TemporaryDirectory() as out:
        for name, args in (("figures", ["figures", study_dir, "--out", f"{out}/figs", "--no-base"]),
                           ("report", ["report", study_dir, "--out", f"{out}/figs/report.html", "--no-base"])):
            start = time.perf_counter()
            assert cli(args) == 0
            commands[name] = time.perf_counter() - start
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    queue.put((elapsed, commands, peak_kib * 1024, rows, pairs, len(tables["claims"])))


def main() -> str:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        study = write_study(Path(root))
        written = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in Path(root).rglob("*.safetensors"))
        context = mp.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=analyse, args=(str(study), queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"the analysis process failed with exit code {process.exitcode}")
        elapsed, commands, peak, rows, pairs, claims = queue.get()
    both = commands["figures"] + commands["report"]
    print(f"  wrote the study ({megabytes(stored)}) in {written:.0f}s; analysis {elapsed:.1f}s; figures {commands['figures']:.1f}s; "
          f"report {commands['report']:.1f}s", file=sys.stderr)
    return table(
        ["what", "value"],
        [
            ["study", f"2 methods x {SEEDS} seeds, {LAYERS} layers x q, v ({SHAPE[0]} x {SHAPE[1]}), r = {RANK}, epochs 0..{EPOCHS}"],
            ["updates read", f"{2 * SEEDS * len(NAMES) * (EPOCHS + 1):,}"],
            ["control pairs at the last epoch", ", ".join(f"{k}: {v}" for k, v in pairs.items())],
            ["table rows produced", f"{rows:,} (claims summary: {claims} rows)"],
            ["time: load_study + compare_study (every table, CIs, controls, claims)", f"**{elapsed:.1f} s** (target < 120 s)"],
            ["time: `tlora-analysis figures STUDY` (analysis, every figure as PNG + PDF, tables)", f"{commands['figures']:.1f} s"],
            ["time: `tlora-analysis report STUDY` into the figures folder", f"{commands['report']:.1f} s"],
            ["time: figures + report, side by side with the analysis alone above", f"**{both:.1f} s** (target < 120 s)"],
            ["peak resident memory of the process (analysis, figures and report), torch included", f"**{megabytes(peak)}** (target < 4 GB)"],
            ["snapshots on disk", megabytes(stored)],
        ],
    )


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
