"""Which layers of a live model can be recorded, and how: the recorder asks here, never a method name.

Three kinds of model are read, in this order:

- :class:`OwnAdapters`: this toolkit's adapter layers (``inject_adapters``); a snapshot holds each
  layer's trainable tensors, and the frozen ones are rebuilt from seeds.
- :class:`PeftLayers`: a peft model of any type with a ΔW; a snapshot is the adapter's state as peft
  saves it (``get_peft_model_state_dict``), so a snapshot plus run.json's ``peft_config`` is a peft adapter.
- :class:`FullyTuned`: a model whose linear layers train whole; W0 is kept at the start and a snapshot
  holds ΔW = W − W0 of each, read back as the ``full`` method's.

A model with none of them is refused with one line that names what trains in it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from functools import cached_property

import torch
from torch import nn

from .adapters import OUTPUT_HEADS, adapter_layers, count_parameters, is_linear
from .errors import InputError
from .factored import FactoredDelta

__all__ = ["live_updates", "OwnAdapters", "PeftLayers", "FullyTuned", "is_peft_model"]


def is_peft_model(model: nn.Module) -> bool:
    """A peft model: it holds peft tuner layers (``get_peft_model``, or a model peft injected adapters into)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


class OwnAdapters:
    """This toolkit's adapter layers."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.layers = model, adapter_layers(model)
        methods = {layer.method for layer in self.layers.values()}
        if len(methods) > 1:
            raise ValueError(f"model mixes adapter methods {sorted(methods)}; record one method per run")
        self.method = methods.pop()
        self.rank = next(iter(self.layers.values())).rank
        self.header = {}

    def records(self) -> dict[str, dict]:
        return {name: layer.record() for name, layer in self.layers.items()}

    def counts(self) -> dict[str, int]:
        return count_parameters(self.model).as_dict()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{key}": t for name, layer in self.layers.items() for key, t in layer.trainable_tensors().items()}

    def owned(self) -> set[int]:
        """ids of the parameters a snapshot already holds (everything else trainable is stored as ``trainable.*``)."""
        return {id(p) for layer in self.layers.values() for p in layer.parameters()}

    def groups(self) -> list[list[torch.Tensor]]:
        return [[p for n, p in layer.named_parameters() if not n.startswith("base.") and p.requires_grad] for layer in self.layers.values()]

    def deltas(self) -> dict[str, FactoredDelta]:
        return {name: layer.delta() for name, layer in self.layers.items()}

    def scales(self) -> dict[str, float]:
        return {name: layer.scale() for name, layer in self.layers.items()}

    def histograms(self) -> Iterator[tuple[str, torch.Tensor]]:
        for name, layer in self.layers.items():
            for key, tensor in layer.trainable_tensors().items():
                if tensor.ndim:
                    yield f"core/{key}/{name}", tensor


class PeftLayers:
    """A peft model's adapter (the active one), of any peft type that has a ΔW."""

    def __init__(self, model: nn.Module) -> None:
        from .peft_types import method_of_config, peft_type_spec
        from .peft_types.engine import tuner_layers

        self.model = model
        self.adapter = _active_adapter(model)
        config = _peft_config(model, self.adapter)
        spec = peft_type_spec(config, "the peft model")
        if spec.kind in ("prompt", "unmergeable", "bias"):
            raise InputError(f"the peft model's adapter is {spec.label} (peft_type {spec.peft_type}), which has no ΔW to record: {spec.why}")
        self.config, self.method, self.spec = config, method_of_config(config), spec
        self.layers = tuner_layers(model)
        if not self.layers:
            raise InputError(f"the peft model's {spec.label} adapter wraps no layer with a 2-D weight; nothing to record")
        rank = config.get("r")
        self.rank = rank if isinstance(rank, int) and not isinstance(rank, bool) else 0
        self.header = {"peft_config": config, "model": config.get("base_model_name_or_path")}
        self._reading_failed: str | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The adapter's state as peft saves it, but whole: AdaLoRA's, once its ranks are allocated, is cut to the
        kept ranks on saving, which changes its update (peft reloads it with another scale); a snapshot keeps the
        update the model trains with."""
        from peft import get_peft_model_state_dict

        config = self.model.peft_config[self.adapter]
        pattern = getattr(config, "rank_pattern", None)
        if self.spec.peft_type == "ADALORA":
            config.rank_pattern = None
        try:
            state = get_peft_model_state_dict(self.model, adapter_name=self.adapter)
        finally:
            if self.spec.peft_type == "ADALORA":
                config.rank_pattern = pattern
        return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

        return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(self.model, adapter_name=self.adapter).items()}

    def records(self) -> dict[str, dict]:
        """Each layer's shape and rank: from the factored reading where the type allows, else min(d_out, d_in), dense."""
        reading = self._reading()
        if reading is not None:
            return {name: {k: v for k, v in record.items() if k in ("shape", "rank", "form")} for name, record in reading.layers.items()}
        return {name: {"shape": list(shape), "rank": min(shape), "form": "dense"} for name, shape in
                ((name, _shape(layer)) for name, layer in self.layers.items())}

    def counts(self) -> dict[str, int]:
        """Trainable adapter numbers, other trainable (modules_to_save), the frozen matrices the adapter saves (random
        projections, a shared basis: counted once; not a constant such as AdaLoRA's rank count) and the frozen base,
        all counted from the model."""
        adapter_ids = {id(p) for layer in self.layers.values() for n, p in layer.named_parameters() if "base_layer" not in n}
        params = {id(p): p for p in self.model.parameters()}
        adapter = sum(p.numel() for i, p in params.items() if p.requires_grad and i in adapter_ids)
        other = sum(p.numel() for i, p in params.items() if p.requires_grad and i not in adapter_ids)
        saved = set(self.tensors())
        frozen = {id(t): t for n, t in (*self.model.named_parameters(), *self.model.named_buffers())
                  if not t.requires_grad and t.is_floating_point() and t.ndim >= 2 and n.replace(f".{self.adapter}", "") in saved}
        base = sum(p.numel() for i, p in params.items() if not p.requires_grad and i not in frozen and i not in adapter_ids)
        frozen_random = sum(t.numel() for t in frozen.values())
        return {"adapter_trainable": adapter, "other_trainable": other, "frozen_random": frozen_random, "base_frozen": base,
                "trainable": adapter + other}

    def owned(self) -> set[int]:
        """The tuner layers' parameters and peft's trained copies (``modules_to_save``): what the adapter state holds."""
        from peft.utils import ModulesToSaveWrapper

        holders = [*self.layers.values(), *(m for m in self.model.modules() if isinstance(m, ModulesToSaveWrapper))]
        return {id(p) for module in holders for p in module.parameters()}

    def groups(self) -> list[list[torch.Tensor]]:
        return [[p for n, p in layer.named_parameters() if p.requires_grad and "base_layer" not in n] for layer in self.layers.values()]

    def deltas(self) -> dict[str, FactoredDelta] | None:
        """The factored deltas of the live state, or None where the type needs the base model (geometry is then left to analysis)."""
        reading = self._reading()
        return None if reading is None else reading.deltas()

    def scales(self) -> dict[str, float]:
        reading = self._reading()
        return {} if reading is None else dict(reading.scales)

    def histograms(self) -> Iterator[tuple[str, torch.Tensor]]:
        reading = self._reading()
        for name, matrices in ({} if reading is None else reading.trainable).items():
            for key, tensor in matrices.items():
                if tensor.ndim:
                    yield f"core/{key}/{name}", tensor

    def _reading(self):
        from .peft_types import read_state
        from .peft_types.context import ReadContext

        if self._reading_failed is not None or self.spec.kind != "factored":
            return None
        try:
            return read_state(self.config, self.tensors(), ReadContext("the live peft model"))
        except InputError as err:  # DoRA, PiSSA: their ΔW needs W0, which analysis reads from the base model
            self._reading_failed = str(err)
            return None


