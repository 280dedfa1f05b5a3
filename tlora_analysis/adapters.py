"""Injecting adapter layers into a model, finding them again, and counting parameters.

The layers themselves are one class per method in :mod:`tlora_analysis.methods`, in the
style of peft's ``tuners/{lora,vera}/layer.py``: each wraps a frozen ``nn.Linear``, adds
its update path (low-rank, never a d_out x d_in matrix, for every method but full
fine-tuning) and returns its update as a :class:`~tlora_analysis.factored.FactoredDelta`.
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
    "check_targets",
    "is_linear",
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


def untrained_head(model: nn.Module) -> str | None:
    """A one-line warning when a classification head will stay as it was made, or None.

    A head that no parameter of trains and that the checkpoint did not hold (its ``config.architectures`` names
    another class: a sentence-transformers encoder, a pretrained LM) is a random projection that stays random:
    training then sits at chance whatever the adapters learn. peft leaves the head frozen unless it is told
    ``task_type="SEQ_CLS"`` or ``modules_to_save``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    architectures = getattr(getattr(base, "config", None), "architectures", None) or []
    if type(base).__name__ in architectures:
        return None
    for name, module in model.named_modules():
        parameters = list(module.parameters())
        if name.rsplit(".", 1)[-1] in CLASSIFIER_HEADS and parameters and not any(p.requires_grad for p in parameters):
            return (f"the classification head {name!r} is neither trained nor in the checkpoint (it holds {', '.join(architectures) or 'no'} "
                    'architecture): it stays random and training sits at chance; with peft, give task_type="SEQ_CLS" or modules_to_save')
    return None


def is_linear(module: nn.Module) -> bool:
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


def check_targets(linear: dict[str, nn.Module] | list[str], targets: Sequence[str]) -> None:
    """Every target must name at least one linear layer: a typo (``qeury``) would otherwise leave its layers
    untrained without a word, while the run looks like what was asked for."""
    names = list(linear)
    unmatched = [t for t in targets if not any(_matches(name, [t]) for name in names)]
    if unmatched:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise InputError(f"target {unmatched[0]!r} matches no linear layer; linear layer names end with: "
                         f"{', '.join(suffixes) or '(none)'}; or use a preset: {', '.join(PRESETS)}")


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


def _out_in(layer: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of an nn.Linear, or of GPT-2's Conv1D, whose weight is stored d_in x d_out."""
    return tuple(layer.weight.shape) if isinstance(layer, nn.Linear) else tuple(layer.weight.shape[::-1])


def _chosen_layers(model: nn.Module, targets: list[str], rank: int) -> dict[str, nn.Module]:
    """The linear layers that ``targets`` name, each checked to hold a rank-``rank`` update."""
    if not targets:
        raise InputError("target_modules is empty: name at least one module, e.g. ['query', 'value']")
    linear = {name: m for name, m in model.named_modules() if is_linear(m) and name}
    chosen = {name: layer for name, layer in linear.items() if _matches(name, targets)}
    check_targets(linear, targets)
    for name, layer in chosen.items():
        out_features, in_features = _out_in(layer)
        if rank > min(in_features, out_features):
            raise InputError(f"rank {rank} exceeds min(in_features, out_features) = {min(in_features, out_features)} of layer "
                             f"{name!r} ({out_features}x{in_features})")
    return chosen


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
    if not isinstance(rank, int) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if adapter_layers(model):
        raise InputError("model already has adapter layers; inject into a fresh model")
    linear = _chosen_layers(model, [target_modules] if isinstance(target_modules, str) else list(target_modules), rank)
    own_options = {k: v for k, v in options.items() if k in METHOD_SPECS[method].options and v is not None}
    own_options.update(layer_class.shared_settings([_out_in(layer) for layer in linear.values()]))
    model.requires_grad_(False)
    for name in linear:
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
    """Parameters by role. peft's count hides buffers, so frozen random matrices (TLoRA's A and C,
    VeRA's shared pair, LoRA-FA's A) would vanish from it; here they have their own line, counted
    as stored (a shared pair once). W0's singular vectors (LoRA-XS) are frozen but not random."""

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
