"""Injecting adapter layers into a model, finding them again, and counting parameters.

The layers themselves are one class per method in :mod:`tlora_analysis.methods`, in the
style of peft's ``tuners/{lora,vera}/layer.py``: each wraps a frozen ``nn.Linear``, adds
its low-rank path without ever forming a d_out x d_in matrix, and returns its update as a
:class:`~tlora_analysis.factored.FactoredDelta`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from torch import nn

from .errors import InputError
from .methods import (
    METHOD_SPECS,
    AdapterLayer,
    LoRALinear,
    TLoRALinear,
    adapter_methods,
    method_class,
    tensor_sha256,
    tlora_frozen_matrices,
)

__all__ = [
    "AdapterLayer",
    "LoRALinear",
    "TLoRALinear",
    "inject_adapters",
    "adapter_layers",
    "count_parameters",
    "ParameterCounts",
    "layer_seed",
    "PRESETS",
    "CLASSIFIER_HEADS",
    "as_linear",
    "tlora_frozen_matrices",
    "tensor_sha256",
]


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed derived from the run seed and the layer's qualified name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


PRESETS = ("attention", "mlp", "all-linear")
"""Target presets. ``all-linear`` has peft's meaning: every linear layer but the output head."""
CLASSIFIER_HEADS = ("classifier", "score")
"""Classification heads (BERT/RoBERTa, decoders): trained beside the adapters and stored in snapshots."""
OUTPUT_HEADS = (*CLASSIFIER_HEADS, "lm_head", "qa_outputs")
ATTENTION_PARTS = {"attention", "attn", "self_attn", "self_attention", "crossattention"}


def _is_linear(module: nn.Module) -> bool:
    """nn.Linear, or GPT-2's Conv1D (a linear layer whose weight is stored transposed)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _preset_kind(name: str) -> str | None:
    """attention, mlp or None (an output head or a layer outside the transformer blocks that no preset but all-linear takes)."""
    parts = name.split(".")
    if parts[0] in OUTPUT_HEADS or parts[-1] in OUTPUT_HEADS:
        return None
    if ATTENTION_PARTS & set(parts):
        return "attention"
    return "mlp" if any(p.isdigit() for p in parts) else "other"


def _matches(name: str, targets: Sequence[str]) -> bool:
    kind = _preset_kind(name)
    for t in targets:
        if t == "all-linear" and kind is not None or t == kind:
            return True
        if t not in PRESETS and (name == t or name.endswith("." + t)):
            return True
    return False


def as_linear(module: nn.Module) -> nn.Linear:
    """A frozen ``nn.Linear`` computing what ``module`` computes: the module itself, or for GPT-2's
    Conv1D (y = x W + b with W stored in x out, peft's ``fan_in_fan_out``) a Linear holding Wᵀ."""
    if isinstance(module, nn.Linear):
        return module
    weight = module.weight
    linear = nn.Linear(weight.shape[0], weight.shape[1], bias=module.bias is not None, device=weight.device, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach().T.contiguous(), requires_grad=False)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=False)
    return linear


