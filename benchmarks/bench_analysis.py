"""1. Analysis speed and memory: FactoredDelta vs the dense way, at RoBERTa-large and LLaMA-2-7B shapes.

Per layer: singular values, Frobenius and spectral norms of ΔW_a, and cos(ΔW_a, ΔW_b).
The dense way materializes ΔW = s·B·A (peft's get_delta_weight) and calls
torch.linalg.svdvals, as WeightWatcher's PEFT mode does; the factored way never forms ΔW.
Dense SVDs of 4096 x 4096 matrices take seconds each, so the dense path is timed on a few
layers and scaled to the full set; the factored path runs on every layer.
"""

from __future__ import annotations

import sys

import torch
from harness import machine, median_time, megabytes, peak_memory, table

from tlora_analysis import FactoredDelta, cosine_similarity

SHAPES = {"RoBERTa-large": (24, 1024), "LLaMA-2-7B": (32, 4096)}  # (layers, d); q and v are both d x d
RANKS = (8, 64)


def lora_factors(d: int, r: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d, r, generator=g) / r**0.5, torch.randn(r, d, generator=g) / d**0.5


def factored_layer(state) -> tuple:
    (b1, a1), (b2, a2), scaling = state
    r = a1.shape[0]
    delta_a = FactoredDelta(b1, torch.eye(r) * scaling, a1)
    delta_b = FactoredDelta(b2, torch.eye(r) * scaling, a2)
    s = delta_a.singular_values()
    return s, delta_a.frobenius_norm(), delta_a.spectral_norm(), cosine_similarity(delta_a, delta_b)


def dense_layer(state) -> tuple:
    (b1, a1), (b2, a2), scaling = state
    w_a, w_b = scaling * (b1 @ a1), scaling * (b2 @ a2)  # peft's get_delta_weight
    s = torch.linalg.svdvals(w_a)
    cosine = float((w_a * w_b).sum() / (torch.linalg.matrix_norm(w_a) * torch.linalg.matrix_norm(w_b)))
    return s, float(s.norm()), float(s[0]), cosine


def layer_state(d: int, r: int, seed: int = 0):
    return lora_factors(d, r, seed), lora_factors(d, r, seed + 1), 2.0


def main(dense_layers: int = 2, repeats: int = 3) -> str:
    rows = []
    for model, (layers, d) in SHAPES.items():
        modules = 2 * layers
        for r in RANKS:
            states = [layer_state(d, r, seed=2 * i) for i in range(modules)]
            factored = median_time(lambda states=states: [factored_layer(s) for s in states], repeats=repeats)
            sample = states[:dense_layers]
            dense = median_time(lambda sample=sample: [dense_layer(s) for s in sample], repeats=repeats, warmup=0) * modules / len(sample)
            check_f, check_d = factored_layer(states[0]), dense_layer(states[0])
            error = float((check_f[0].float()[:r] - check_d[0][:r]).abs().max() / check_d[0][0])
            memory_f = max(peak_memory(layer_state, factored_layer, d, r, warmup_args=(64, r)), 4096)  # at least a page
            memory_d = peak_memory(layer_state, dense_layer, d, r, warmup_args=(64, r))
            rows.append([model, r, modules, f"{dense:.2f} s", f"{factored * 1e3:.1f} ms", f"**{dense / factored:,.0f}x**",
                         megabytes(memory_d), megabytes(memory_f), f"**{memory_d / memory_f:,.0f}x**", f"{error:.1e}"])
            print(f"  {model} r={r}: dense {dense:.2f}s, factored {factored * 1e3:.1f}ms", file=sys.stderr)
    return table(["shape", "r", "updates", "dense time", "factored time", "speed-up", "dense peak", "factored peak",
                  "memory ratio", "max rel. σ error"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
