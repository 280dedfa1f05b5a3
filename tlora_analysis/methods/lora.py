"""LoRA (Hu et al. 2021) as peft implements it: ΔW = (lora_alpha / r) · B · A."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, require
from ..factored import FactoredDelta
from ..tensors import MAX_DIM
from .base import AdapterLayer, check_scale, register_method
from .peft_format import check_number, group_by_module, pattern_value


def lora_a_init(seed: int, rank: int, d_in: int) -> Tensor:
    """LoRA's A (and LoRA-FA's frozen one): Kaiming-uniform with a = √5, as peft's, from a CPU generator seeded with ``seed``."""
    return nn.init.kaiming_uniform_(torch.empty(rank, d_in), a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))


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
        self.lora_A = nn.Parameter(lora_a_init(seed, rank, base.in_features).to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "scaling": self.scaling, "lora_alpha": self.lora_alpha}

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        check_scale(require(record, "scaling", where), where, "scaling")

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"lora_A": (r, d_in), "lora_B": (d_out, r)}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        b = tensors["lora_B"]
        return FactoredDelta(b, torch.eye(int(record["rank"]), dtype=b.dtype, device=b.device) * float(record["scaling"]),
                             frozen.get("lora_A", tensors.get("lora_A")))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(record["scaling"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"A": tensors["lora_A"], "B": tensors["lora_B"]}

    @classmethod
    def from_peft(cls, config: dict, tensors: dict[str, Tensor], where: str, shapes=None) -> dict[str, tuple[dict, dict, dict]]:
        """A peft LoRA adapter's layers as (record, snapshot tensors, frozen tensors) by module name.

        Scaling follows peft: ``lora_alpha / r`` (``/ √r`` with ``use_rslora``), with
        ``rank_pattern`` and ``alpha_pattern`` overrides. ``fan_in_fan_out`` adapters (GPT-2's
        Conv1D) store lora_A and lora_B as nn.Linear's, so ΔW has the (d_out, d_in) orientation.
        """
        if config.get("use_dora"):
            raise InputError(f"{where}: DoRA adapters (use_dora: true) are not supported; supported: plain LoRA")
        default_rank = check_number(require(config, "r", where), where, "'r'", 1, MAX_DIM, integer=True)
        default_alpha = check_number(require(config, "lora_alpha", where), where, "'lora_alpha'", -1e12, 1e12)
        for field in ("rank_pattern", "alpha_pattern"):
            if not isinstance(config.get(field) or {}, dict):
                raise InputError(f"{where}: {field!r} should map module-name patterns to values")
        pairs = group_by_module(tensors, r"lora_(?P<which>[AB])")
        if not pairs:
            raise InputError(f"{where}: no lora_A/lora_B tensors found (keys look like {next(iter(tensors), 'nothing')!r})")
        layers = {}
        for module, pair in pairs.items():
            if set(pair) != {"A", "B"}:
                raise InputError(f"{where}: module {module!r} has lora_{next(iter(pair))} but not its partner")
            a, b = pair["A"], pair["B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise InputError(f"{where}: module {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not chain")
            rank = a.shape[0]
            expected = pattern_value(config.get("rank_pattern") or {}, module, default_rank, where)
            if rank != expected:
                raise InputError(f"{where}: module {module!r} has rank {rank}, adapter_config.json says {expected}")
            alpha = check_number(pattern_value(config.get("alpha_pattern") or {}, module, default_alpha, where),
                                 where, f"alpha_pattern value for {module}", -1e12, 1e12)
            scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
            record = {"method": cls.method, "shape": [b.shape[0], a.shape[1]], "rank": rank, "seed": 0, "scaling": scaling,
                      "lora_alpha": alpha}
            layers[module] = (record, {"lora_A": a, "lora_B": b}, {})
        return layers

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * (d_out + d_in), 0
