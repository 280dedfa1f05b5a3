"""VeRA (Kopiczko et al. 2024), as peft implements it: ΔW = Λ_b · B · Λ_d · A."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..factored import FactoredDelta
from .base import AdapterLayer, register_method


def vera_frozen_matrices(seed: int, d_out: int, d_in: int, rank: int) -> tuple[Tensor, Tensor]:
    """VeRA's frozen A (r x d_in) and B (d_out x r), drawn as peft's ``_kaiming_init`` draws them:
    uniform with bound √(6 / fan_in), A first, from one CPU generator seeded with ``seed``
    (peft's ``projection_prng_key``)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.empty(rank, d_in).uniform_(-math.sqrt(6 / d_in), math.sqrt(6 / d_in), generator=generator)
    b = torch.empty(d_out, rank).uniform_(-math.sqrt(6 / rank), math.sqrt(6 / rank), generator=generator)
    return a, b


@register_method
class VeRALinear(AdapterLayer):
    """VeRA: frozen random A (r x d_in) and B (d_out x r), trainable vectors λ_d (r) and λ_b (d_out).

    A and B depend on the run seed and the layer's shape only (``seed_scope = "run"``), so
    every layer of one shape has the same pair, as in peft, which draws one shared pair;
    with one shape in the model and ``projection_prng_key`` equal to the run seed, the
    matrices are peft's own. λ_d starts at ``alpha`` (peft's ``d_initial``, 0.1) and λ_b at
    zero, so ΔW = 0 at init. ΔW is factored with a diagonal core: (λ_b ⊙ B) · diag(λ_d) · A.
    Trainable numbers per layer: r + d_out. VeRA has no scalar scale (:meth:`scale` is NaN).
    """

    method = "vera"
    seed_scope = "run"
    frozen_names = ("vera_A", "vera_B")

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        device = base.weight.device
        a, b = vera_frozen_matrices(seed, base.out_features, base.in_features, rank)
        self.register_buffer("vera_A", a.to(device))
        self.register_buffer("vera_B", b.to(device))
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), 0.1 if alpha is None else float(alpha), device=device))
        self.vera_lambda_b = nn.Parameter(torch.zeros(base.out_features, device=device))

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.vera_A.dtype))
        return self.vera_lambda_b * ((self.vera_lambda_d * (x @ self.vera_A.T)) @ self.vera_B.T)

    def scale(self) -> float:
        return math.nan

    def delta(self) -> FactoredDelta:
        return FactoredDelta(self.vera_B * self.vera_lambda_b.detach()[:, None], torch.diag(self.vera_lambda_d.detach()), self.vera_A)

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"vera_lambda_d": (record["rank"],), "vera_lambda_b": (record["shape"][0],)}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"vera_A": (r, d_in), "vera_B": (d_out, r)}

    @classmethod
    def rebuild_frozen(cls, record: dict) -> dict[str, Tensor]:
        (d_out, d_in), r = record["shape"], record["rank"]
        a, b = vera_frozen_matrices(int(record["seed"]), d_out, d_in, int(r))
        return {"vera_A": a, "vera_B": b}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        b = frozen["vera_B"].to(tensors["vera_lambda_b"].device) * tensors["vera_lambda_b"].detach()[:, None]
        return FactoredDelta(b, torch.diag(tensors["vera_lambda_d"].detach()), frozen["vera_A"].to(b.device))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return math.nan

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"lambda_d": tensors["vera_lambda_d"], "lambda_b": tensors["vera_lambda_b"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank + d_out, rank * (d_out + d_in)
