"""Batches, the learning-rate schedule, derived seeds and evaluation: the pieces of a training loop
that hold no state of their own."""

from __future__ import annotations

import math

import torch

from ..config import TrainConfig
from ..data import TASKS, compute_metrics

__all__ = ["batches", "make_batch", "evaluate", "lr_at", "derived_seed", "autocast"]

SEED_STREAMS = {"dropout": 100_003, "shuffle": 7919}
"""One prime per stream of randomness derived from the run seed and the epoch, so that no two
streams (or two runs' streams) draw from the same generator seed in practice."""


def derived_seed(seed: int, stream: str, epoch: int) -> int:
    """The seed of one stream of randomness (``dropout`` masks, ``shuffle`` order) in one epoch:
    a function of the run seed and the epoch alone, so a resumed run repeats it exactly."""
    return seed * SEED_STREAMS[stream] + epoch


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then ``config.scheduler``: linear decay to
    zero, a constant rate, or a half cosine down to zero."""
    warmup = max(1, int(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    remaining = max(0.0, (total - step) / max(1, total - warmup))
    if config.scheduler == "constant":
        return config.lr
    if config.scheduler == "cosine":
        return config.lr * 0.5 * (1.0 - math.cos(math.pi * remaining))
    return config.lr * remaining


def autocast(config: TrainConfig):
    """bfloat16 autocast for ``--precision bf16``: matrix products in bf16, parameters (the adapters) in float32."""
    return torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def batches(tokenizer, features: list[dict], batch_size: int, order: list[int], device: str):
    for start in range(0, len(order), batch_size):
        yield make_batch(tokenizer, [features[i] for i in order[start : start + batch_size]], device)


def make_batch(tokenizer, chunk: list[dict], device: str):
    """Pad one batch (dynamic padding); token labels (causal LM) are padded with -100, which the loss ignores."""
    batch = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in chunk], return_tensors="pt")
    if isinstance(chunk[0]["labels"], list):
        width = batch["input_ids"].shape[1]
        pad = [[-100] * (width - len(f["labels"])) for f in chunk]
        left = tokenizer.padding_side == "left"
        labels = torch.tensor([p + f["labels"] if left else f["labels"] + p for p, f in zip(pad, chunk)])
    else:
        labels = torch.tensor([f["labels"] for f in chunk])
    return {k: v.to(device) for k, v in batch.items()}, labels.to(device)


@torch.no_grad()
def evaluate(model, tokenizer, features: list[dict], task: str, batch_size: int, device: str) -> dict[str, float]:
    model.eval()
    if TASKS[task].kind == "causal-lm":
        return _evaluate_lm(model, tokenizer, features, batch_size, device)
    predictions, labels, losses = [], [], []
    for batch, y in batches(tokenizer, features, batch_size, list(range(len(features))), device):
        out = model(**batch, labels=y)
        losses.append(float(out.loss) * len(y))
        logits = out.logits.float()
        predictions.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(y)
    metrics = compute_metrics(task, torch.cat(predictions).cpu().numpy(), torch.cat(labels).cpu().numpy())
    return {"eval_loss": sum(losses) / max(len(features), 1), **metrics}


def _evaluate_lm(model, tokenizer, features: list[dict], batch_size: int, device: str) -> dict[str, float]:
    """Mean next-token loss over every predicted (unmasked) token, and its exponential, the perplexity."""
    total, tokens = 0.0, 0
    for batch, y in batches(tokenizer, features, batch_size, list(range(len(features))), device):
        predicted = int((y[:, 1:] != -100).sum())  # the model shifts the labels by one
        total += float(model(**batch, labels=y).loss) * predicted
        tokens += predicted
    loss = total / max(tokens, 1)
    return {"perplexity": math.exp(min(loss, 700.0)), "eval_loss": loss}