def inject_adapters(
    model: nn.Module,
    method: str,
    rank: int,
    target_modules: Sequence[str],
    *,
    alpha: float | None = None,
    seed: int = 0,
    modules_to_save: Sequence[str] = (),
    dropout: float = 0.0,
    **options,
) -> nn.Module:
    """Replace every linear layer whose qualified name ends with a target by an adapter layer.

    Targets are name suffixes (``q_proj``, ``query``, ``attn.c_attn``) or a preset: ``attention``
    (layers inside an attention block), ``mlp`` (the other layers of the transformer blocks)
    or ``all-linear`` (every linear layer but the output head, as in peft). GPT-2's
    ``Conv1D`` counts as linear: it is replaced by an ``nn.Linear`` holding its weight
    transposed, so every ΔW has the (d_out, d_in) orientation of ``nn.Linear.weight``.

    All base weights are frozen; parameters inside a module named in ``modules_to_save`` (e.g. ``["classifier"]``) stay trainable, as in peft.
    ``alpha`` means what the method's spec says (LoRA's ``lora_alpha``, TLoRA's initial α, ...;
    ``tlora-analysis train --help`` lists them). Each layer gets its own seed from :func:`layer_seed`.
    ``options`` are method-specific settings (TLoRA's ``init``); a method ignores the ones its
    spec does not list.
    Returns the same model, modified in place. A bad argument raises :class:`InputError`
    (a ``ValueError``) before the model is touched.
    """
    if method not in adapter_methods():
        raise InputError(f"method must be one of {', '.join(adapter_methods())}; got {method!r}")
    layer_class = method_class(method)
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if not target_modules:
        raise InputError("target_modules is empty: name at least one module, e.g. ['query', 'value']")
    if not isinstance(rank, int) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if adapter_layers(model):
        raise InputError("model already has adapter layers; inject into a fresh model")

    linear = {name: m for name, m in model.named_modules() if _is_linear(m) and name}
    chosen = [name for name in linear if _matches(name, target_modules)]
    if not chosen:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise InputError(
            f"target_modules {list(target_modules)} matched no nn.Linear layer; "
            f"linear layer names end with: {', '.join(suffixes) or '(none)'}"
        )
    for name in chosen:
        layer = linear[name]
        out_features, in_features = layer.weight.shape if isinstance(layer, nn.Linear) else layer.weight.shape[::-1]
        limit = min(in_features, out_features)
        if rank > limit:
            raise InputError(
                f"rank {rank} exceeds min(in_features, out_features) = {limit} of layer {name!r} "
                f"({out_features}x{in_features})"
            )

    own_options = {k: v for k, v in options.items() if k in METHOD_SPECS[method].options and v is not None}
    shapes = [tuple(linear[n].weight.shape) if isinstance(linear[n], nn.Linear) else tuple(linear[n].weight.shape[::-1]) for n in chosen]
    own_options.update(layer_class.shared_settings(shapes))
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer_seed_ = layer_seed(seed, name) if layer_class.seed_scope == "layer" else seed
        setattr(parent, child, layer_class(as_linear(linear[name]), rank, alpha, dropout=dropout, seed=layer_seed_, **own_options))
    for name, param in model.named_parameters():
        if any(f".{m}." in f".{name}" for m in modules_to_save):
            param.requires_grad_(True)
    return model


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """``{qualified_name: adapter layer}`` in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by role. peft's count hides buffers, so TLoRA's frozen random matrices
    would vanish from it; here they have their own line."""

    adapter_trainable: int
    other_trainable: int
    frozen_random: int
    base_frozen: int

    @property
    def trainable(self) -> int:
        return self.adapter_trainable + self.other_trainable

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "trainable": self.trainable}


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count trainable adapter, other trainable (e.g. a classifier head), frozen random and frozen base numbers."""
    adapters = adapter_layers(model)
    adapter_params = {id(p) for layer in adapters.values() for n, p in layer.named_parameters() if not n.startswith("base.")}
    adapter_trainable = other_trainable = base_frozen = 0
    for p in _unique(model.parameters()):
        if id(p) in adapter_params and p.requires_grad:
            adapter_trainable += p.numel()
        elif p.requires_grad:
            other_trainable += p.numel()
        else:
            base_frozen += p.numel()
    frozen_random = 0
    for method in {layer.method for layer in adapters.values()}:
        records = {n: layer.settings() for n, layer in adapters.items() if layer.method == method}
        if METHOD_SPECS[method].frozen == "random":
            frozen_random += method_class(method).update_counts(records)[1]
    return ParameterCounts(adapter_trainable, other_trainable, frozen_random, base_frozen)


def _unique(params: Iterable[nn.Parameter]) -> Iterable[nn.Parameter]:
    seen: set[int] = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p
