"""Adapter methods, one class each (see :mod:`.base` for what a method class says).

Adding a method means adding one module here with one registered class, importing it
below, and naming it in :data:`tlora_analysis.config.METHODS` (which the command line
reads without importing torch; a test checks that the two agree).
"""

from .base import METHOD_CLASSES, AdapterLayer, method_class, register_method, tensor_sha256
from .full import FullLinear
from .lora import LoRALinear
from .loraxs import LoRAXSLinear, loraxs_frozen_matrices
from .tlora import TLoRALinear, tlora_frozen_matrices
from .vera import VeRALinear, vera_frozen_matrices

__all__ = ["AdapterLayer", "LoRALinear", "TLoRALinear", "VeRALinear", "LoRAXSLinear", "FullLinear", "METHOD_CLASSES",
           "method_class", "register_method", "tensor_sha256", "tlora_frozen_matrices", "vera_frozen_matrices",
           "loraxs_frozen_matrices"]
