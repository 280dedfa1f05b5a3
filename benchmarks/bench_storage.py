"""3. Storage: bytes per epoch of our snapshots vs dense fp32 ΔW, measured by writing real snapshot files."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from harness import machine, megabytes, table

from tlora_analysis.store import RunWriter, snapshot_name

SHAPES = {"RoBERTa-large (24 x q,v 1024x1024)": (24, 1024), "LLaMA-2-7B (32 x q,v 4096x4096)": (32, 4096)}


def snapshot_bytes(method: str, layers: int, d: int, r: int) -> int:
    if method == "lora":
        tensors = {f"l{i}.{m}.{k}": torch.zeros(shape) for i in range(layers) for m in "qv"
                   for k, shape in (("lora_A", (r, d)), ("lora_B", (d, r)))}
    else:
        tensors = {f"l{i}.{m}.{k}": torch.zeros(shape) for i in range(layers) for m in "qv"
                   for k, shape in (("tlora_B", (r, r)), ("tlora_alpha", ()))}
    with tempfile.TemporaryDirectory() as root:
        writer = RunWriter(root, {"method": method, "layers": {}})
        writer.write_epoch(1, tensors, {"metrics": {}})
        return (Path(root) / snapshot_name(1)).stat().st_size


def main(ranks=(8, 64)) -> str:
    rows = []
    for label, (layers, d) in SHAPES.items():
        dense = 2 * layers * d * d * 4
        for r in ranks:
            for method in ("lora", "tlora"):
                size = snapshot_bytes(method, layers, d, r)
                rows.append([label, r, method, megabytes(size), megabytes(dense), f"**{dense / size:,.0f}x**"])
    return table(["shape", "r", "method", "snapshot per epoch", "dense fp32 ΔW per epoch", "smaller by"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
