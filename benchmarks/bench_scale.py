"""2. Scale: the full analysis of a 70B-shaped LoRA/TLoRA pair, built from random factors and stored on disk.

80 layers, q 8192 x 8192 and v 1024 x 8192 (LLaMA-2-70B's grouped-query value projection),
r = 16, epochs 0..10 each. The analysis is spectra, norms, effective rank and the
LoRA-vs-TLoRA cosine (with its random baseline), read back through ``load_run``. It runs in
a fresh process whose peak resident memory is reported whole, torch included.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import machine, megabytes, table

from tlora_analysis import analysis as A
from tlora_analysis.adapters import layer_seed, tensor_sha256, tlora_frozen_matrices
from tlora_analysis.store import RunWriter, load_run

LAYERS, RANK, EPOCHS = 80, 16, 10
SHAPES = {"q_proj": (8192, 8192), "v_proj": (1024, 8192)}


def layer_names() -> list[tuple[str, tuple[int, int]]]:
    return [(f"model.layers.{i}.self_attn.{m}", shape) for i in range(LAYERS) for m, shape in SHAPES.items()]


def write_runs(root: Path) -> tuple[Path, Path]:
    generator = torch.Generator().manual_seed(0)
    names = layer_names()
    lora_layers = {n: {"method": "lora", "shape": list(s), "rank": RANK, "seed": 0, "scaling": 2.0, "lora_alpha": 32} for n, s in names}
    tlora_layers = {}
    for name, (d_out, d_in) in names:
        seed = layer_seed(0, name)
        a, c = tlora_frozen_matrices(seed, d_out, d_in, RANK)
        tlora_layers[name] = {"method": "tlora", "shape": [d_out, d_in], "rank": RANK, "seed": seed,
                              "frozen_sha256": {"tlora_A": tensor_sha256(a), "tlora_C": tensor_sha256(c)}}
    lora = RunWriter(root / "lora", {"method": "lora", "rank": RANK, "layers": lora_layers})
    tlora = RunWriter(root / "tlora", {"method": "tlora", "rank": RANK, "layers": tlora_layers})
    for epoch in range(EPOCHS + 1):
        grow = epoch / EPOCHS
        lora.write_epoch(epoch, {
            key: tensor for name, (d_out, d_in) in names for key, tensor in (
                (f"{name}.lora_A", torch.randn(RANK, d_in, generator=generator) / d_in**0.5),
                (f"{name}.lora_B", torch.randn(d_out, RANK, generator=generator) * 0.01 * grow),
            )
        }, {"metrics": {}})
        tlora.write_epoch(epoch, {
            key: tensor for name, _ in names for key, tensor in (
                (f"{name}.tlora_B", torch.randn(RANK, RANK, generator=generator) * 0.1 * grow),
                (f"{name}.tlora_alpha", torch.tensor(1.0 + 0.1 * torch.randn(1, generator=generator).item())),
            )
        }, {"metrics": {}})
    return root / "lora", root / "tlora"


def full_analysis(lora_dir: str, tlora_dir: str, queue) -> None:
    lora, tlora = load_run(lora_dir), load_run(tlora_dir)
    start = time.perf_counter()
    rows = 0
    for run in (lora, tlora):
        rows += len(A.spectra(run)) + len(A.norms(run)) + len(A.effective_rank(run))
    rows += len(A.update_similarity(lora, tlora))
    elapsed = time.perf_counter() - start
    with open("/proc/self/status") as status:
        peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    queue.put((elapsed, peak_kib * 1024, rows))


def main() -> str:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        lora_dir, tlora_dir = write_runs(Path(root))
        written = time.perf_counter() - start
        stored = sum(p.stat().st_size for p in Path(root).rglob("*.safetensors"))
        context = mp.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=full_analysis, args=(str(lora_dir), str(tlora_dir), queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"the analysis process failed with exit code {process.exitcode}")
        elapsed, peak, rows = queue.get()
    dense_epoch = LAYERS * sum(o * i for o, i in SHAPES.values()) * 4
    print(f"  wrote both runs ({megabytes(stored)}) in {written:.0f}s; analysis {elapsed:.1f}s", file=sys.stderr)
    return table(
        ["what", "value"],
        [
            ["updates analysed", f"2 runs x {LAYERS * len(SHAPES)} layers x {EPOCHS + 1} epochs = {2 * LAYERS * len(SHAPES) * (EPOCHS + 1):,}"],
            ["table rows produced", f"{rows:,}"],
            ["analysis time (load + spectra, norms, effective rank, cosine + baseline)", f"**{elapsed:.1f} s** (target < 60 s)"],
            ["peak resident memory of the analysis process, torch included", f"**{megabytes(peak)}** (target < 4 GiB)"],
            ["snapshots on disk, both runs, all epochs", megabytes(stored)],
            ["dense fp32 ΔW of ONE epoch of one run", f"{megabytes(dense_epoch)} (machine memory: 24 GiB)"],
        ],
    )


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
