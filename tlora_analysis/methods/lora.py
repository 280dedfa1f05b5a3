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
from .peft_format import PatternTable, check_number, check_rank, group_by_module


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
    scale_buffer = "lora_scaling"
    _state_names = ("lora_A", "lora_B", "lora_scaling")

    def __init__(self, base: nn.Linear, rank: int, lora_alpha: float | None = None, *, dropout: float = 0.0, use_rslora: bool = False,
                 seed: int = 0) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        self.lora_alpha = float(rank if lora_alpha is None else lora_alpha)
        self.use_rslora = use_rslora
        self.scaling = self.lora_alpha / (math.sqrt(rank) if use_rslora else rank)
        device = base.weight.device
        self.lora_A = nn.Parameter(lora_a_init(seed, rank, base.in_features).to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        self._register_scale(self.scaling)

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
    def record_from_state(cls, state: dict[str, Tensor]) -> dict[str, Any]:
        rank, scaling = state["lora_A"].shape[0], float(state[cls.scale_buffer])
        return {"method": cls.method, "shape": [state["lora_B"].shape[0], state["lora_A"].shape[-1]], "rank": rank, "seed": 0,
                "scaling": scaling, "lora_alpha": scaling * rank}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        b = tensors["lora_B"]
        return FactoredDelta.diagonal(b, float(record["scaling"]), frozen.get("lora_A", tensors.get("lora_A")))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(record["scaling"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"A": tensors["lora_A"], "B": tensors["lora_B"]}

    @classmethod
    def from_peft(cls, config: dict, tensors: dict[str, Tensor], where: str, shapes=None) -> dict[str, tuple[dict, dict, dict]]:
        """A peft LoRA adapter's linear layers as (record, snapshot tensors, frozen tensors) by module name.

        Scaling follows peft (:func:`peft_scalings`). ``fan_in_fan_out`` adapters (GPT-2's Conv1D) store
        lora_A and lora_B as nn.Linear's, so ΔW has the (d_out, d_in) orientation. Variants that change
        what ΔW is (DoRA, PiSSA) are the peft reader's (:mod:`tlora_analysis.peft_types.lora`).
        """
        pairs = {m: p for m, p in group_by_module(tensors, r"lora_(?P<which>[AB])").items() if all(t.ndim == 2 for t in p.values())}
        layers = {}
        for module, (a, b) in _chained_pairs(pairs, where, "lora_A", "lora_B").items():
            layers[module] = None, {"lora_A": a, "lora_B": b}, {}
        for module, (record, scaling, alpha) in peft_scalings(config, {m: (t["lora_B"].shape[0], t["lora_A"].shape[1], t["lora_A"].shape[0])
                                                                        for m, (_, t, _) in layers.items()}, where).items():
            layers[module] = ({"method": cls.method, **record, "seed": 0, "scaling": scaling, "lora_alpha": alpha}, *layers[module][1:])
        return layers

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * (d_out + d_in), 0


def _chained_pairs(pairs: dict[str, dict], where: str, name_a: str, name_b: str) -> dict[str, tuple[Tensor, Tensor]]:
    """``{module: (A, B)}`` of grouped ``A``/``B`` factors, each pair checked to chain (B·A)."""
    chained = {}
    for module, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise InputError(f"{where}: module {module!r} has {name_a if 'A' in pair else name_b} but not its partner")
        a, b = pair["A"], pair["B"]
        if a.shape[0] != b.shape[1]:
            raise InputError(f"{where}: module {module!r}: {name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} do not chain")
        check_rank(a.shape[0], (b.shape[0], a.shape[1]), where, module)
        chained[module] = a, b
    return chained


def peft_scalings(config: dict, layers: dict[str, tuple[int, int, int]], where: str,
                  rank_key: str = "r", alpha_key: str = "lora_alpha") -> dict[str, tuple[dict, float, float]]:
    """Per module (d_out, d_in, rank as stored): its record fields, peft's scaling and alpha.

    peft scales by ``lora_alpha / r`` (``/ √r`` with ``use_rslora``), with ``rank_pattern`` and
    ``alpha_pattern`` overrides; the stored rank must be the one the config gives the module.
    """
    default_rank = check_number(require(config, rank_key, where), where, f"{rank_key!r}", 1, MAX_DIM, integer=True)
    default_alpha = check_number(require(config, alpha_key, where), where, f"{alpha_key!r}", -1e12, 1e12)
    ranks = PatternTable(config, "rank_pattern", where, integer=True)
    alphas = PatternTable(config, "alpha_pattern", where, integer=False)
    out = {}
    for module, (d_out, d_in, rank) in layers.items():
        expected = ranks.value(module, default_rank, 1, MAX_DIM)
        if rank != expected:
            raise InputError(f"{where}: module {module!r} has rank {rank}, adapter_config.json says {expected}")
        alpha = alphas.value(module, default_alpha, -1e12, 1e12)
        scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        out[module] = {"shape": [d_out, d_in], "rank": rank}, scaling, alpha
    return out
