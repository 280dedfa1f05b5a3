"""Adapter methods: one spec entry each in :mod:`.spec` and one registered layer class each.

Importing this package loads only the torch-free specs; the layer classes (and torch) load on
first use, so the command line lists methods and defaults without importing torch.
"""

from importlib import import_module

from . import peft_methods  # noqa: F401 - registers the methods trained through peft, after this toolkit's own (in .spec)
from .spec import METHOD_SPECS, TLORA_INITS, Choice, MethodSpec, adapter_methods, method_spec, register_spec

_LAZY = {
    "AdapterLayer": "base", "METHOD_CLASSES": "base", "method_class": "base", "register_method": "base", "tensor_sha256": "base",
    "LoRALinear": "lora", "LoRAFALinear": "lora_fa", "TLoRALinear": "tlora", "tlora_frozen_matrices": "tlora",
    "VeRALinear": "vera", "vera_frozen_matrices": "vera", "LoRAXSLinear": "loraxs", "loraxs_frozen_matrices": "loraxs",
    "FullLinear": "full",
}

__all__ = ["METHOD_SPECS", "TLORA_INITS", "Choice", "MethodSpec", "adapter_methods", "method_spec", "register_spec", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
