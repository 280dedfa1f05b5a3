"""LoRA-XS (Bałazy et al. 2024): ΔW = (α / r) · A · R · B with A, B from W0's truncated SVD."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import require
from ..factored import FactoredDelta
from .base import AdapterLayer, check_scale, register_method


def loraxs_frozen_matrices(weight: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """A = U_r Σ_r (d_out x r) and B = V_rᵀ (r x d_in) from W0's rank-r truncated SVD, in float32.

    This is LoRA-XS's placement: the singular values go into the outer factor on the output
    side, so the trainable core R mixes W0's principal directions.
    """
    u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
    return (u[:, :rank] * s[:rank]).float(), vh[:rank].float().contiguous()


@register_method
class LoRAXSLinear(AdapterLayer):
    """LoRA-XS: TLoRA's shape with principal instead of random frozen subspaces.

    A and B are computed from the wrapped layer's own W0, so they are rebuilt only from W0:
    a run stores them in ``frozen.safetensors`` for the analyses, and a restored model
    recomputes them from the base model and checks them against the recorded SHA-256
    (which can fail across LAPACK builds, whose singular vectors may differ in sign).
    R (r x r) is trainable and zero at init; the scale is α / r (α defaults to r).
    Trainable numbers per layer: r².
    """

    method = "loraxs"
    frozen_names = ("loraxs_A", "loraxs_B")

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        device = base.weight.device
        a, b = loraxs_frozen_matrices(base.weight, rank)
        self.register_buffer("loraxs_A", a.to(device))
        self.register_buffer("loraxs_B", b.to(device))
        self.loraxs_R = nn.Parameter(torch.zeros(rank, rank, device=device))
        self.scaling = (rank if alpha is None else float(alpha)) / rank

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.loraxs_R.dtype))
        return ((x @ self.loraxs_B.T) @ self.loraxs_R.T) @ self.loraxs_A.T * self.scaling

    def scale(self) -> float:
        return self.scaling

    def delta(self) -> FactoredDelta:
        return FactoredDelta(self.loraxs_A, (self.scaling * self.loraxs_R).detach(), self.loraxs_B)

    def record(self) -> dict[str, Any]:
        return {**super().record(), "scaling": self.scaling}

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        check_scale(require(record, "scaling", where), where, "scaling")

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"loraxs_R": (record["rank"], record["rank"])}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"loraxs_A": (d_out, r), "loraxs_B": (r, d_in)}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        return FactoredDelta(frozen["loraxs_A"], float(record["scaling"]) * tensors["loraxs_R"], frozen["loraxs_B"])

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(record["scaling"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"R": tensors["loraxs_R"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * rank, 0  # the frozen factors are W0's, not random
