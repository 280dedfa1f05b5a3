"""tlora-analysis: train LoRA and TLoRA adapters, record their updates, and analyse how they change a model.

Data flows one way: ``factored`` → ``adapters`` → ``store``/``recording`` → ``training``
→ ``analysis`` → ``figures`` → ``report`` → ``cli``.

Every public name is imported on first use, so that ``import tlora_analysis`` (and the
command line's ``--help``) does not pay for torch, transformers, pandas and scipy.
"""

from importlib import import_module

__version__ = "0.3.1"

_LAZY = {
    "FactoredDelta": "factored",
    "inner": "factored",
    "cosine_similarity": "factored",
    "LoRALinear": "adapters",
    "TLoRALinear": "adapters",
    "inject_adapters": "adapters",
    "adapter_layers": "adapters",
    "count_parameters": "adapters",
    "ParameterCounts": "adapters",
    "TrainConfig": "config",
    "load_run": "store",
    "Run": "store",
    "DeltaRecorder": "recording",
    "DeltaRecorderCallback": "integrations.trainer",
    "inspect_checkpoint": "checkpoints",
    "open_updates": "sources",
    "run_study": "study",
    "load_study": "study",
    "Study": "study",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'tlora_analysis' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
