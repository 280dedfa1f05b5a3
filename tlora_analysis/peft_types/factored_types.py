"""The peft types other than LoRA whose update is read from the adapter file alone, factored.

- AdaLoRA: ΔW = s / r · P · diag(Λ) · Q with s = lora_alpha (r where it is 0) and r the stored rank.
- LoHa: ΔW = s · (W1a·W1b) ⊙ (W2a·W2b), rank ≤ r², factored through :func:`~tlora_analysis.factored.hadamard`.
- LoKr: ΔW = s · W1 ⊗ W2 (either factor possibly W·W'), factored through :func:`~tlora_analysis.factored.kronecker`.
- VB-LoRA: A and B are top-k mixtures of one shared vector bank; ΔW = B·A.
- RandLoRA: ΔW = s · B_s · A_s over a shared random basis scaled by the trained λ and γ (full rank by design).
- VeRA: the method class's own reader (:meth:`~tlora_analysis.methods.VeRALinear.from_peft`).

Each follows peft's ``get_delta_weight`` and is tested against peft's merge.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import InputError
from ..factored import FactoredDelta, hadamard, kronecker
from ..methods.lora import peft_scalings
from ..methods.peft_format import check_rank, group_by_module
from .context import ReadContext, lookup_by_suffix
from .reading import Reading, layer_record

__all__ = ["read_adalora", "read_loha", "read_lokr", "read_vblora", "read_randlora", "read_vera", "loha_delta", "lokr_delta"]


def _reading(deltas: dict[str, FactoredDelta], scales: dict[str, float], trainable: dict, used: set[str], form="factored") -> Reading:
    return Reading({m: layer_record(d.shape, d.rank, form) for m, d in deltas.items()}, lambda: deltas, scales=scales,
                   trainable=trainable, used=used)


def _keys_of(tensors: dict, modules, names: tuple[str, ...]) -> set[str]:
    from ..methods.peft_format import module_key

    pattern = "(?P<which>" + "|".join(names) + ")"
    return {k for k in tensors if (found := module_key(k, pattern)) and found[0] in modules}


def _grouped(tensors: dict, names: tuple[str, ...], where: str, what: str) -> dict[str, dict[str, Tensor]]:
    groups = group_by_module(tensors, "(?P<which>" + "|".join(names) + ")")
    if not groups:
        raise InputError(f"{where}: no {what} tensors found (keys look like {next(iter(tensors), 'nothing')!r})")
    return groups


def read_adalora(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """AdaLoRA (peft's SVDLinear): ΔW = B · (A ⊙ E) · s / (r + 1e-5), r the rank as stored (as peft reloads it)."""
    where, names = context.where, ("lora_A", "lora_B", "lora_E")
    deltas, scales, trainable = {}, {}, {}
    alpha = config.get("lora_alpha", 0)
    for module, t in _grouped(tensors, names, where, "AdaLoRA lora_A/lora_B/lora_E").items():
        if set(t) != set(names) or t["lora_A"].ndim != 2 or t["lora_B"].ndim != 2 or t["lora_E"].shape != (t["lora_A"].shape[0], 1) \
                or t["lora_B"].shape[1] != t["lora_A"].shape[0]:
            raise InputError(f"{where}: module {module!r} needs lora_A (r, d_in), lora_B (d_out, r) and lora_E (r, 1)")
        rank = t["lora_A"].shape[0]
        check_rank(rank, (t["lora_B"].shape[0], t["lora_A"].shape[1]), where, module)
        scale = (float(alpha) if isinstance(alpha, (int, float)) and alpha > 0 else float(rank)) / (rank + 1e-5)
        deltas[module] = FactoredDelta.diagonal(t["lora_B"].double(), t["lora_E"].double()[:, 0] * scale, t["lora_A"].double())
        scales[module] = scale
        trainable[module] = {"A": t["lora_A"], "B": t["lora_B"], "E": t["lora_E"][:, 0]}
    return _reading(deltas, scales, trainable, _keys_of(tensors, deltas, names))


MAX_LAYER_ELEMENTS = 1 << 31
"""Largest d_out x d_in an update may imply (Llama-3-405B's largest matrix, its embedding, has 2.1e9): a file whose
factors imply more (a 8 MB LoKr implying 8 TB) is refused before anything is allocated."""


def check_layer_size(shape: tuple[int, int], where: str) -> None:
    """One rule for the size a file's factors imply: refused in one line before allocation, never an out-of-memory."""
    if shape[0] * shape[1] > MAX_LAYER_ELEMENTS:
        raise InputError(f"{where}: the factors imply a {shape[0]:,} x {shape[1]:,} update, more than the "
                         f"{MAX_LAYER_ELEMENTS:,} entries any model's layer has")


def loha_delta(w1a: Tensor, w1b: Tensor, w2a: Tensor, w2b: Tensor, scale: float, where: str = "LoHa") -> FactoredDelta:
    """LoHa's (LyCORIS's Hadamard) ΔW = scale · (w1a·w1b) ⊙ (w2a·w2b). Factored with rank r1·r2 while that is below
    min(d_out, d_in); above it (a 64 MB file of r = 256 asked for 64 GB), the two d_out x d_in products are formed and
    multiplied, so memory follows the layer's shape."""
    shape = (w1a.shape[0], w1b.shape[1])
    check_layer_size(shape, where)
    if w1a.shape[1] * w2a.shape[1] > min(shape):
        return FactoredDelta.from_dense((w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double()) * scale)
    return hadamard(FactoredDelta.diagonal(w1a.double(), scale, w1b.double()), FactoredDelta.diagonal(w2a.double(), 1.0, w2b.double()))


def lokr_delta(w1: Tensor | tuple[Tensor, Tensor], w2: Tensor | tuple[Tensor, Tensor], scale: float,
               where: str = "LoKr") -> FactoredDelta:
    """LoKr's (LyCORIS's Kronecker) ΔW = scale · w1 ⊗ w2, each factor dense or a product of two, factored. A dense
    factor is factored by its own SVD (rank ≤ min of its sides), so the Kronecker core is at most min(d_out, d_in)²,
    never the square of a factor's width (an 8 MB file had asked for 8 TB)."""
    def factor(w) -> FactoredDelta:
        return FactoredDelta.diagonal(w[0].double(), 1.0, w[1].double()) if isinstance(w, tuple) else FactoredDelta.from_dense(w)

    sides = [w if not isinstance(w, tuple) else torch.empty(w[0].shape[0], w[1].shape[1], device="meta") for w in (w1, w2)]
    check_layer_size((sides[0].shape[0] * sides[1].shape[0], sides[0].shape[1] * sides[1].shape[1]), where)
    first = factor(w1)
    return kronecker(FactoredDelta(first.left, first.core * scale, first.right), factor(w2))


def read_loha(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """LoHa: ΔW = (alpha / r) · (W1a·W1b) ⊙ (W2a·W2b), r and alpha with peft's rank/alpha patterns."""
    where, names = context.where, ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    groups = _grouped(tensors, names, where, "LoHa hada_w*")
    if any("hada_t1" in t or "hada_t2" in t or t["hada_w1_b"].ndim != 2 for t in groups.values()):
        raise InputError(f"{where}: LoHa on convolution layers (hada_t1/hada_t2 or 4-D factors) is not read; its ΔW is a 4-D kernel")
    sizes = {}
    for module, t in groups.items():
        if set(t) != set(names[:4]) or len({t["hada_w1_a"].shape, t["hada_w2_a"].shape}) != 1 \
                or len({t["hada_w1_b"].shape, t["hada_w2_b"].shape}) != 1 or t["hada_w1_a"].shape[1] != t["hada_w1_b"].shape[0]:
            raise InputError(f"{where}: module {module!r} needs hada_w1_a, hada_w2_a (d_out, r) and hada_w1_b, hada_w2_b (r, d_in)")
        sizes[module] = (t["hada_w1_a"].shape[0], t["hada_w1_b"].shape[1], t["hada_w1_a"].shape[1])
        check_rank(sizes[module][2], sizes[module][:2], where, module)
    deltas, scales = {}, {}
    for module, (_, scale, _) in peft_scalings(config, sizes, where, alpha_key="alpha").items():
        t = groups[module]
        deltas[module], scales[module] = loha_delta(t["hada_w1_a"], t["hada_w1_b"], t["hada_w2_a"], t["hada_w2_b"], scale,
                                                    f"{where}: module {module!r}"), scale
    trainable = {m: {k.removeprefix("hada_"): v for k, v in t.items()} for m, t in groups.items()}
    return _reading(deltas, scales, trainable, _keys_of(tensors, deltas, names))


def read_lokr(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """LoKr: ΔW = (alpha / r) · W1 ⊗ W2, with W1 = lokr_w1 or lokr_w1_a·lokr_w1_b and W2 likewise."""
    where, names = context.where, ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
    groups = _grouped(tensors, names, where, "LoKr lokr_w*")
    factors, sizes = {}, {}
    for module, t in groups.items():
        w1, w2 = _kron_factor(t, "lokr_w1", module, where), _kron_factor(t, "lokr_w2", module, where)
        rows = [w[0].shape[0] if isinstance(w, tuple) else w.shape[0] for w in (w1, w2)]
        cols = [w[1].shape[1] if isinstance(w, tuple) else w.shape[1] for w in (w1, w2)]
        rank = next((w[0].shape[1] for w in (w2, w1) if isinstance(w, tuple)), None)
        factors[module] = w1, w2
        sizes[module] = (rows[0] * rows[1], cols[0] * cols[1], rank)
    ranks = {m: s[2] for m, s in sizes.items()}
    stated = peft_scalings(config, {m: (o, i, ranks[m] or _config_rank(config, m, where)) for m, (o, i, _) in sizes.items()}, where,
                           alpha_key="alpha")
    deltas = {m: lokr_delta(*factors[m], scale, f"{where}: module {m!r}") for m, (_, scale, _) in stated.items()}
    trainable = {m: {k.removeprefix("lokr_"): v for k, v in t.items()} for m, t in groups.items()}
    return _reading(deltas, {m: s for m, (_, s, _) in stated.items()}, trainable, _keys_of(tensors, deltas, names))


def _kron_factor(t: dict[str, Tensor], name: str, module: str, where: str):
    if name in t and t[name].ndim == 2 and not ({f"{name}_a", f"{name}_b"} & set(t)):
        return t[name]
    if {f"{name}_a", f"{name}_b"} <= set(t) and name not in t and t[f"{name}_a"].ndim == 2 and t[f"{name}_b"].ndim == 2 \
            and t[f"{name}_a"].shape[1] == t[f"{name}_b"].shape[0] and "lokr_t2" not in t:
        return t[f"{name}_a"], t[f"{name}_b"]
    raise InputError(f"{where}: module {module!r} needs {name} or {name}_a·{name}_b as 2-D matrices (convolution LoKr, with lokr_t2 "
                     "or 4-D factors, is not read)")


def _config_rank(config: dict, module: str, where: str) -> int:
    from ..methods.peft_format import PatternTable
    from ..tensors import MAX_DIM

    return PatternTable(config, "rank_pattern", where, integer=True).value(module, config.get("r"), 1, MAX_DIM)


def read_vblora(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """VB-LoRA: A and B are softmax-weighted sums of the top-k of a shared vector bank; ΔW = B·A."""
    where, bank = context.where, tensors.get("base_model.vblora_vector_bank")
    if any(k.endswith(("_topk_indices", "_topk_weights")) for k in tensors):
        from .dense import read_dense  # saved with save_only_topk_weights: peft rebuilds the logits

        return read_dense(config, tensors, context)
    topk = config.get("topk", 2)
    if bank is None or bank.ndim != 2 or isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= bank.shape[0]:
        raise InputError(f"{where}: a VB-LoRA adapter needs base_model.vblora_vector_bank (num_vectors, length) and a topk from 1 "
                         "to num_vectors")
    deltas, trainable = {}, {}
    for module, t in _grouped(tensors, ("vblora_logits_A", "vblora_logits_B"), where, "vblora_logits").items():
        logits_a, logits_b = t.get("vblora_logits_A"), t.get("vblora_logits_B")
        if logits_a is None or logits_b is None or logits_a.ndim != 3 or logits_b.ndim != 3 or logits_a.shape[2] != bank.shape[0] \
                or logits_b.shape[2] != bank.shape[0] or logits_a.shape[0] != logits_b.shape[1]:
            raise InputError(f"{where}: module {module!r} needs vblora_logits_A (r, in_tiles, num_vectors) and "
                             "vblora_logits_B (out_tiles, r, num_vectors)")
        a = _bank_mix(logits_a, bank, topk).reshape(logits_a.shape[0], -1)
        b = _bank_mix(logits_b, bank, topk).transpose(1, 2).reshape(-1, logits_b.shape[1])
        check_rank(a.shape[0], (b.shape[0], a.shape[1]), where, module)
        delta = FactoredDelta.diagonal(b, 1.0, a)
        deltas[module] = delta.transpose() if config.get("fan_in_fan_out") else delta
        trainable[module] = {"A": a, "B": b}
    used = _keys_of(tensors, deltas, ("vblora_logits_A", "vblora_logits_B")) | {"base_model.vblora_vector_bank"}
    return _reading(deltas, {}, trainable, used)


def _bank_mix(logits: Tensor, bank: Tensor, topk: int) -> Tensor:
    top, indices = logits.double().topk(topk, dim=-1)
    return (torch.softmax(top, dim=-1).unsqueeze(-1) * bank.double()[indices]).sum(-2)


def read_randlora(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """RandLoRA: ΔW = (randlora_alpha / r) · B_s · A_s, with A_s = λ ⊙ A ⊙ γ over ⌈min(d_out, d_in) / r⌉ bases."""
    where, names = context.where, ("randlora_lambda", "randlora_gamma", "randlora_A", "randlora_B")
    shared = tensors.get("base_model.randlora_A"), tensors.get("base_model.randlora_B")
    rank, alpha = config.get("r"), config.get("randlora_alpha")
    if None in shared or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1 or isinstance(alpha, bool) \
            or not isinstance(alpha, (int, float)):
        from .dense import read_dense  # saved without its projections: peft draws them again from projection_prng_key

        return read_dense(config, tensors, context)
    deltas, trainable = {}, {}
    for module, t in _grouped(tensors, names[:2], where, "randlora_lambda/randlora_gamma").items():
        first, second = _randlora_bases(t, *shared, rank, module, context)
        deltas[module] = FactoredDelta.diagonal(second, alpha / rank, first)
        if config.get("fan_in_fan_out"):
            deltas[module] = deltas[module].transpose()
        trainable[module] = {"lambda": t["randlora_lambda"], "gamma": t["randlora_gamma"]}
    projections = _keys_of(tensors, deltas, ("randlora_A", "randlora_B")) | {"base_model.randlora_A", "base_model.randlora_B"}
    reading = _reading(deltas, {m: alpha / rank for m in deltas}, trainable, _keys_of(tensors, deltas, names) | projections)
    reading.frozen = projections - _keys_of(tensors, deltas, ("randlora_A", "randlora_B"))  # each layer's copy is the shared pair's
    reading.sizes = {k: t.numel() for k, t in tensors.items() if k not in projections - reading.frozen}
    return reading


def _randlora_bases(t: dict[str, Tensor], shared_a: Tensor, shared_b: Tensor, rank: int, module: str, context: ReadContext):
    """peft's ``get_scaled_bases``: (first, second) with ΔW ∝ second · first, first (K x d_in), second (d_out x K)."""
    where, lam, gamma = context.where, t.get("randlora_lambda"), t.get("randlora_gamma")
    if lam is None or gamma is None or lam.ndim != 2 or gamma.ndim != 2 or shared_a.ndim != 3 or shared_b.ndim != 3:
        raise InputError(f"{where}: module {module!r} needs randlora_lambda (r, bases) and randlora_gamma (bases, min(d_out, d_in))")
    bases, min_dim = gamma.shape
    if lam.shape != (rank, bases) or bases != math.ceil(min_dim / rank) or shared_a.shape[2] < min_dim or shared_b.shape[1] < bases:
        raise InputError(f"{where}: module {module!r}: randlora_lambda {tuple(lam.shape)} and randlora_gamma {tuple(gamma.shape)} do "
                         f"not fit r = {rank} and the shared bases {tuple(shared_a.shape)}, {tuple(shared_b.shape)}")
    d_out, d_in = (min_dim, min_dim) if shared_b.shape[0] == min_dim else _layer_shape(context, module, "RandLoRA's layers differ in shape")
    a = (lam.double()[:, :, None] * shared_a.double()[:, :bases, :min_dim] * gamma.double()[None]).flatten(end_dim=1)
    b = shared_b.double()[: max(d_out, d_in), :bases, :].flatten(start_dim=1)
    return (a, b) if d_in == min_dim else (b.T, a.T)


def _layer_shape(context: ReadContext, module: str, why: str) -> tuple[int, int]:
    """A layer's (d_out, d_in) from the base model's safetensors headers, where the adapter file does not give it."""
    shapes = context.shapes()
    if shapes is None:
        context.require_base(f"{why} and the file does not give each layer's shape")
    shape = lookup_by_suffix(shapes or {}, module)
    if shape is None:
        raise InputError(f"{context.where}: the base model {context.base} has no 2-D weight for module {module!r} "
                         "(is it the adapter's base model?)")
    return shape


def read_vera(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """VeRA, by the method class's own reader; the base's headers give each layer's shape where the file does not."""
    from ..methods.vera import VeRALinear

    layers = VeRALinear.from_peft(config, tensors, context.where, context.shapes())
    deltas = {m: VeRALinear.delta_from(record, t, frozen) for m, (record, t, frozen) in layers.items()}
    trainable = {m: VeRALinear.trained_from(t) for m, (_, t, _) in layers.items()}
    shared = {"base_model.vera_A", "base_model.vera_B"}
    reading = _reading(deltas, {}, trainable, _keys_of(tensors, deltas, ("vera_lambda_b", "vera_lambda_d")) | shared)
    record = next(iter(layers.values()))[0]  # the shared pair, stored or drawn again from its seed, counted once
    (d_out, d_in), rank = record["projection_shape"], record["rank"]
    reading.frozen = shared
    reading.sizes = {**{k: t.numel() for k, t in tensors.items()}, "base_model.vera_A": rank * d_in, "base_model.vera_B": d_out * rank}
    return reading
