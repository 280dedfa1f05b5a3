"""Every peft type read through peft itself (:class:`~.engine.PeftEngine`): dense ΔW, one layer at a time, with the base."""

from __future__ import annotations

from torch import Tensor

from ..factored import FactoredDelta
from .context import ReadContext
from .engine import delta_shape
from .reading import Reading, layer_record
from .spec import PEFT_TYPES

__all__ = ["read_dense"]


def read_dense(config: dict, tensors: dict[str, Tensor], context: ReadContext) -> Reading:
    """A state of any mergeable peft type: ΔW of each layer = the layer merged alone minus W0, as an exact SVD."""
    spec = PEFT_TYPES.get(str(config.get("peft_type", "LORA")).upper())
    why = f"peft computes a {spec.label if spec else config.get('peft_type')} update on the base model" + (f" ({spec.why})" if spec and spec.why else "")
    engine = context.engine(config, why, tensors)
    shapes = {name: delta_shape(layer) for name, layer in engine.layers.items()}
    notices = [f"{context.where}: adapter_config.json fields this peft does not know were ignored, as peft ignores them: "
               f"{', '.join(engine.dropped)}"] if engine.dropped else []
    reading = Reading({name: layer_record(shape, min(shape), form="dense") for name, shape in shapes.items()},
                      lambda: {name: FactoredDelta.from_dense(delta) for name, delta in engine.deltas(tensors).items()},
                      used=set(engine.expected), notices=notices, frozen=engine.frozen_keys)
    return reading

