"""Every peft tuner type, read: one registry entry per type (:mod:`.spec`) and a reader per way of reading it.

:func:`read_state` turns one state of a peft adapter (its config and tensors, keys as in
``adapter_model.safetensors``) into a :class:`~.reading.Reading`: factored types from the file alone,
every other mergeable type through peft itself on the base model (:mod:`.engine`), and prompt-style or
input-dependent types refused in one line that says why. Whatever the file holds that no layer's ΔW
uses (``modules_to_save``, a bias) is named in a notice, never dropped silently.
"""

from __future__ import annotations

from .spec import PEFT_TYPES, PeftTypeSpec, initial_update_is_zero, method_of_config, peft_type_spec, type_label

__all__ = ["PEFT_TYPES", "PeftTypeSpec", "read_state", "initial_update_is_zero", "method_of_config", "peft_type_spec", "type_label",
           "READERS"]

READERS = {
    "lora": "lora:read_lora", "adalora": "factored_types:read_adalora", "vera": "factored_types:read_vera",
    "loha": "factored_types:read_loha", "lokr": "factored_types:read_lokr", "vblora": "factored_types:read_vblora",
    "randlora": "factored_types:read_randlora",
}
"""The factored readers by name (``module:function`` in this package), loaded on first use."""


def _reader(name: str):
    from importlib import import_module

    module, _, function = READERS[name].partition(":")
    return getattr(import_module(f".{module}", __name__), function)


def read_state(config: dict, tensors: dict, context):
    """One state of a peft adapter, read as its type's entry says (see the module docstring)."""
    from ..errors import InputError

    spec = peft_type_spec(config, context.where)
    if spec.kind in ("prompt", "unmergeable", "bias"):
        raise InputError(f"{context.where}: a {spec.label} adapter (peft_type {spec.peft_type}) has no ΔW to read: {spec.why}")
    if spec.kind == "factored":
        reading = _reader(spec.reader)(config, tensors, context)
    else:
        from .dense import read_dense

        reading = read_dense(config, tensors, context)
    reading.sizes = reading.sizes or {k: t.numel() for k, t in tensors.items()}
    reading.notices += _left_out(sorted(set(tensors) - reading.used - reading.named), config.get("modules_to_save"), context.where)
    return reading


def _left_out(left: list[str], modules_to_save, where: str) -> list[str]:
    """One line for the trained copies of whole modules (``modules_to_save``), one for any other tensor not read."""
    names = [m for m in modules_to_save if isinstance(m, str)] if isinstance(modules_to_save, list) else []
    owners = {k: m for k in left for m in names if f".{m}." in f".{k}"}
    others = [k for k in left if k not in owners]
    notices = [f"{where}: modules_to_save {', '.join(sorted(set(owners.values())))} ({len(owners)} tensors) not analysed: they are "
               "trained copies that replace whole modules, not updates of a layer's W0"] if owners else []
    if others:
        notices.append(f"{where}: {len(others)} tensors are no part of a layer's ΔW and were not analysed (e.g. {others[0]})")
    return notices
