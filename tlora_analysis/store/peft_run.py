"""A run recorded from a peft model: each snapshot is the adapter's state, keyed as peft saves it.

run.json keeps the adapter's ``peft_config``; a snapshot plus that config is a peft adapter, read by
:func:`~tlora_analysis.peft_types.read_state` like any saved one (factored where the type allows,
through peft on the base model otherwise). The base model is the one run.json names, if it is the
embedded default or a local folder, or the one the caller gives.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..factored import FactoredDelta
from ..peft_types import peft_type_spec, read_state
from ..peft_types.context import ReadContext
from ..tensors import check_values
from .kept import KEPT
from .layout import HEAD_PREFIX, check_shape_and_rank
from .run import RecordedRun

__all__ = ["PeftRun"]


class PeftRun(RecordedRun):
    """A recorded run of a peft model (any peft type that has a ΔW); ``base`` gives the base model where run.json's cannot be opened."""

    def __init__(self, path: str | Path, base: str | None = None) -> None:
        super().__init__(path)
        self.peft_config = self.meta.get("peft_config")
        if not isinstance(self.peft_config, dict):
            raise InputError(f"{self.where}: 'peft_config' should be the adapter's peft configuration (a JSON object)")
        peft_type_spec(self.peft_config, self.where)
        for name, layer in self.layers.items():
            check_shape_and_rank(layer, f"{self.where} layer {name!r}")
        model = self.meta.get("model")
        self._context = ReadContext(self.where, base, model if isinstance(model, str) else None)
        self._reading: tuple[int | None, object] = (None, None)

    def base_files(self) -> list | None:
        """The files of the base model its updates are read on ([] where none can be opened, so none is read), or
        None where the base is a Hub id: a stored table of this run is keyed by them too (DoRA's and every dense
        type's ΔW depend on W0)."""
        from ..models import local_model_files

        base = self._context.base
        return [] if base is None else local_model_files(base)

    @property
    def notices(self) -> list[str]:
        """What the last epoch's reading left out or assumed, one line each."""
        return list(self._read(self.epochs[-1]).notices) if self.epochs else []

    def _check_snapshot(self, tensors: dict[str, torch.Tensor], path: Path, epoch: int, checked: bool) -> None:
        if not checked:
            for key, tensor in tensors.items():
                check_values(tensor, f"{path}: tensor {key} (epoch {epoch})")

    def release(self) -> None:
        super().release()
        self._reading = (None, None)
        self._context.release()

    def _read(self, epoch: int):
        if self._reading[0] != epoch:
            tensors = {k: v for k, v in self._snapshot(epoch).items() if not k.startswith(HEAD_PREFIX)}
            reading = read_state(self.peft_config, tensors, self._context)
            if set(reading.layers) != set(self.layers):
                raise InputError(f"{self.path}: epoch {epoch}'s snapshot holds layers {sorted(reading.layers)[:3]}..., run.json lists "
                                 f"{sorted(self.layers)[:3]}...")
            self._reading = (epoch, reading)
        return self._reading[1]

    def deltas(self, epoch: int) -> dict[str, FactoredDelta]:
        """``{module_name: FactoredDelta}`` of every adapted layer at ``epoch``, in run.json's order."""
        kept = KEPT.kept(self._kept_as, epoch)
        if kept is not None:
            return kept
        reading = self._read(epoch)
        deltas = reading.deltas()
        deltas = {name: deltas[name] for name in self.layers}
        if any(layer.get("form") == "dense" for layer in reading.layers.values()):  # a peft merge and an SVD per layer (.kept)
            KEPT.keep(self._kept_as, epoch, deltas)
        return deltas

    def scales(self, epoch: int) -> dict[str, float]:
        """Each layer's fixed scale where the type has one (LoRA's lora_alpha / r); empty otherwise."""
        return dict(self._read(epoch).scales)

    def trainable(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """The trained matrices per layer, by the names the type gives them."""
        return dict(self._read(epoch).trainable)
