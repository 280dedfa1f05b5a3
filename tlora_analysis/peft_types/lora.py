"""peft's LoRA family read from its factors: LoRA, rsLoRA, rank/alpha patterns, embeddings, DoRA, PiSSA and OLoRA.

- Plain LoRA (any ``init_lora_weights`` that leaves W0 alone): ΔW = s·B·A, factored, read from the file
  by :meth:`~tlora_analysis.methods.LoRALinear.from_peft`, the method's one delta function.
- LoRA on an embedding: ΔW = s·(B·A)ᵀ (num_embeddings x dim), factored.
- PiSSA and OLoRA saved unconverted (peft's default): training started from B0·A0 taken out of W0, so
  the update of the model is s·(B·A − B0·A0). B0·A0 is computed again from the base: s·B0·A0 is W0's
  rank-r truncated SVD (PiSSA) or s·Q_r·R_r of W0's QR (OLoRA). Factored, rank 2r.
- DoRA: W' = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖ row-wise, so ΔW = W' − W0 depends on W0 and is not low
  rank; it is read dense, one layer at a time, from W0.
- Inits whose starting point cannot be recomputed from W0 (PiSSA's randomized ``pissa_niter_N``, CorDA's
  and LoRA-GA's data, LoftQ's quantization) are refused unless saved converted.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from ..factored import FactoredDelta
from ..methods.lora import LoRALinear, _chained_pairs, peft_scalings
from ..methods.peft_format import group_by_module
from .context import ReadContext
from .reading import Reading, layer_record

__all__ = ["read_lora", "lora_init"]

UNRECOVERABLE_INITS = {"corda": "CorDA's from the covariance of its calibration data", "loftq": "LoftQ's from a quantization of W0",
                       "lora_ga": "LoRA-GA's from gradients on its data", "pissa_niter": "the randomized SVD of pissa_niter_N"}
RECOVERABLE_INITS = ("pissa", "olora")


def lora_init(config: dict) -> str:
    """``init_lora_weights`` as a name: "default", "pissa", "pissa_niter", "olora", "corda", ..."""
    init = config.get("init_lora_weights", True)
    if isinstance(init, bool) or init is None:
        return "default"
    init = str(init).lower()
    return "pissa_niter" if init.startswith("pissa_niter_") else init


def read_lora(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """A LoRA-family adapter's state (see the module docstring)."""
    where, init = context.where, lora_init(config)
    if init in UNRECOVERABLE_INITS:
        raise InputError(f"{where}: saved unconverted with init_lora_weights {config.get('init_lora_weights')!r}: its starting "
                         f"point ({UNRECOVERABLE_INITS[init]}) cannot be recomputed, so ΔW is unknown; save it converted "
                         "(save_pretrained(..., path_initial_model_for_weight_conversion=...))")
    linear = LoRALinear.from_peft(config, tensors, where)
    embeddings = _embeddings(config, tensors, where)
    if not linear and not embeddings:
        raise InputError(f"{where}: no lora_A/lora_B tensors found (keys look like {next(iter(tensors), 'nothing')!r})")
    layers = {m: layer_record(r["shape"], r["rank"], scaling=r["scaling"]) for m, (r, _, _) in linear.items()}
    layers.update({m: layer_record(r["shape"], r["rank"], scaling=r["scaling"], kind="embedding") for m, (r, _, _) in embeddings.items()})
    factors = {m: (r, t) for m, (r, t, _) in {**linear, **embeddings}.items()}
    notices, named = _left_alone(tensors, where)
    reading = Reading(layers, lambda: {m: _plain(r, t) for m, (r, t) in factors.items()},
                      scales={m: r["scaling"] for m, r in layers.items()},
                      trainable={m: {"A": t["lora_A"], "B": t["lora_B"]} for m, (_, t) in factors.items()},
                      used=_used_keys(tensors, set(factors)), notices=notices, named=named)
    if config.get("use_dora") and init in RECOVERABLE_INITS:  # DoRA on a PiSSA/OLoRA residual: peft computes it
        from .dense import read_dense

        return read_dense(config, tensors, context)
    if config.get("use_dora"):
        _as_dora(reading, factors, tensors, context)
    elif init in RECOVERABLE_INITS:
        _minus_initial(reading, factors, init, context)
    return reading


def _plain(record: dict, tensors: dict[str, Tensor]) -> FactoredDelta:
    if record.get("embedding"):  # ΔW = s·(B·A)ᵀ = Aᵀ·(s·I)·Bᵀ, in the embedding's (num_embeddings, dim) layout
        a, b = tensors["lora_A"], tensors["lora_B"]
        return FactoredDelta.diagonal(a.T, float(record["scaling"]), b.T)
    return LoRALinear.delta_from(record, tensors, {})


