"""Record every adapter layer's update at epoch 0 and after each epoch, from any training loop.

:class:`DeltaRecorder` needs only the model and a directory: call :meth:`~DeltaRecorder.snapshot`
when an epoch ends. It never touches the optimizer or the loop; the optional gradient
norms come from tensor hooks on the trainable adapter parameters.
:class:`~tlora_analysis.integrations.trainer.DeltaRecorderCallback` does the same inside a ``transformers.Trainer``.
"""

from __future__ import annotations

import platform
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import count_parameters
from .errors import InputError
from .live import GeometrySink, update_geometry
from .live_models import OwnAdapters, live_updates
from .store import HEAD_PREFIX, RunWriter

__all__ = ["DeltaRecorder", "package_versions", "trainable_groups"]


def package_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"tlora_analysis": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


RESERVED_FIELDS = frozenset({"format", "format_version", "method", "rank", "layers", "epochs", "created", "versions", "parameter_counts",
                             "peft_config", "frozen_file", "status"})
"""run.json fields the recorder writes itself; ``metadata`` may not set them."""
IDENTITY_FIELDS = ("method", "layers", "peft_config")
"""What a run directory being continued must share with the model now recorded (else it is another run)."""


class DeltaRecorder:
    """Writes snapshots of a model's updates into a run directory.

    The model may carry this toolkit's adapters, a peft adapter of any type with a ΔW, or linear layers
    that train whole (:mod:`~tlora_analysis.live_models` says which); ``head_only`` records a run that
    trains only a head (the ``head`` method). Each snapshot holds the update's trainable tensors and,
    under ``trainable.<name>``, any other trainable parameter (a classifier head). ``metadata`` goes into
    run.json (task, model, hyperparameters...), except the recorder's own fields. Opening an existing run
    directory continues it (``train --resume``, a resumed Trainer) if it records the same model; a
    directory that holds another run is refused. With ``record_grad_norms=True``, each epoch's record
    gets the root-mean-square over steps of every layer's trainable-gradient norm. Each snapshot also
    sends the live update geometry (:func:`~tlora_analysis.live.update_geometry`) to every sink in
    ``sinks``; :meth:`log_geometry` does so between snapshots. The run directory stays locked until
    :meth:`finish` or :meth:`close`.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path,
        *,
        metadata: Mapping[str, Any] | None = None,
        record_grad_norms: bool = False,
        sinks: list[GeometrySink] = (),
        head_only: bool = False,
    ) -> None:
        self.model = model
        self.sinks = list(sinks)
        self._previous: dict | None = None  # the last snapshot's deltas, for the cosine to it
        metadata = dict(metadata or {})
        reserved = sorted(RESERVED_FIELDS & set(metadata))
        if reserved:
            raise InputError(f"metadata field {reserved[0]!r} is the recorder's own (it writes {', '.join(sorted(RESERVED_FIELDS))})")
        self.live = live_updates(model, head_only)
        self.layers = {} if self.live is None else self.live.layers
        header = {
            "method": "head" if self.live is None else self.live.method,
            "rank": 0 if self.live is None else self.live.rank,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            "parameter_counts": count_parameters(model).as_dict() if self.live is None else self.live.counts(),
            **({} if self.live is None else self.live.header),
            **metadata,
            "layers": {} if self.live is None else self.live.records(),
        }
        self.writer = RunWriter(run_dir, header)
        self.path = self.writer.path
        try:
            _check_same_run(self.writer.meta, header, self.path)
            if isinstance(self.live, OwnAdapters) and not self.writer.meta.get("frozen_file") and any(
                    layer.frozen_differs_from_rebuild(header["layers"][name]) for name, layer in self.layers.items()):
                self.writer.save_frozen({f"{n}.{k}": t for n, layer in self.layers.items() for k, t in layer.frozen_tensors().items()})
        except BaseException:
            self.writer.close()
            raise
        self._grad_sq: torch.Tensor | None = None  # per layer, summed over the epoch's steps
        self._grad_steps = 0
        self._handles = []
        self._geometry_notice = False
        if record_grad_norms:
            self._attach_grad_hooks()

    @property
    def finished_epochs(self) -> list[int]:
        return self.writer.finished_epochs

    def _attach_grad_hooks(self) -> None:
        """One hook per backward pass for all layers (not one per parameter): a single Python call
        and three tensor ops per step, accumulated on the device without a host sync."""
        params, owners = [], []
        for index, group in enumerate(self.live.groups() if self.live is not None else []):
            params += group
            owners += [index] * len(group)
        if not params:
            return
        device = params[0].device
        owner_index = torch.tensor(owners, device=device)
        if self._grad_sq is None:
            self._grad_sq = torch.zeros(len(self.layers), dtype=torch.float64, device=device)

        def hook(grads) -> None:
            present = [i for i, g in enumerate(grads) if g is not None]
            norms = torch._foreach_norm([grads[i].detach() for i in present])  # as clip_grad_norm_ does
            self._grad_sq.index_add_(0, owner_index[present], torch.stack(norms).double().square())
            self._grad_steps += 1

        self._handles.append(torch.autograd.graph.register_multi_grad_hook(params, hook))

    def add_gradient_norms(self, squared: torch.Tensor) -> None:
        """Add one optimizer step's squared gradient norm per layer (the order of ``self.layers``).

        For loops over several processes, whose whole gradient the tensor hooks cannot see (they
        see one process's share): compute it with
        :func:`~tlora_analysis.distributed.squared_grad_norms` once the gradients are reduced.
        """
        self._grad_sq = squared.double() if self._grad_sq is None else self._grad_sq + squared.to(self._grad_sq)
        self._grad_steps += 1

    def snapshot(self, epoch: int, metrics: Mapping[str, float] | None = None, **record: Any) -> Path:
        """Write the adapter state at ``epoch`` (0 = before training) and list it in run.json.

        Under FSDP, call it inside :func:`~tlora_analysis.distributed.full_parameters` (entered by
        every process): a shard is not a snapshot."""
        tensors = {} if self.live is None else self.live.tensors()
        tensors.update({f"{HEAD_PREFIX}{name}": p.detach().to("cpu", copy=True) for name, p in self._other_trainable()})
        if self._grad_steps:
            rms = (self._grad_sq / self._grad_steps).sqrt().tolist()
            record["grad_norm_rms"] = dict(zip(self.layers, rms))
            self._grad_sq.zero_()
            self._grad_steps = 0
        self.writer.write_epoch(epoch, tensors, {"metrics": dict(metrics or {}), **record})
        step = int(record.get("global_step", epoch))
        if self.sinks and self.live is not None:
            self.log_geometry(step, histograms=True)
            deltas = self.live.deltas()
            self._previous = None if deltas is None else {name: delta.to("cpu") for name, delta in deltas.items()}
        return self.path

    def log_geometry(self, step: int, histograms: bool = False) -> dict[str, float]:
        """Send each layer's ‖ΔW‖_F, σ₁, stable rank, scale and cosine to the last snapshot
        to the sinks (factored, so cheap enough to call every few steps). An update that needs W0 to be
        read (DoRA, PiSSA, every type peft computes on the base) is left to the analyses, said once."""
        deltas = None if self.live is None else self.live.deltas()
        if deltas is None:
            if not self._geometry_notice and self.live is not None:
                self._geometry_notice = True
                warnings.warn(f"{self.path}: live geometry of a {self.live.method} update needs W0; it is recorded in every "
                              "snapshot and read by the analyses against the base model", stacklevel=2)
            return {}
        metrics = update_geometry(deltas, self.live.scales(), self._previous)
        for sink in self.sinks:
            sink.log(metrics, step)
            if histograms:
                for tag, tensor in self.live.histograms():
                    sink.histogram(tag, tensor, step)
        return metrics

    def _other_trainable(self):
        """Trainable parameters the update's own tensors do not hold (a classifier head): small, and without them
        a snapshot could not restore the fine-tuned model."""
        owned = set() if self.live is None else self.live.owned()
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in owned]

    def add_metrics(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Attach metrics that arrive after the snapshot (e.g. the Trainer's evaluation)."""
        self.writer.update_epoch(epoch, metrics=dict(metrics))

    def finish(self, **fields: Any) -> None:
        self.writer.update(status="finished", **fields)
        self.close()

    def close(self) -> None:
        """Remove the hooks, close the sinks and unlock the run directory."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for sink in self.sinks:
            sink.close()
        self.sinks.clear()
        self.writer.close()

    def __enter__(self) -> DeltaRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trainable_groups(model: nn.Module) -> list[list[torch.Tensor]]:
    """Each recorded layer's trainable parameters, in model order: the groups whose gradient norms
    :meth:`DeltaRecorder.add_gradient_norms` takes (none for a model with nothing to record)."""
    try:
        live = live_updates(model)
    except InputError:
        return []
    return live.groups()


def _check_same_run(meta: Mapping[str, Any], header: Mapping[str, Any], path: Path) -> None:
    """A run directory continued by a recorder must hold the same run: same method, layers and peft config
    (and the same seed and task where both say), else its snapshots would mix two runs."""
    for key in (*IDENTITY_FIELDS, "seed", "task", "trainer_seed"):
        if key in header and key in meta and meta[key] != header[key]:
            raise InputError(f"{path}: already holds another run (its {key} differs from the model's now recorded); continue "
                             "it with the same model and settings, or choose another directory")
