"""LoRA-FA (Zhang et al. 2023, arXiv 2308.03303) as peft's ``create_lorafa_optimizer`` trains it:
LoRA with A frozen at its random init and only B trained, B's gradient preconditioned by (A Aᵀ)⁻¹ / s²."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import register_method
from .lora import LoRALinear, lora_a_init

PINV_RIDGE = 1e-8
"""peft's ``delta``: the ridge added to A·Aᵀ before its pseudo-inverse."""


@register_method
class LoRAFALinear(LoRALinear):
    """LoRA-FA: ΔW = (lora_alpha / r) · B · A with A (r x d_in) a frozen buffer, B (d_out x r) trained from zero.

    peft's LoRA-FA optimizer (``peft.optimizers.lorafa``) replaces B's gradient g by
    g · (A Aᵀ + 1e-8 I)⁺ / s² before its AdamW moments, so that B's step approximates full
    fine-tuning's projected onto A's row space. A gradient hook on B does the same here, so any
    AdamW loop (``train``, a Trainer) gets peft's update. Trainable numbers per layer: r · d_out;
    frozen random: r · d_in.
    """

    method = "lorafa"
    frozen_names = ("lora_A",)
    scale_buffer = "lorafa_scaling"
    _state_names = ("lora_A", "lora_B", "lorafa_scaling")

    def __init__(self, base: nn.Linear, rank: int, lora_alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__(base, rank, lora_alpha, dropout=dropout, seed=seed)
        a = self.lora_A.detach()
        del self.lora_A
        self.register_buffer("lora_A", a)
        self.lora_B.register_hook(self._precondition)

    def _precondition(self, grad: Tensor) -> Tensor:
        a = self.lora_A.to(grad.dtype)
        gram = a @ a.T + PINV_RIDGE * torch.eye(self.rank, dtype=grad.dtype, device=grad.device)
        return grad @ torch.linalg.pinv(gram) / self.scaling**2

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"lora_B": (record["shape"][0], record["rank"])}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"lora_A": (record["rank"], record["shape"][1])}

    @classmethod
    def rebuild_frozen(cls, record: dict) -> dict[str, Tensor]:
        return {"lora_A": lora_a_init(int(record["seed"]), int(record["rank"]), int(record["shape"][1]))}

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"B": tensors["lora_B"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * d_out, rank * d_in