def _embeddings(config: dict, tensors: dict[str, Tensor], where: str) -> dict[str, tuple[dict, dict, dict]]:
    pairs = group_by_module(tensors, r"lora_embedding_(?P<which>[AB])")
    chained = _chained_pairs(pairs, where, "lora_embedding_A", "lora_embedding_B")  # A (r, num), B (dim, r)
    sizes = {m: (a.shape[1], b.shape[0], a.shape[0]) for m, (a, b) in chained.items()}
    out = {}
    for module, (record, scaling, alpha) in peft_scalings(config, sizes, where).items():
        a, b = chained[module]
        out[module] = ({**record, "method": "lora", "seed": 0, "scaling": scaling, "lora_alpha": alpha, "embedding": True},
                       {"lora_A": a, "lora_B": b}, {})
    return out


def _used_keys(tensors: dict[str, Tensor], modules: set[str]) -> set[str]:
    from ..methods.peft_format import module_key

    suffixes = r"(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    return {k for k in tensors if (found := module_key(k, suffixes)) and found[0] in modules}


def _left_alone(tensors: dict[str, Tensor], where: str) -> tuple[list[str], set[str]]:
    """What the file holds that is not part of a layer's ΔW, LoRA's bias updates and conv kernels: a line for each
    kind, and the keys those lines name (left out of the general notice of unread tensors)."""
    from ..methods.peft_format import module_key

    biases = {k: k.rsplit(".lora_B", 1)[0] for k in tensors if ".lora_B." in k and k.endswith(".bias")}
    convs = {k: found[0] for k, t in tensors.items() if t.ndim > 2 and (found := module_key(k, r"lora_(?P<which>[AB])"))}
    notices = []
    if biases:
        layers = sorted(set(biases.values()))
        notices.append(f"{where}: lora_bias: the bias updates of {len(layers)} layers (e.g. {layers[0].removeprefix('base_model.model.')}) "
                       "are not part of ΔW and were not analysed")
    if convs:
        modules = sorted(set(convs.values()))
        notices.append(f"{where}: {len(modules)} convolution layers (e.g. {modules[0]}) hold 4-D kernels and were not analysed")
    return notices, set(biases) | set(convs)


def _as_dora(reading: Reading, factors: dict, tensors: dict[str, Tensor], context: ReadContext) -> None:
    """DoRA: ΔW = m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖_row − W0, dense, each layer from its W0 (one at a time)."""
    magnitudes = {m: p["m"] for m, p in group_by_module(tensors, r"lora_(?P<which>m)agnitude_vector").items()}
    missing = sorted(set(factors) - set(magnitudes))
    if missing:
        raise InputError(f"{context.where}: use_dora is set but module {missing[0]!r} has no lora_magnitude_vector")
    shapes = {m: tuple(r["shape"]) for m, r in reading.layers.items()}
    why = "DoRA's update rescales W0 + s·B·A by its learned magnitude, so it needs W0"

    def compute() -> dict[str, FactoredDelta]:
        weights = context.weights(list(factors), shapes, why)
        out = {}
        for module, (record, t) in factors.items():
            w0 = weights[module].double()
            adapted = w0 + float(record["scaling"]) * (t["lora_B"].double() @ t["lora_A"].double())
            factor = magnitudes[module].double() / torch.linalg.vector_norm(adapted, dim=1)
            out[module] = FactoredDelta.from_dense(factor[:, None] * adapted - w0)
        return out

    reading.compute = compute
    for record in reading.layers.values():
        record.update(form="dense", rank=min(record["shape"]))


def _minus_initial(reading: Reading, factors: dict, init: str, context: ReadContext) -> None:
    """PiSSA/OLoRA saved unconverted: ΔW = s·B·A − s·B0·A0, with s·B0·A0 computed again from W0."""
    shapes = {m: tuple(r["shape"]) for m, r in reading.layers.items()}
    why = f"an unconverted {init.upper() if init == 'olora' else 'PiSSA'} adapter's update is measured from the B0·A0 taken out of W0"

    def compute() -> dict[str, FactoredDelta]:
        weights = context.weights(list(factors), shapes, why)
        out = {}
        for module, (record, t) in factors.items():
            rank, scaling = int(record["rank"]), float(record["scaling"])
            start_left, start_core, start_right = _initial(weights[module].double(), rank, scaling, init)
            b, a = t["lora_B"].double(), t["lora_A"].double()
            core = torch.block_diag(torch.eye(rank, dtype=torch.float64) * scaling, -start_core)
            out[module] = FactoredDelta(torch.cat([b, start_left], 1), core, torch.cat([a, start_right], 0))
        return out

    reading.compute = compute
    for record in reading.layers.values():
        record["rank"] = 2 * record["rank"]


def _initial(w0: Tensor, rank: int, scaling: float, init: str) -> tuple[Tensor, Tensor, Tensor]:
    """s·B0·A0 as (left, core, right): W0's top-r SVD (PiSSA) or s·Q_r·R_r of its QR (OLoRA), as peft computes them."""
    if init == "pissa":
        u, s, vh = torch.linalg.svd(w0, full_matrices=False)
        return u[:, :rank], torch.diag(s[:rank]), vh[:rank]
    q, r = torch.linalg.qr(w0)
    return q[:, :rank], torch.eye(rank, dtype=w0.dtype) * scaling, r[:rank]
