"""5. Adapter speed: forward + backward of our TLoRA layer, our LoRA layer and peft's LoRA layer.

Same base nn.Linear, rank and input; the three are timed alternately, median of repeats,
on the CPU and (where one is present) on CUDA.
"""

from __future__ import annotations

import sys

import torch
from harness import machine, table
from torch import nn

from tlora_analysis import LoRALinear, TLoRALinear

SHAPES = {"RoBERTa-large q (1024x1024), 16 x 128 tokens": (1024, 1024, 16 * 128), "LLaMA-2-7B q (4096x4096), 4 x 128 tokens": (4096, 4096, 4 * 128)}


def layers(d_out: int, d_in: int, r: int, device: str) -> dict[str, nn.Module]:
    import peft

    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out)
    holder = nn.Sequential()
    holder.add_module("q", nn.Linear(d_in, d_out))
    holder.q.load_state_dict(base.state_dict())
    peft_layer = peft.get_peft_model(holder, peft.LoraConfig(r=r, lora_alpha=r, target_modules=["q"], lora_dropout=0.0)).base_model.model.q
    built = {"TLoRA (ours)": TLoRALinear(nn.Linear(d_in, d_out), r), "LoRA (ours)": LoRALinear(nn.Linear(d_in, d_out), r), "LoRA (peft)": peft_layer}
    for layer in built.values():
        with torch.no_grad():
            for p in layer.parameters():
                if p.requires_grad:
                    p.normal_(0, 0.02)
    return {k: v.to(device) for k, v in built.items()}


def step(layer: nn.Module, x: torch.Tensor) -> None:
    layer(x).sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()


def measure(device: str, r: int = 8, repeats: int = 15) -> list[list]:
    import time

    rows = []
    for label, (d_out, d_in, tokens) in SHAPES.items():
        built = layers(d_out, d_in, r, device)
        x = torch.randn(tokens, d_in, device=device, requires_grad=True)
        times = {name: [] for name in built}
        for layer in built.values():
            step(layer, x)  # warm-up
        for _ in range(repeats):
            for name, layer in built.items():
                start = time.perf_counter()
                step(layer, x)
                times[name].append(time.perf_counter() - start)
        median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
        print(f"  {device} {label}: " + ", ".join(f"{k} {v * 1e3:.2f}ms" for k, v in median.items()), file=sys.stderr)
        rows.append([device, label, r, *(f"{median[n] * 1e3:.2f} ms" for n in built),
                     f"**{median['TLoRA (ours)'] / median['LoRA (ours)']:.2f}x**", f"**{median['LoRA (ours)'] / median['LoRA (peft)']:.2f}x**"])
    return rows


def main() -> str:
    rows = measure("cpu")
    if torch.cuda.is_available():
        rows += measure("cuda")
    return table(["device", "shape", "r", "TLoRA (ours)", "LoRA (ours)", "LoRA (peft)", "TLoRA / LoRA", "our LoRA / peft"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
