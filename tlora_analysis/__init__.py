"""tlora-analysis: train LoRA and TLoRA adapters, record their updates, and analyse how they change a model.

Data flows one way: ``factored`` → ``adapters`` → ``store``/``recording`` → ``training``
→ ``analysis`` → ``figures`` → ``report`` → ``cli``.
"""

from importlib import import_module

from .adapters import (
    LoRALinear,
    ParameterCounts,
    TLoRALinear,
    adapter_layers,
    count_parameters,
    inject_adapters,
)
from .factored import FactoredDelta, cosine_similarity, inner

__version__ = "0.1.0"

# Loaded on first use: they import transformers, pandas and scipy, which `import tlora_analysis` should not pay for.
_LAZY = {
    "load_run": "store",
    "Run": "store",
    "DeltaRecorder": "recording",
    "DeltaRecorderCallback": "recording",
    "inspect": "checkpoints",
    "open_updates": "sources",
}

__all__ = [
    "FactoredDelta",
    "inner",
    "cosine_similarity",
    "LoRALinear",
    "TLoRALinear",
    "inject_adapters",
    "adapter_layers",
    "count_parameters",
    "ParameterCounts",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tlora_analysis' has no attribute {name!r}")