class FullyTuned:
    """A model whose linear layers (output heads aside) train whole: ΔW = W − W0, W0 copied at the start."""

    method, rank = "full", 0

    def __init__(self, model: nn.Module, layers: dict[str, nn.Module]) -> None:
        self.model, self.layers = model, layers
        self.header = {}

    @cached_property
    def start(self) -> dict[str, torch.Tensor]:
        """W0 of every layer, copied on first use: the recorder asks for it when it opens the run, before training."""
        return {name: _weight(module).detach().to("cpu", torch.float32, copy=True) for name, module in self.layers.items()}

    def records(self) -> dict[str, dict]:
        return {name: {"method": "full", "shape": list(w.shape), "rank": min(w.shape), "seed": 0} for name, w in self.start.items()}

    def counts(self) -> dict[str, int]:
        trainable = sum(m.weight.numel() for m in self.layers.values())
        other = sum(p.numel() for p in self.model.parameters() if p.requires_grad) - trainable
        frozen = sum(p.numel() for p in self.model.parameters() if not p.requires_grad)
        return {"adapter_trainable": trainable, "other_trainable": other, "frozen_random": 0, "base_frozen": frozen,
                "trainable": trainable + other}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.full_delta": _weight(m).detach().to("cpu", torch.float32) - self.start[name] for name, m in self.layers.items()}

    def owned(self) -> set[int]:
        return {id(m.weight) for m in self.layers.values()}

    def groups(self) -> list[list[torch.Tensor]]:
        return [[m.weight] for m in self.layers.values()]

    def deltas(self) -> dict[str, FactoredDelta]:
        return {name: FactoredDelta.from_dense(t) for name, t in ((k.removesuffix(".full_delta"), v) for k, v in self.tensors().items())}

    def scales(self) -> dict[str, float]:
        return {name: math.nan for name in self.layers}

    def histograms(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(())


def live_updates(model: nn.Module, head_only: bool = False):
    """How to record ``model``: nothing but its head for a head-only run (``head_only``: None), else its adapters
    (ours or peft's) or its wholly trained linear layers; a model with none of them is refused in one line."""
    if head_only:
        return None
    if adapter_layers(model):
        return OwnAdapters(model)
    if is_peft_model(model):
        return PeftLayers(model)
    tuned = {name: m for name, m in model.named_modules() if is_linear(m) and _weight(m).requires_grad
             and not (set(name.split(".")) & set(OUTPUT_HEADS))}
    if tuned:
        return FullyTuned(model, tuned)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    raise InputError(f"the model has no adapter layers (tlora-analysis's or peft's) and no trainable linear layer besides its head "
                     f"({count:,} trainable numbers, in: {', '.join(sorted(trainable)) or 'nothing'}); there is no update to record")


def _weight(module: nn.Module) -> torch.Tensor:
    """A linear layer's weight in nn.Linear's (d_out, d_in) layout (GPT-2's Conv1D stores it transposed)."""
    return module.weight if isinstance(module, nn.Linear) else module.weight.T


def _shape(layer) -> tuple[int, int]:
    from .peft_types.engine import delta_shape

    return delta_shape(layer)


def _active_adapter(model: nn.Module) -> str:
    active = getattr(model, "active_adapter", "default")
    active = active[0] if isinstance(active, (list, tuple)) else active
    if isinstance(getattr(model, "active_adapters", None), list) and len(model.active_adapters) > 1:
        raise InputError(f"the peft model has several active adapters ({', '.join(model.active_adapters)}); record one adapter per run")
    return active


def _peft_config(model: nn.Module, adapter: str) -> dict:
    """The adapter's peft config as plain JSON (sets become sorted lists)."""
    configs = getattr(model, "peft_config", {})
    if adapter not in configs:
        raise InputError(f"the peft model has no config for its adapter {adapter!r}")
    config = configs[adapter].to_dict()
    return json.loads(json.dumps(config, default=lambda v: sorted(v) if isinstance(v, (set, frozenset)) else str(v)))

