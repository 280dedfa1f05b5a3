"""What this toolkit knows about each of peft's tuner types, in one torch-free entry per type.

peft's ~45 ``peft_type``s fall into four kinds, and each entry says which:

- ``factored``: the update is read from the adapter file alone, as left · core · right
  (:mod:`tlora_analysis.peft_types.readers` names the reader); some variants need the base model
  (DoRA's magnitude, PiSSA's and OLoRA's initial factors), and say so.
- ``dense``: peft itself computes each layer's update on the base model, one layer at a time
  (:mod:`tlora_analysis.peft_types.engine`); exact by construction, and it needs ``--base``.
- ``prompt``: prompt-style adapters (prompt, prefix and p-tuning, ...) add tokens or key/value
  prefixes; they change no weight, so there is no ΔW to read.
- ``unmergeable``: the update depends on the input or the task (X-LoRA's gating, Poly's routing,
  ShadowPEFT), or peft cannot merge it (Lily), so no single ΔW exists.
- ``bias``: the adapter trains bias vectors only (BEFT), so every weight's ΔW is 0.

Each ``why`` was checked (``tests/test_peft_types.py``): a type said to depend on W0 gives another ΔW
from the same adapter on another base; the others give the same one.

A test builds every type that the installed peft can build and checks each reading against
peft's own ``merge_and_unload()`` minus W0.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..methods.spec import MAX_ABS_SCALE

__all__ = ["PeftTypeSpec", "PEFT_TYPES", "peft_type_spec", "KINDS", "initial_update_is_zero", "method_of_config", "type_label",
           "peft_types_table"]

KINDS = ("factored", "dense", "prompt", "unmergeable", "bias")


@dataclass(frozen=True)
class PeftTypeSpec:
    """One peft type: how its update is read, and whether its default init leaves ΔW = 0."""

    peft_type: str
    label: str
    kind: str
    reader: str | None = None
    """``factored`` types: the reader's name in :data:`tlora_analysis.peft_types.readers.READERS`."""
    init_field: str | None = None
    """The config field whose ``True`` means ΔW = 0 at init (peft's identity init), so a trajectory's
    epoch 0 is known; None where no init gives a zero update (FourierFT's random spectrum, VB-LoRA's bank)."""
    why: str = ""
    """For ``prompt`` and ``unmergeable``: why there is no ΔW; for ``dense``: why it is not low rank."""
    streams: bool = False
    """``dense`` types: peft builds it on a skeleton of the base (no weights) exactly as on the base itself, so a base
    too large to load is read one layer at a time (checked in tests); the others derive parts of themselves from W0."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS or (self.kind == "factored") != (self.reader is not None):
            raise ValueError(f"peft type {self.peft_type}: kind must be one of {KINDS}, with a reader exactly when factored")


PEFT_TYPES: dict[str, PeftTypeSpec] = {}


def _register(*specs: PeftTypeSpec) -> None:
    for spec in specs:
        if spec.peft_type in PEFT_TYPES:
            raise ValueError(f"peft type {spec.peft_type} is registered twice")
        PEFT_TYPES[spec.peft_type] = spec


_PROMPT = "a prompt-style adapter adds learned tokens or key/value prefixes and changes no weight, so it has no ΔW"
_W0 = "its update depends on W0 (it rescales, rotates or replaces parts of the base weight)"
_FULL = "its update is not low rank"
_PEFT = "low rank and independent of W0, but built by peft from shared or block-wise parts; no factored reader yet"

_register(
    PeftTypeSpec("LORA", "LoRA", "factored", "lora", "init_lora_weights"),
    PeftTypeSpec("ADALORA", "AdaLoRA", "factored", "adalora", "init_lora_weights"),
    PeftTypeSpec("VERA", "VeRA", "factored", "vera", "init_weights"),
    PeftTypeSpec("LOHA", "LoHa", "factored", "loha", "init_weights"),
    PeftTypeSpec("LOKR", "LoKr", "factored", "lokr", "init_weights"),
    PeftTypeSpec("VBLORA", "VB-LoRA", "factored", "vblora"),
    PeftTypeSpec("RANDLORA", "RandLoRA", "factored", "randlora", "init_weights"),
    PeftTypeSpec("IA3", "IA³", "dense", init_field="init_ia3_weights", why=_W0, streams=True),
    PeftTypeSpec("OFT", "OFT", "dense", init_field="init_weights", why=_W0),
    PeftTypeSpec("BOFT", "BOFT", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("HRA", "HRA", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("ROAD", "RoAd", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("HIRA", "HiRA", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("OSF", "OSF", "dense", init_field="init_weights", why=_W0),
    PeftTypeSpec("DELORA", "DeLoRA", "dense", init_field="init_weights", why=_PEFT, streams=True),
    PeftTypeSpec("MISS", "MiSS", "dense", init_field="init_weights", why=_PEFT, streams=True),
    PeftTypeSpec("GLORA", "GLoRA", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("ADAMSS", "AdaMSS", "dense", init_field="init_weights", why=_PEFT),
    PeftTypeSpec("FROD", "FRoD", "dense", init_field="init_weights", why=_W0),
    PeftTypeSpec("PSOFT", "PSOFT", "dense", init_field="init_weights", why=_W0),
    PeftTypeSpec("DEFT", "DEFT", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("FOURIERFT", "FourierFT", "dense", init_field="init_weights", why=_FULL, streams=True),
    PeftTypeSpec("C3A", "C3A", "dense", why=_FULL, streams=True),
    PeftTypeSpec("SHIRA", "SHiRA", "dense", init_field="init_weights", why=_FULL),
    PeftTypeSpec("WAVEFT", "WaveFT", "dense", init_field="init_weights", why=_FULL, streams=True),
    PeftTypeSpec("GRALORA", "GraLoRA", "dense", init_field="init_weights", why=_PEFT, streams=True),
    PeftTypeSpec("PVERA", "PVeRA", "dense", init_field="init_weights", why=_PEFT),
    PeftTypeSpec("UNILORA", "Uni-LoRA", "dense", why=_PEFT),
    PeftTypeSpec("TINYLORA", "TinyLoRA", "dense", init_field="init_weights", why=_PEFT),
    PeftTypeSpec("PEANUT", "PEANuT", "dense", init_field="init_weights", why=_W0, streams=True),
    PeftTypeSpec("SUPERTUNING", "SuperTuning", "dense", init_field="init_weights", why=_PEFT, streams=True),
    PeftTypeSpec("BEFT", "BEFT", "bias", why="it trains bias vectors only, so every weight's ΔW is 0"),
    PeftTypeSpec("TRAINABLE_TOKENS", "trainable tokens", "dense", why=_W0, streams=True),
    PeftTypeSpec("LN_TUNING", "LayerNorm tuning", "unmergeable",
                 why="it trains whole copies of the target modules and swaps them in, so peft merges no ΔW into W0"),
    PeftTypeSpec("XLORA", "X-LoRA", "unmergeable", why="its gating mixes LoRA experts per token, so its update depends on the input"),
    PeftTypeSpec("POLY", "Poly", "unmergeable", why="its router mixes LoRA modules per task, so its update depends on the task id"),
    PeftTypeSpec("SHADOW", "ShadowPEFT", "unmergeable", why="its adaptation depends on the input, so it has no static ΔW"),
    PeftTypeSpec("LILY", "Lily", "unmergeable", why="peft cannot merge it into the base weights"),
    *(PeftTypeSpec(t, label, "prompt", why=_PROMPT) for t, label in (
        ("PROMPT_TUNING", "prompt tuning"), ("MULTITASK_PROMPT_TUNING", "multitask prompt tuning"), ("P_TUNING", "p-tuning"),
        ("PREFIX_TUNING", "prefix tuning"), ("ADAPTION_PROMPT", "adaption prompt"), ("CPT", "CPT"), ("CARTRIDGE", "Cartridges"))),
)


def peft_type_spec(config: dict, where: str):
    """The entry for an adapter_config.json's ``peft_type``; an unknown one gets one line naming the known kinds."""
    from ..errors import InputError

    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() not in PEFT_TYPES:
        raise InputError(f"{where}: peft_type {peft_type!r:.40} is not one this tlora-analysis knows "
                         f"({len(PEFT_TYPES)} types, those of peft 0.21); upgrade tlora-analysis, or read the model merged, "
                         "as a fine-tune against --base")
    for key, value in _numbers(config):
        if abs(value) > MAX_ABS_SCALE:
            raise InputError(f"{where}: {key} = {value:.3g} is beyond {MAX_ABS_SCALE:g} in magnitude, which no adapter setting "
                             "reaches (every number of a config is bounded, as lora_alpha is)")
    return PEFT_TYPES[peft_type.upper()]


