"""16. Reading a generated study of many cells back: ``figures`` cold, warm and after one new cell, at two sizes.

Usage: ``python benchmarks/bench_study_scale.py [SMALL LARGE]`` (default 20 and 200 cells).

The cells have the atlas's shapes: the default model (6 layers, query and value, 384 x 384) and four methods, two
read from their factors (LoRA, TLoRA) and two that need W0 and peft (DoRA; IA³, read through peft on a skeleton of
the base). One template cell per method is trained for one epoch on a few examples of the default task; every
generated cell is written by the run store (``RunWriter``) with the template's record and random tensors of the
template's shapes (three epochs, seeded per cell), so each cell is a different update read the way a trained one is.
Each ``figures`` runs in a fresh process (PNG only, W0 from the default model, ``--jobs`` the cores), one after
another in this one run; peak memory is GNU time's maximum resident set of one process. The target (issue #39):
the large study's cold read within 10 min on 2 cores, and its peak memory within 1.5x the small one's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from tlora_analysis.store import RunWriter

METHODS = ("lora", "tlora", "dora", "ia3")
EPOCHS = 3
CLI = [sys.executable, "-m", "tlora_analysis"]


def train_templates(root: Path) -> dict[str, Path]:
    """One short real run per method: its run.json says how the method's cells are read."""
    templates = {}
    for method in METHODS:
        out = root / method
        subprocess.run([*CLI, "train", "--method", method, "--epochs", "1", "--max-train-samples", "64", "--max-eval-samples", "32",
                        "--no-progress", "--out", str(out)], check=True, capture_output=True)
        templates[method] = out
    return templates


def write_cell(template: Path, out: Path, seed: int) -> None:
    """A cell with the template's record and seeded random tensors of its shapes, epochs 0..EPOCHS."""
    meta = json.loads((template / "run.json").read_text())
    header = {k: v for k, v in meta.items() if k not in ("format", "format_version", "epochs", "status")}
    shapes = load_file(str(sorted((template / "snapshots").glob("*.safetensors"))[-1]))
    generator = torch.Generator().manual_seed(seed)
    writer = RunWriter(out, header)
    for epoch in range(EPOCHS + 1):
        tensors = {k: v + 0.01 * (epoch + 1) * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                   for k, v in shapes.items()}
        writer.write_epoch(epoch, tensors, {"metrics": {meta.get("main_metric", "accuracy"): 0.5 + 0.1 * epoch}})
    writer.update(status="finished")
    writer.close()


def cell(k: int) -> tuple[str, int]:
    """The k-th cell of the grid: methods vary fastest."""
    return METHODS[k % len(METHODS)], k // len(METHODS)


def write_study(templates: dict[str, Path], root: Path, cells: int) -> Path:
    """``cells`` finished cells of a grid with room for more (the rest pending, as in a study still running)."""
    spec = {"method": list(METHODS), "seed": list(range(cells // len(METHODS) + 1))}
    for k in range(cells):
        method, seed = cell(k)
        write_cell(templates[method], root / "runs" / f"{method}-s{seed}", seed)
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    return root


def run_figures(study: Path, out: Path) -> tuple[float, float]:
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *CLI, "figures", str(study), "--out", str(out), "--formats", "png", "--no-progress"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peak = next(int(line.split(":")[1]) for line in done.stderr.splitlines() if "Maximum resident set size" in line)
    return time.perf_counter() - start, peak / 2**20


def measure(templates: dict[str, Path], root: Path, cells: int) -> list[tuple]:
    study = write_study(templates, root / f"study{cells}", cells)
    rows = [(cells, "cold", *run_figures(study, root / f"cold{cells}")), (cells, "warm", *run_figures(study, root / f"warm{cells}"))]
    method, seed = cell(cells)
    write_cell(templates[method], study / "runs" / f"{method}-s{seed}", seed)
    rows.append((cells + 1, "one new cell", *run_figures(study, root / f"new{cells}")))
    return rows


def main(small: int, large: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        templates = train_templates(root / "templates")
        rows = measure(templates, root, small) + measure(templates, root, large)
        shutil.rmtree(root / "templates")
    print(f"`figures STUDY --formats png` on generated studies ({', '.join(METHODS)}; default model, W0), each in a fresh process\n")
    print("| cells | read | seconds | peak GiB |\n|---|---|---|---|")
    for cells, read, seconds, peak in rows:
        print(f"| {cells} | {read} | {seconds:.1f} | {peak:.2f} |")
    print(f"\npeak memory, {large} cells cold / {small} cells cold: {rows[3][3] / rows[0][3]:.2f} (target <= 1.5)")


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:3]] or [20, 200]
    main(*sizes)
