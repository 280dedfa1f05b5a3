"""10. A whole training step (forward, backward, AdamW) of real-shaped models: TLoRA vs LoRA vs peft's LoRA.

Benchmark 5 times one adapter layer; this times what a user waits for. Two models built
from configs with random weights (no download): a RoBERTa-large-shaped classifier and a
1B Llama (TinyLlama-1.1B's shape) as a causal LM, adapted on the query and value
projections at r = 8. The three adapted models are built from the same base weights and
timed alternately, median of the repeats, on the CPU and (where one is present) on CUDA,
where the peak memory of each step is recorded too. The CPU rows use smaller batches than
the CUDA rows, so that they finish in minutes on two cores.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from harness import machine, table

from tlora_analysis import inject_adapters

R = 8
SHAPES = {
    # name: (config builder, targets, (batch, tokens) on the CPU, (batch, tokens) on CUDA)
    "RoBERTa-large (355M)": ("roberta", ["query", "value"], (2, 128), (16, 128)),
    "Llama 1.1B (TinyLlama shape)": ("llama", ["q_proj", "v_proj"], (1, 128), (8, 512)),
}


def base_model(kind: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, RobertaConfig

    torch.manual_seed(0)
    if kind == "roberta":
        config = RobertaConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                               max_position_embeddings=514, type_vocab_size=1, num_labels=2)
        return AutoModelForSequenceClassification.from_config(config)
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, max_position_embeddings=2048)
    return AutoModelForCausalLM.from_config(config)


def adapted(kind: str, targets: list[str], device: str) -> dict:
    """The three adapted models, each on its own copy of the same base weights (built anew from
    the seed rather than copied, so that peak memory holds three models, not four)."""
    import peft

    models = {"TLoRA (ours)": inject_adapters(base_model(kind), "tlora", R, targets),
              "LoRA (ours)": inject_adapters(base_model(kind), "lora", R, targets),
              "LoRA (peft)": peft.get_peft_model(base_model(kind), peft.LoraConfig(r=R, lora_alpha=R, target_modules=targets, lora_dropout=0.0))}
    for model in models.values():
        model.to(device).train()
        with torch.no_grad():  # non-zero factors, as after some training, so no path is a no-op
            for p in model.parameters():
                if p.requires_grad and p.ndim == 2:
                    p.normal_(0, 0.02)
    return models


def step(model, optimizer, ids, labels, device: str) -> tuple[float, int]:
    """Seconds for one forward, backward and AdamW step, and the step's peak CUDA memory (0 on the CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, torch.cuda.max_memory_allocated() if device == "cuda" else 0


def measure_shape(device: str, label: str, kind: str, targets: list[str], batch: int, tokens: int, repeats: int) -> list:
    models = adapted(kind, targets, device)
    optimizers = {n: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for n, m in models.items()}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 30000, (batch, tokens), generator=generator).to(device)
    labels = ids if kind == "llama" else torch.randint(0, 2, (batch,), generator=generator).to(device)
    times, peaks = {n: [] for n in models}, dict.fromkeys(models, 0)
    for name in models:
        step(models[name], optimizers[name], ids, labels, device)  # warm-up
    for _ in range(repeats):
        for name in models:
            seconds, peak = step(models[name], optimizers[name], ids, labels, device)
            times[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
    median = {n: statistics.median(t) for n, t in times.items()}
    print(f"  {device} {label}: " + ", ".join(f"{k} {v:.3f} s" for k, v in median.items()), file=sys.stderr)
    memory = [f"{peaks[n] / 2**30:.2f} GiB" if device == "cuda" else "-" for n in models]
    return [device, label, f"{batch} x {tokens}", *(f"{median[n]:.3f} s" for n in models), *memory,
            f"**{median['TLoRA (ours)'] / median['LoRA (ours)']:.2f}x**", f"**{median['LoRA (ours)'] / median['LoRA (peft)']:.2f}x**"]


def measure(device: str, repeats: int = 3) -> list[list]:
    rows = []
    for label, (kind, targets, cpu_batch, cuda_batch) in SHAPES.items():
        batch, tokens = cuda_batch if device == "cuda" else cpu_batch
        rows.append(measure_shape(device, label, kind, targets, batch, tokens, repeats))
    return rows


def main() -> str:
    rows = measure("cpu")
    if torch.cuda.is_available():
        rows += measure("cuda")
    names = ("TLoRA (ours)", "LoRA (ours)", "LoRA (peft)")
    return table(["device", "model", "batch x tokens", *(f"step {n}" for n in names), *(f"peak {n}" for n in names),
                  "TLoRA / LoRA", "our LoRA / peft"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