def _numbers(config: dict, prefix: str = ""):
    """(key path, value) of every number in a config: its fields, their patterns (rank_pattern, alpha_pattern) and lists;
    seeds and PRNG keys (VeRA's projection_prng_key, FourierFT's random_loc_seed) are names, not magnitudes, and left out."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if any(word in str(key).lower() for word in ("seed", "prng")):
            continue
        if isinstance(value, dict):
            yield from _numbers(value, f"{name}.")
        elif isinstance(value, (list, tuple)):
            yield from ((f"{name}[{i}]", v) for i, v in enumerate(value) if isinstance(v, (int, float)) and not isinstance(v, bool))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield name, value


LORA_INITS_WITH_ZERO_UPDATE = (True, "gaussian", "eva", "pissa", "olora", "mica", "corda", "loftq", "lora_ga")
"""LoRA inits that leave the adapted model equal to the base model at step 0 (PiSSA-like inits move
W0 by exactly what B0·A0 adds); "orthogonal" and False do not."""


def initial_update_is_zero(config: dict) -> bool:
    """Whether the adapter's update before training was ΔW = 0, by its type's init setting."""
    spec = PEFT_TYPES.get(str(config.get("peft_type", "LORA")).upper())
    if spec is None or spec.init_field is None:
        return False
    value = config.get(spec.init_field, True)
    if spec.peft_type in ("LORA", "ADALORA"):
        value = value if isinstance(value, bool) else str(value).split("_niter_")[0].lower()
        return value in LORA_INITS_WITH_ZERO_UPDATE
    return value is True


def method_of_config(config: dict) -> str:
    """The method name a peft adapter is analysed under: a LoRA variant by what distinguishes it
    (DoRA, then PiSSA/OLoRA init, then rsLoRA), any other type by its peft_type in lower case."""
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        return peft_type.lower()
    init = str(config.get("init_lora_weights", True)).lower().split("_niter_")[0]
    if config.get("use_dora"):
        return "dora"
    if init in ("pissa", "olora"):
        return init
    return "rslora" if config.get("use_rslora") else "lora"


_VARIANT_LABELS = {"dora": "DoRA", "pissa": "PiSSA", "olora": "OLoRA", "rslora": "rsLoRA"}


def type_label(method: str) -> str | None:
    """A readable name for a method named after a peft type or LoRA variant (None for other names)."""
    if method in _VARIANT_LABELS:
        return _VARIANT_LABELS[method]
    spec = PEFT_TYPES.get(method.upper())
    return spec.label if spec is not None else None


_HOW = {"factored": "factored, from the file alone", "dense": "dense, computed by peft on the base (needs `--base`)",
        "prompt": "refused: no ΔW", "unmergeable": "refused: no single ΔW", "bias": "refused: biases only"}
_VARIANTS = ("LoRA variants needing the base (`--base`): DoRA (dense: m ⊙ (W0 + s·B·A) / ‖·‖ − W0), PiSSA and OLoRA saved "
             "unconverted (factored, rank 2r: s·(B·A − B0·A0) with B0·A0 recomputed from W0); refused unconverted: pissa_niter_N, "
             "CorDA, LoRA-GA, LoftQ (their start cannot be recomputed)")


def peft_types_table() -> str:
    """The docs' table of every peft type: how its update is read, and why where it is refused or dense."""
    rows = ["| peft_type | method | how its ΔW is read | ΔW = 0 at init (epoch 0 known) | a base over 2 GiB (float32) read layer by layer | why |",
            "|---|---|---|---|---|---|"]
    for spec in sorted(PEFT_TYPES.values(), key=lambda s: (KINDS.index(s.kind), s.peft_type)):
        zero = f"with `{spec.init_field}`" if spec.init_field else "no"
        streams = "—" if spec.kind != "dense" else "yes" if spec.streams else "no: built from W0"
        rows.append(f"| `{spec.peft_type}` | {spec.label} | {_HOW[spec.kind]} | {zero} | {streams} | {spec.why} |")
    return "\n".join(rows) + "\n\n" + _VARIANTS + "\n"
