"""What the toolkit knows about each method, in one torch-free entry per method.

A :class:`MethodSpec` holds everything outside the layer class itself: the name runs record,
the label and colour figures use, the default learning rate and why, what ``--alpha`` means
for the method, its own options, and its capabilities. ``config``, the figures' style, the
analyses, the CLI help and ``export`` ask this registry; none of them compares a method name.

The layer class is named by its import path and loaded on first use, so that the command
line can list methods, defaults and help without importing torch. Adding a method means one
:func:`register_spec` entry here and one registered class in :mod:`tlora_analysis.methods`
(a test checks the two agree, as peft checks its ``PeftType`` at import).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from ..errors import InputError

__all__ = ["MAX_ABS_SCALE", "MethodSpec", "Choice", "METHOD_SPECS", "register_spec", "method_spec", "adapter_methods", "FALLBACK_COLOUR",
           "TLORA_INITS", "SCALE_KINDS", "FROZEN_KINDS"]

MAX_ABS_SCALE = 1e12
"""Largest magnitude of a scale or any other number in a method's settings (lora_alpha, FourierFT's scaling, ...):
far beyond any real setting, and small enough that every update it scales stays computable (1e300 had ended in a
LinAlgError)."""

FALLBACK_COLOUR = "#444444"
"""The colour of a method no spec names (a source from elsewhere): dark grey, unlike every method's."""

SCALE_KINDS = ("learned", "fixed", "none")
"""A method's scalar scale per layer: learned (TLoRA's α), a fixed setting (LoRA's lora_alpha / r), or none."""
FROZEN_KINDS = ("random", "base", "none")
"""What a method's frozen factors are: random draws (from a seed), W0's singular vectors, or nothing frozen."""

TLORA_INITS = ("kaiming", "var-r", "var-d", "orthonormal")
"""How TLoRA's frozen A and C are drawn (see :func:`tlora_analysis.methods.tlora.tlora_frozen_matrices`)."""


@dataclass(frozen=True)
class Choice:
    """A method's own setting: a ``TrainConfig`` field that only this method reads."""

    default: str
    choices: tuple[str, ...]
    help: str


