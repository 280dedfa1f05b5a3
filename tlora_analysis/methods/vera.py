"""VeRA (Kopiczko et al. 2024), as peft implements it: ΔW = Λ_b · B · Λ_d · A."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import InputError, require
from ..factored import FactoredDelta
from ..tensors import MAX_DIM, MAX_FROZEN_ELEMENTS, _is_int
from .base import AdapterLayer, register_method
from .peft_format import check_number, group_by_module, lookup_by_suffix
from .spec import METHOD_SPECS


def vera_frozen_matrices(seed: int, d_out: int, d_in: int, rank: int) -> tuple[Tensor, Tensor]:
    """VeRA's frozen A (r x d_in) and B (d_out x r), drawn as peft's ``_kaiming_init`` draws them:
    uniform with bound √(6 / fan_in), A first, from one CPU generator seeded with ``seed``
    (peft's ``projection_prng_key``)."""
    generator = torch.Generator().manual_seed(seed)
    a = torch.empty(rank, d_in).uniform_(-math.sqrt(6 / d_in), math.sqrt(6 / d_in), generator=generator)
    b = torch.empty(d_out, rank).uniform_(-math.sqrt(6 / rank), math.sqrt(6 / rank), generator=generator)
    return a, b


def vera_layer_matrices(seed: int, projection_shape: tuple[int, int], d_out: int, d_in: int, rank: int) -> tuple[Tensor, Tensor]:
    """One layer's A and B: peft draws one pair at the largest (d_out, d_in) of all adapted layers
    and gives each layer its top-left slice, A[:, :d_in] and B[:d_out]."""
    a, b = vera_frozen_matrices(seed, *projection_shape, rank)
    return a[:, :d_in].contiguous(), b[:d_out].contiguous()


@register_method
class VeRALinear(AdapterLayer):
    """VeRA: frozen random A (r x d_in) and B (d_out x r), trainable vectors λ_d (r) and λ_b (d_out).

    As in peft, one pair is drawn for the whole model from the run seed (``projection_prng_key``)
    at the largest shape among the adapted layers (``projection_shape``), and each layer uses
    its slice of it; with the same seed the matrices are peft's own. λ_d starts at ``alpha``
    (peft's ``d_initial``, 0.1) and λ_b at zero, so ΔW = 0 at init. ΔW is factored with a
    diagonal core: (λ_b ⊙ B) · diag(λ_d) · A. Trainable numbers per layer: r + d_out; the shared
    pair's r · (d_out + d_in) frozen numbers count once per model. VeRA has no scalar scale.
    """

    method = "vera"
    seed_scope = "run"
    frozen_names = ("vera_A", "vera_B")
    _state_names = ("vera_A", "vera_B", "vera_lambda_b", "vera_lambda_d")

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0,
                 projection_shape: tuple[int, int] | None = None) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        device = base.weight.device
        self.projection_shape = tuple(projection_shape or (base.out_features, base.in_features))
        a, b = vera_layer_matrices(seed, self.projection_shape, base.out_features, base.in_features, rank)
        self.register_buffer("vera_A", a.to(device))
        self.register_buffer("vera_B", b.to(device))
        initial = METHOD_SPECS["vera"].alpha_default if alpha is None else float(alpha)
        self.vera_lambda_d = nn.Parameter(torch.full((rank,), initial, device=device))
        self.vera_lambda_b = nn.Parameter(torch.zeros(base.out_features, device=device))

    @classmethod
    def shared_settings(cls, shapes: list[tuple[int, int]]) -> dict:
        return {"projection_shape": (max(o for o, _ in shapes), max(i for _, i in shapes))}

    def settings(self) -> dict:
        return {**super().settings(), "projection_shape": list(self.projection_shape)}

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.vera_A.dtype))
        return self.vera_lambda_b * ((self.vera_lambda_d * (x @ self.vera_A.T)) @ self.vera_B.T)

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        projection = record.get("projection_shape", record["shape"])
        if (not isinstance(projection, list) or len(projection) != 2 or not all(_is_int(d) and 1 <= d <= MAX_DIM for d in projection)
                or projection[0] < record["shape"][0] or projection[1] < record["shape"][1]):
            raise InputError(f"{where}: 'projection_shape' should be [d_out, d_in] at least the layer's {record['shape']} and at most "
                             f"{MAX_DIM} each, got {projection!r:.80}")
        if int(record["rank"]) * sum(projection) > MAX_FROZEN_ELEMENTS:
            raise InputError(f"{where}: a VeRA pair of shape {projection} and rank {record['rank']} exceeds {MAX_FROZEN_ELEMENTS:,} numbers")

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"vera_lambda_d": (record["rank"],), "vera_lambda_b": (record["shape"][0],)}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"vera_A": (r, d_in), "vera_B": (d_out, r)}

    @classmethod
    def record_from_state(cls, state: dict[str, Tensor]) -> dict:
        shape = [state["vera_lambda_b"].shape[0], state["vera_A"].shape[-1]]  # a saved layer holds its own slice of the pair
        return {"method": cls.method, "shape": shape, "rank": state["vera_lambda_d"].shape[0], "seed": 0, "projection_shape": shape}

    @classmethod
    def _projection_shape(cls, record: dict) -> tuple[int, int]:
        return tuple(record.get("projection_shape") or record["shape"])

    @classmethod
    def rebuild_frozen(cls, record: dict) -> dict[str, Tensor]:
        (d_out, d_in), r = record["shape"], int(record["rank"])
        a, b = vera_layer_matrices(int(record["seed"]), cls._projection_shape(record), d_out, d_in, r)
        return {"vera_A": a, "vera_B": b}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        lambda_b = tensors["vera_lambda_b"].detach()
        b = frozen["vera_B"].to(lambda_b.device) * lambda_b[:, None]
        return FactoredDelta.diagonal(b, tensors["vera_lambda_d"].detach(), frozen["vera_A"].to(b.device))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return math.nan

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"lambda_d": tensors["vera_lambda_d"], "lambda_b": tensors["vera_lambda_b"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank + d_out, rank * (d_out + d_in)

    @classmethod
    def from_peft(cls, config: dict, tensors: dict[str, Tensor], where: str, shapes=None) -> dict[str, tuple[dict, dict, dict]]:
        """A peft VeRA adapter's layers as (record, snapshot tensors, frozen tensors) by module name.

        peft keeps one pair at the largest shape (``base_model.vera_A``/``vera_B``, or, with
        ``save_projection: false``, nothing: the pair is drawn again from ``projection_prng_key``)
        and per layer λ_b and λ_d. The files give each layer's d_out (λ_b) but not its d_in:
        ``shapes`` (module -> (d_out, d_in), from the base model's weights) supplies it; without
        it every layer must have the saved pair's shape, as query/value layers do.
        """
        rank = check_number(require(config, "r", where), where, "'r'", 1, MAX_DIM, integer=True)
        # fan_in_fan_out (GPT-2's Conv1D stores W0 as (d_in, d_out)) needs nothing here: λ_b, λ_d and the pair are peft's in
        # ΔW's (d_out, d_in) orientation, and the base's shapes are read in it too (base_weights.weight_shapes)
        seed = check_number(config.get("projection_prng_key", 0), where, "'projection_prng_key'", 0, 2**63 - 1, integer=True)
        lambdas = group_by_module(tensors, r"vera_lambda_(?P<which>[bd])")
        if not lambdas:
            raise InputError(f"{where}: no vera_lambda_b/vera_lambda_d tensors found")
        for module, pair in lambdas.items():
            if set(pair) != {"b", "d"} or pair["d"].shape != (rank,) or pair["b"].ndim != 1:
                raise InputError(f"{where}: module {module!r} needs vera_lambda_d of shape ({rank},) and a vector vera_lambda_b")
        stored = "base_model.vera_A" in tensors and "base_model.vera_B" in tensors
        layer_shapes = cls._peft_layer_shapes(lambdas, tensors if stored else None, shapes, rank, where)
        projection = [max(o for o, _ in layer_shapes.values()), max(i for _, i in layer_shapes.values())]
        if stored:
            vera_a, vera_b = tensors["base_model.vera_A"], tensors["base_model.vera_B"]
            if vera_a.ndim != 2 or vera_b.ndim != 2 or list(vera_a.shape) != [rank, projection[1]] or list(vera_b.shape) != [projection[0], rank]:
                raise InputError(f"{where}: vera_A {tuple(vera_a.shape)} and vera_B {tuple(vera_b.shape)} should be "
                                 f"({rank}, {projection[1]}) and ({projection[0]}, {rank}) for these layers")
        layers = {}
        for module, pair in lambdas.items():
            d_out, d_in = layer_shapes[module]
            record = {"method": cls.method, "shape": [d_out, d_in], "rank": rank, "seed": seed, "projection_shape": projection}
            if min(d_out, d_in) < 1:
                raise InputError(f"{where}: module {module!r} has a zero-size dimension ({d_out}x{d_in})")
            cls.check_record(record, where)  # before a pair is drawn from it
            frozen = ({"vera_A": vera_a[:, :d_in].contiguous(), "vera_B": vera_b[:d_out].contiguous()} if stored
                      else cls.rebuild_frozen(record))
            layers[module] = (record, {"vera_lambda_d": pair["d"], "vera_lambda_b": pair["b"]}, frozen)
        return layers

    @staticmethod
    def _peft_layer_shapes(lambdas, stored, shapes, rank: int, where: str) -> dict[str, tuple[int, int]]:
        if shapes is not None:
            result = {m: lookup_by_suffix(shapes, m) for m in lambdas}
            missing = sorted(m for m, shape in result.items() if shape is None)
            if missing:
                raise InputError(f"{where}: the base model has no linear layer {missing[0]!r} (is it the adapter's base model?)")
            result = {m: tuple(shape) for m, shape in result.items()}
            bad = [m for m in lambdas if lambdas[m]["b"].shape[0] != result[m][0]]
            if bad:
                raise InputError(f"{where}: module {bad[0]!r} has vera_lambda_b of size {lambdas[bad[0]]['b'].shape[0]}, "
                                 f"but the base model's layer is {result[bad[0]][0]}x{result[bad[0]][1]}")
            return result
        if stored is None:
            raise InputError(f"{where}: saved without its projections (save_projection: false), so the pair must be drawn again at "
                             "the largest layer shape; pass the base model (--base) to give the layers' shapes")
        d_out, d_in = stored["base_model.vera_B"].shape[0], stored["base_model.vera_A"].shape[1]
        other = next((m for m, pair in lambdas.items() if pair["b"].shape[0] != d_out), None)
        if other is not None:
            raise InputError(f"{where}: layers of several shapes ({other!r} has d_out {lambdas[other]['b'].shape[0]}, the shared pair "
                             f"{d_out}); an adapter file does not give each layer's d_in, so pass the base model (--base)")
        return {m: (d_out, d_in) for m in lambdas}

    @classmethod
    def update_counts(cls, records: dict[str, dict]) -> tuple[int, int]:
        trainable = sum(int(r["rank"]) + int(r["shape"][0]) for r in records.values())
        shared = {(*cls._projection_shape(r), int(r["rank"]), int(r["seed"])) for r in records.values()}
        return trainable, sum(rank * (d_out + d_in) for d_out, d_in, rank, _ in shared)
