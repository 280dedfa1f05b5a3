"""tlora-analysis: train LoRA and TLoRA adapters, record their updates, and analyse how they change a model.

Data flows one way: ``factored`` → ``adapters`` → ``store``/``recording`` → ``training``
→ ``analysis`` → ``figures`` → ``report`` → ``cli``.
"""

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
]