@dataclass(frozen=True)
class MethodSpec:
    """One method's entry: identity, defaults, options and capabilities."""

    name: str
    label: str
    colour: str
    default_lr: float
    lr_reason: str
    layer: str | None
    """``"package.module:Class"`` of the layer class; None adapts no layer (head-only)."""
    alpha_help: str = ""
    """What ``--alpha`` means for this method, with its default; empty where the method takes no alpha."""
    alpha_default: float | None = None
    """``--alpha``'s default; None means the method derives it (LoRA's lora_alpha = r)."""
    options: dict[str, Choice] = field(default_factory=dict)
    scale: str = "none"
    """One of :data:`SCALE_KINDS`."""
    frozen: str = "none"
    """One of :data:`FROZEN_KINDS`."""
    square_core: bool = False
    """True where the trained matrix is an r x r core between frozen factors (TLoRA's B, LoRA-XS's R)."""
    fixed_sides: tuple[str, ...] = ()
    """Sides of the factored ΔW = left·core·right whose span training cannot move: ``left`` (its column
    space) and/or ``right`` (its row space). Every update the method can learn lies in the matrices
    with those spans, which bounds its cosine with any other update (the reachable bound)."""
    exports: tuple[str, ...] = ()
    """What ``export`` writes: ``peft-lora``, ``peft-vera`` (both beside the native record) or ``dense``."""
    peft_type: str | None = None
    """The ``peft_type`` of peft adapter directories this method's class reads (``from_peft``)."""
    peft: dict | None = None
    """A method trained through peft itself: its adapter_config.json, where ``"{rank}"`` and ``"{alpha}"`` stand for
    ``--rank`` and ``--alpha`` (alpha defaults to the rank) and ``"{total_steps}"`` for the run's optimizer steps
    (:meth:`peft_settings`). ``{}`` is the generic ``peft`` method, whose config comes from ``--peft-config``."""
    budget: str = ""
    """For a peft method: why its settings are comparable to LoRA's at the same ``--rank``."""
    starts_at_zero: bool = False
    """Whether ΔW is zero before the first step (LoRA's B = 0, VeRA's λ_b = 0, full fine-tuning's W = W0): a series of
    checkpoints then begins at the zero update. peft-trained methods answer from their config instead."""

    def __post_init__(self) -> None:
        if self.scale not in SCALE_KINDS or self.frozen not in FROZEN_KINDS or not set(self.fixed_sides) <= {"left", "right"}:
            raise ValueError(f"method spec {self.name!r}: scale must be one of {SCALE_KINDS}, frozen one of {FROZEN_KINDS}, "
                             "fixed_sides a subset of ('left', 'right')")

    @property
    def adapts_layers(self) -> bool:
        return self.layer is not None or self.peft is not None

    @property
    def trains_through_peft(self) -> bool:
        return self.peft is not None

    def peft_settings(self, rank: int, alpha: float | None, total_steps: int) -> dict:
        """The peft config this method trains with, its placeholders filled (see :attr:`peft`)."""
        values = {"{rank}": rank, "{half_rank}": max(1, rank // 2), "{alpha}": rank if alpha is None else alpha,
                  "{half_alpha}": max(1, rank // 2) if alpha is None else alpha, "{total_steps}": total_steps}
        return {key: values.get(value, value) if isinstance(value, str) else value for key, value in (self.peft or {}).items()}

    @property
    def learns_scale(self) -> bool:
        return self.scale == "learned"

    def layer_class(self):
        """The registered layer class (imports torch on first use)."""
        if self.layer is None:
            raise InputError(f"method {self.name!r} adapts no layer")
        module, _, name = self.layer.partition(":")
        return getattr(importlib.import_module(module), name)


METHOD_SPECS: dict[str, MethodSpec] = {}


def register_spec(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHOD_SPECS:
        raise ValueError(f"method {spec.name!r} is registered twice")
    METHOD_SPECS[spec.name] = spec
    return spec


def method_spec(name: str, where: str = "method") -> MethodSpec:
    """The spec of ``name``; a name no spec has gets one line naming the known methods."""
    if name not in METHOD_SPECS:
        raise InputError(f"{where}: unknown method {name!r:.60}; known: {', '.join(METHOD_SPECS)}")
    return METHOD_SPECS[name]


def adapter_methods() -> tuple[str, ...]:
    """Methods whose layer class this toolkit injects (:func:`~tlora_analysis.adapters.inject_adapters`)."""
    return tuple(name for name, spec in METHOD_SPECS.items() if spec.layer is not None)


_PEFT_LORA = ("peft-lora",)

register_spec(MethodSpec(
    "lora", "LoRA", "#0072B2", 3e-3, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 1.000 (1e-3: 0.997)", "tlora_analysis.methods.lora:LoRALinear",
    alpha_help="lora_alpha (default r, i.e. scaling 1)", scale="fixed", exports=_PEFT_LORA, peft_type="LORA", starts_at_zero=True,
))
register_spec(MethodSpec(
    "lorafa", "LoRA-FA", "#44AA99", 1e-2, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 0.998 (3e-3: 0.967; 3e-2: 0.750)",
    "tlora_analysis.methods.lora_fa:LoRAFALinear", alpha_help="lora_alpha (default r, i.e. scaling 1)", scale="fixed", frozen="random",
    fixed_sides=("right",), exports=_PEFT_LORA, starts_at_zero=True,
))
register_spec(MethodSpec(
    "tlora", "TLoRA", "#D55E00", 3e-2,
    "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 0.818 (1e-2: 0.796; 1e-1: 0.615)",
    "tlora_analysis.methods.tlora:TLoRALinear", alpha_help="initial learned α (default 1)", alpha_default=1.0,
    options={"init": Choice("kaiming", TLORA_INITS, "TLoRA: how the frozen A and C are drawn: kaiming (variance 1/r and 1/d_in), "
                                                    "var-r (1/r both), var-d (1/d_out and 1/d_in) or orthonormal")},
    scale="learned", frozen="random", square_core=True, fixed_sides=("left", "right"), exports=_PEFT_LORA, starts_at_zero=True,
))
register_spec(MethodSpec(
    "vera", "VeRA", "#882255", 3e-2, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 0.993 (1e-2: 0.899; 1e-1: 0.748)", "tlora_analysis.methods.vera:VeRALinear",
    alpha_help="initial λ_d (peft's d_initial, default 0.1)", alpha_default=0.1, frozen="random", exports=("peft-vera",),
    fixed_sides=("right",),  # λ_b rescales B's rows, so only A's row space is fixed: the bound of its linear superset {M·A}
    peft_type="VERA", starts_at_zero=True,
))
register_spec(MethodSpec(
    "loraxs", "LoRA-XS", "#999933", 1e-2, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 0.883 (3e-3: 0.747; 3e-2: 0.712)",
    "tlora_analysis.methods.loraxs:LoRAXSLinear", alpha_help="lora_alpha; scaling lora_alpha / r (default 16, the authors' GLUE setting)", alpha_default=16.0,
    scale="fixed", frozen="base", square_core=True, fixed_sides=("left", "right"), exports=_PEFT_LORA,
))
register_spec(MethodSpec(
    "full", "full fine-tuning", "#332288", 3e-4, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 1.000, tied with 1e-3 (the smaller rate is taken; 1e-4: 0.991)", "tlora_analysis.methods.full:FullLinear",
    exports=("dense",), starts_at_zero=True,
))
register_spec(MethodSpec("head", "head only", "#7F7F7F", 0.3, "the learning-rate sweep (studies/lr_sweep.toml, figures/lr_sweep/results.json): best mean validation accuracy over seeds 0 and 1 at 3 epochs, 0.669 (1: 0.667; 1e-1: 0.653); a linear probe "
                                                              "on cached features takes large rates", None))
