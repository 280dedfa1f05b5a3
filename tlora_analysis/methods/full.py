"""Full fine-tuning of the target matrices only: ΔW = W − W0, trained and stored dense."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..factored import FactoredDelta
from .base import AdapterLayer, register_method

MAX_FULL_ENTRIES = 1 << 24
"""Largest d_out · d_in fully fine-tuned per layer (a 64 MiB float32 ΔW in every snapshot);
above it the dense snapshots would swamp the run directory."""


@register_method
class FullLinear(AdapterLayer):
    """The reference every low-rank method is judged against: the whole W of a target layer trains.

    The trainable tensor is ΔW itself (``full_delta``, zero at init), so W = W0 + ΔW and the
    rest of the model stays frozen as for adapters. Snapshots store ΔW dense; analyses see
    it as a :class:`FactoredDelta` from one SVD (``FactoredDelta.from_dense``), which a run
    computes once per snapshot. ``rank`` is ignored: the update may have any rank.
    """

    method = "full"
    cache_deltas = True
    _state_names = ("full_delta",)

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0) -> None:
        entries = base.out_features * base.in_features
        if entries > MAX_FULL_ENTRIES:
            raise InputError(f"full fine-tuning of a {base.out_features}x{base.in_features} layer stores {entries:,} numbers per "
                             f"snapshot, more than the limit of {MAX_FULL_ENTRIES:,}; target smaller layers")
        super().__init__(base, min(base.out_features, base.in_features), seed=seed, dropout=dropout)
        self.full_delta = nn.Parameter(torch.zeros_like(base.weight, dtype=torch.float32))

    def low_rank_forward(self, x: Tensor) -> Tensor:
        return self.dropout(x.to(self.full_delta.dtype)) @ self.full_delta.T

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"full_delta": tuple(record["shape"])}

    @classmethod
    def record_from_state(cls, state: dict[str, Tensor]) -> dict:
        shape = list(state["full_delta"].shape)
        return {"method": cls.method, "shape": shape, "rank": min(shape) if len(shape) == 2 else 0, "seed": 0}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        return FactoredDelta.from_dense(tensors["full_delta"])

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return math.nan

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"delta": tensors["full_delta"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return d_out * d_in, 0
