"""Examples to token ids: what the training loop, the function-space analysis and benchmarks share."""

from __future__ import annotations

from .lm import encode_lm

__all__ = ["encode"]


def encode(tokenizer, examples: list[dict], spec, max_length: int) -> list[dict]:
    """Token ids and labels: a class (or score) per example, or per token for a causal LM."""
    if spec.kind == "causal-lm":
        return encode_lm(tokenizer, examples, max_length)
    texts = [[ex[c] for ex in examples] for c in spec.text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": ex["label"]} for i, ex in enumerate(examples)]
