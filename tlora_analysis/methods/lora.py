"""LoRA (Hu et al. 2021) as peft implements it: ΔW = (lora_alpha / r) · B · A."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import require
from ..factored import FactoredDelta
from .base import AdapterLayer, check_scale, register_method


@register_method
class LoRALinear(AdapterLayer):
    """LoRA: A (r x d_in) Kaiming-uniform with a = √5, B (d_out x r) zero, so ΔW = 0 at init.

    ``use_rslora`` scales by lora_alpha / √r instead of lora_alpha / r. Attribute names
    (``lora_A``, ``lora_B``, ``scaling``) follow peft so exported adapters map one to one.
    Trainable numbers per layer: r · (d_in + d_out).
    """

    method = "lora"

    def __init__(self, base: nn.Linear, rank: int, lora_alpha: float | None = None, *, dropout: float = 0.0, use_rslora: bool = False,
                 seed: int = 0) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        self.lora_alpha = float(rank if lora_alpha is None else lora_alpha)
        self.use_rslora = use_rslora
        self.scaling = self.lora_alpha / (math.sqrt(rank) if use_rslora else rank)
        device = base.weight.device
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        self.lora_A = nn.Parameter(a.to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def scale(self) -> float:
        return self.scaling

    def delta(self) -> FactoredDelta:
        core = torch.eye(self.rank, dtype=self.lora_B.dtype, device=self.lora_B.device) * self.scaling
        return FactoredDelta(self.lora_B.detach(), core, self.lora_A.detach())

    def record(self) -> dict[str, Any]:
        return {**super().record(), "scaling": self.scaling, "lora_alpha": self.lora_alpha}

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        check_scale(require(record, "scaling", where), where, "scaling")

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"lora_A": (r, d_in), "lora_B": (d_out, r)}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        return FactoredDelta(tensors["lora_B"], torch.eye(int(record["rank"])) * float(record["scaling"]), tensors["lora_A"])

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(record["scaling"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"A": tensors["lora_A"], "B": tensors["lora_B"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * (d_out + d_in), 0
