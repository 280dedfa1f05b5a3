"""Reading a kohya/LyCORIS single file: time per module from 2,000 to 200,000 modules, which must stay flat.

Why: a file's modules were matched to their keys by scanning every key once per module, so reading grew as the
square of the module count (8,000 modules: 23 s; 200,000: over 200 s). Each module's keys are now grouped in one
pass; the ratio of interest is the time per module at 200,000 against 2,000 (1 means linear).
"""

from __future__ import annotations

import time

import torch
from harness import table

from tlora_analysis.sources.single_files import read_single_file

SIZES = (2_000, 20_000, 200_000)


def kohya_tensors(modules: int) -> dict[str, torch.Tensor]:
    """A kohya LoRA file's tensors: rank 2 on 1 x 1 layers, so that the time is the bookkeeping, not the algebra."""
    down, up, alpha = torch.zeros(2, 1), torch.zeros(1, 2), torch.tensor(2.0)
    tensors = {}
    for i in range(modules):
        tensors.update({f"lora_unet_m{i}.lora_down.weight": down, f"lora_unet_m{i}.lora_up.weight": up, f"lora_unet_m{i}.alpha": alpha})
    return tensors


def main() -> str:
    rows, per_module = [], {}
    for modules in SIZES:
        tensors = kohya_tensors(modules)
        started = time.perf_counter()
        read_single_file(tensors, "bench")
        seconds = time.perf_counter() - started
        per_module[modules] = seconds / modules
        rows.append([f"{modules:,}", f"{seconds:.2f} s", f"{per_module[modules] * 1e6:.0f} µs",
                     f"{per_module[modules] / per_module[SIZES[0]]:.2f}"])
    return table(["modules", "read_single_file", "per module", "per module / at 2,000"], rows)


if __name__ == "__main__":
    print(main())
