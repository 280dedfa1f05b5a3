"""Single-file adapters from the diffusion world: kohya-ss LoRA and LyCORIS (LoHa, LoKr, full).

Each module's tensors sit under one flat name (``lora_unet_down_blocks_0_attentions_1_..._to_q``) with
an ``alpha`` beside them. Updates are read as the usual loaders (sd-scripts, ComfyUI, diffusers) apply them:

- kohya LoRA: ΔW = (alpha / r) · up · down, r = down's rows;
- LyCORIS LoHa: ΔW = (alpha / r) · (w1a·w1b) ⊙ (w2a·w2b), r = w1b's rows;
- LyCORIS LoKr: ΔW = (alpha / r) · w1 ⊗ w2, r the rank of the decomposed factor (scale 1 where neither is);
- LyCORIS full: ΔW = ``diff``, dense.

A missing ``alpha`` means alpha = r. Convolution kernels (4-D factors) are named in a notice and left out;
``dora_scale`` (weight-decomposed variants) rescales W0 + ΔW and needs the base weights, so such a file
is refused in one line. Layer names become dotted at their numbers (``..._blocks.0.attentions.1...``)
so that each update has a layer index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ..errors import InputError
from ..factored import FactoredDelta
from ..methods.peft_format import check_rank
from ..peft_types.factored_types import loha_delta, lokr_delta
from ..peft_types.reading import Reading, layer_record
from ..tensors import check_values, read_tensors
from .formats import Sniff, SourceFormat, register_format
from .states import ReadingState

__all__ = ["open_single_file", "KINDS"]

KINDS = {"lora_down": "kohya LoRA", "hada_w1_a": "LyCORIS LoHa", "lokr_w1": "LyCORIS LoKr", "lokr_w1_a": "LyCORIS LoKr",
         "diff": "LyCORIS full"}
"""The tensor suffix that marks each kind of module (its first factor)."""
METHODS = {"kohya LoRA": "lora", "LyCORIS LoHa": "loha", "LyCORIS LoKr": "lokr", "LyCORIS full": "full"}
READS = {"kohya LoRA": {"lora_down", "lora_up", "alpha"}, "LyCORIS LoHa": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
         "LyCORIS LoKr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}, "LyCORIS full": {"diff"}}
"""The parts of a module each kind's ΔW is made of; any other part (LyCORIS full's bias update diff_b) is named as not read."""


FLAT_PREFIX = re.compile(r"^(lycoris|lora)_")
"""What kohya and LyCORIS put before a module's path (kohya's ``unet_``/``te1_`` stay: they say which network)."""


def readable_name(flat: str) -> str:
    """``lora_unet_down_blocks_0_attn1_to_q`` -> ``unet_down_blocks.0.attn1_to_q``: dotted at whole numbers, prefix dropped."""
    return re.sub(r"_(\d+)_", r".\1.", FLAT_PREFIX.sub("", flat))


def base_module_names(flat_names: list[str], module_names: Iterable[str], where: str) -> dict[str, str]:
    """Each flat name as the base model's module: ``lycoris_bert_encoder_layer_0_attention_self_query`` ->
    ``bert.encoder.layer.0.attention.self.query``, the names a peft adapter of the same base has, so that W0 is
    found and ``compare`` pairs layers.

    A flat name is the module path with dots written as underscores, which cannot be undone alone (``self_attn``
    holds one); the base's names can. ``module_names`` are the base's weight names with every leading part also
    dropped (a bare encoder's ``encoder.layer.0...`` beside a classifier's ``bert.encoder.layer.0...``); the
    longest that ends the flat name wins, and what stands before it (a classifier's ``bert``, which a bare
    encoder's file lacks) is kept as its first part. A name no base module ends is refused, as are two files' modules
    that would become one layer: one line each, never a layer silently dropped."""
    by_flat: dict[str, set[str]] = {}
    for name in module_names:
        by_flat.setdefault(name.replace(".", "_"), set()).add(name)
    resolved: dict[str, str] = {}
    for flat in flat_names:
        path = FLAT_PREFIX.sub("", flat)
        tokens = path.split("_")
        found = next((i for i in range(len(tokens)) if "_".join(tokens[i:]) in by_flat), None)
        if found is None:
            raise InputError(f"{where}: module {flat} is no module of the base model (its names end none of the base's "
                             "weights); is --base the model this file was trained on?")
        names = sorted(by_flat["_".join(tokens[found:])])
        if len(names) > 1:
            raise InputError(f"{where}: module {flat} could be the base's {names[0]} or {names[1]}")
        resolved[flat] = ".".join(["_".join(tokens[:found])] * bool(found) + names)
    twice = _first_shared(resolved)
    if twice:
        raise InputError(f"{where}: modules {twice[0]} and {twice[1]} are both the base's {resolved[twice[0]]}; "
                         "one layer cannot have two updates")
    return resolved


def _first_shared(resolved: dict[str, str]) -> tuple[str, str] | None:
    seen: dict[str, str] = {}
    for flat, name in resolved.items():
        if name in seen:
            return seen[name], flat
        seen[name] = flat
    return None


def _modules(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """module -> part -> (its key, its tensor), in one pass over the keys: reading stays linear in the module count."""
    modules: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in tensors.items():
        name, _, part = key.partition(".")
        modules.setdefault(name, {})[part.removesuffix(".weight")] = (key, tensor)
    return modules


def _scale(parts: dict[str, torch.Tensor], rank: int, where: str) -> float:
    alpha = parts.get("alpha")
    if alpha is None:
        return 1.0
    if alpha.numel() != 1:
        raise InputError(f"{where}: 'alpha' should hold one number, got shape {tuple(alpha.shape)}")
    value = float(alpha.reshape(()))
    return (value if value != 0 else rank) / rank


CHAINS = {"kohya LoRA": [("lora_up", "lora_down")], "LyCORIS LoHa": [("hada_w1_a", "hada_w1_b"), ("hada_w2_a", "hada_w2_b")],
          "LyCORIS LoKr": [("lokr_w1_a", "lokr_w1_b"), ("lokr_w2_a", "lokr_w2_b")], "LyCORIS full": []}
"""Pairs of a kind's factors whose product is taken: the first's columns must be the second's rows."""


def _check_factors(kind: str, parts: dict[str, torch.Tensor], where: str) -> None:
    """Every factor a matrix with at least one row and column, and every product's factors fit: a malformed file is
    one line naming the module, never a traceback or a 0-row layer read as an update."""
    for part in READS[kind] - {"alpha"}:
        tensor = parts.get(part)
        if tensor is not None and (tensor.ndim != 2 or min(tensor.shape) < 1):
            raise InputError(f"{where}: {part} should be a matrix with at least one row and column, got shape {tuple(tensor.shape)}")
    for first, second in CHAINS[kind]:
        if first in parts and second in parts and parts[first].shape[1] != parts[second].shape[0]:
            raise InputError(f"{where}: {first} {tuple(parts[first].shape)} and {second} {tuple(parts[second].shape)} do not chain")
    if kind == "LyCORIS LoHa" and {"hada_w1_a", "hada_w2_a", "hada_w1_b", "hada_w2_b"} <= set(parts) and (
            parts["hada_w1_a"].shape[0] != parts["hada_w2_a"].shape[0] or parts["hada_w1_b"].shape[1] != parts["hada_w2_b"].shape[1]):
        raise InputError(f"{where}: the two Hadamard factors imply different layer shapes")


def _delta(kind: str, parts: dict[str, torch.Tensor], where: str) -> tuple[FactoredDelta, float]:
    """A module's ΔW and the scale its factors' product is multiplied by (alpha / r; 1 where the kind has none)."""
    _check_factors(kind, parts, where)
    if kind == "kohya LoRA":
        down, up = parts["lora_down"], parts.get("lora_up")
        if up is None or up.shape[1] != down.shape[0]:
            raise InputError(f"{where}: lora_up should be (d_out, r) for lora_down {tuple(down.shape)}")
        check_rank(down.shape[0], (up.shape[0], down.shape[1]), where, "")
        scale = _scale(parts, down.shape[0], where)
        return FactoredDelta.diagonal(up.double(), scale, down.double()), scale
    if kind == "LyCORIS LoHa":
        names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        if not set(names) <= set(parts) or "hada_t1" in parts:
            raise InputError(f"{where}: a LoHa module needs {', '.join(names)} (Tucker-decomposed convolutions are not read)")
        w1a, w1b, w2a, w2b = (parts[n] for n in names)
        check_rank(w1b.shape[0], (w1a.shape[0], w1b.shape[1]), where, "")
        scale = _scale(parts, w1b.shape[0], where)
        return loha_delta(w1a, w1b, w2a, w2b, scale, where), scale
    if kind == "LyCORIS LoKr":
        w1 = parts.get("lokr_w1", (parts.get("lokr_w1_a"), parts.get("lokr_w1_b")))
        w2 = parts.get("lokr_w2", (parts.get("lokr_w2_a"), parts.get("lokr_w2_b")))
        if any(isinstance(w, tuple) and None in w for w in (w1, w2)) or "lokr_t2" in parts:
            raise InputError(f"{where}: a LoKr module needs lokr_w1 (or w1_a·w1_b) and lokr_w2 (or w2_a·w2_b), Tucker factors aside")
        decomposed = next((w for w in (w1, w2) if isinstance(w, tuple)), None)
        scale = _scale(parts, decomposed[1].shape[0], where) if decomposed is not None else 1.0
        return lokr_delta(w1, w2, scale, where), scale
    return FactoredDelta.from_dense(parts["diff"]), 1.0


def _kind(parts: dict[str, torch.Tensor]) -> str | None:
    return next((kind for suffix, kind in KINDS.items() if suffix in parts), None)


def read_single_file(tensors: dict[str, torch.Tensor], where: str, module_names: Iterable[str] | None = None) -> tuple[str, Reading]:
    """(method, reading) of a kohya or LyCORIS file; every module must be one kind. With ``module_names`` (the base
    model's, :func:`base_module_names`) layers take the base's names; without, readable forms of the flat ones."""
    deltas, scales, notices, kinds, used = {}, {}, [], set(), set()
    convolutions = []
    modules = _modules(tensors)
    names = (base_module_names([n for n, keyed in modules.items() if _kind({p: t for p, (_, t) in keyed.items()})], module_names, where)
             if module_names is not None else {})
    for name, keyed in modules.items():
        parts = {part: tensor for part, (_, tensor) in keyed.items()}
        kind = _kind(parts)
        if kind is None:
            continue
        if "dora_scale" in parts:
            raise InputError(f"{where}: module {name} has dora_scale: a weight-decomposed (DoRA-style) update rescales W0 + ΔW, "
                             "which needs the base model's weights; this format is not read")
        if any(t.ndim > 2 for k, t in parts.items() if k != "alpha"):
            convolutions.append(name)
            continue
        for key, tensor in parts.items():
            check_values(tensor, f"{where}: tensor {name}.{key}")
        layer = names.get(name) or readable_name(name)
        deltas[layer], scales[layer] = _delta(kind, parts, f"{where}: module {name}")
        kinds.add(kind)
        used.update(key for part, (key, _) in keyed.items() if part in READS[kind])
    if len(kinds) != 1:
        raise InputError(f"{where}: holds {'no 2-D' if not kinds else 'several kinds of'} modules ({', '.join(sorted(kinds)) or 'none'}); "
                         "expected one kohya LoRA or LyCORIS kind")
    if convolutions:
        notices.append(f"{where}: {len(convolutions)} convolution modules (e.g. {convolutions[0]}) hold 4-D kernels and were not analysed")
    skipped = set(convolutions)
    left = sorted(set(tensors) - used - {k for k in tensors if k.split(".", 1)[0] in skipped})
    biases = [k for k in left if k.endswith((".diff_b", ".bias", ".bias_indices", ".bias_values"))]
    if biases:
        notices.append(f"{where}: the bias updates of {len(biases)} modules (e.g. {biases[0]}) were not analysed: a bias is no part "
                       "of a layer's weight update ΔW")
    left = [k for k in left if k not in biases]
    if left:
        notices.append(f"{where}: {len(left)} tensors belong to no module's ΔW and were not analysed (e.g. {left[0]})")
    kind = kinds.pop()
    form = "dense" if kind == "LyCORIS full" else "factored"
    reading = Reading({m: layer_record(d.shape, d.rank, form) for m, d in deltas.items()}, lambda: deltas, scales=scales, used=used,
                      notices=notices, sizes={k: tensors[k].numel() for k in used if not k.endswith(".alpha")})
    return METHODS[kind], reading


def open_single_file(path: Path, base: str | None = None) -> ReadingState:
    """A kohya or LyCORIS file; with ``base``, its layers named as the base's modules (their W0 then found by name)."""
    module_names = None
    if base is not None:
        from ..base_weights import weight_shapes
        from ..models import resolve_model

        module_names = weight_shapes(resolve_model(base))
        if module_names is None:
            raise InputError(f"{base}: no safetensors to read module names from; a kohya or LyCORIS file's flat names are "
                             "resolved against a local base model folder")
    method, reading = read_single_file(read_tensors(path), str(path), module_names)
    return ReadingState(path, method, reading, {"format": "kohya/LyCORIS", **({"model": base} if base else {})})


def _is_single_file(sniff: Sniff) -> bool:
    return any(key.split(".", 1)[-1].removesuffix(".weight") in KINDS for key in sniff.keys)


register_format(SourceFormat("kohya or LyCORIS file", "a .safetensors of `lora_down`/`lora_up`, `hada_w*`, `lokr_w*` or `diff` per module, with alpha",
                             "file", _is_single_file, open_single_file, order=40))
