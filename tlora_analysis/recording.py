"""Record every adapter layer's update at epoch 0 and after each epoch, from any training loop.

:class:`DeltaRecorder` needs only the model and a directory: call :meth:`~DeltaRecorder.snapshot`
when an epoch ends. It never touches the optimizer or the loop; the optional gradient
norms come from tensor hooks on the trainable adapter parameters.
:class:`~tlora_analysis.integrations.trainer.DeltaRecorderCallback` does the same inside a ``transformers.Trainer``.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import adapter_layers, count_parameters
from .live import GeometrySink, update_geometry
from .store import HEAD_PREFIX, RunWriter

__all__ = ["DeltaRecorder", "package_versions", "trainable_groups"]


def package_versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"tlora_analysis": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


class DeltaRecorder:
    """Writes snapshots of a model's adapter layers into a run directory.

    Each snapshot holds the adapters' trainable tensors and, under ``trainable.<name>``,
    any other trainable parameter (the classifier head). ``metadata`` goes into run.json as is (task, model, hyperparameters...). Opening an
    existing run directory continues it (used by ``train --resume``).
    With ``record_grad_norms=True``, each epoch's record gets the root-mean-square over
    steps of every layer's trainable-gradient norm. Each snapshot also sends the live
    update geometry (:func:`~tlora_analysis.live.update_geometry`) to every sink in
    ``sinks``; :meth:`log_geometry` does so between snapshots. The run directory stays
    locked until :meth:`finish` or :meth:`close`.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path,
        *,
        metadata: Mapping[str, Any] | None = None,
        record_grad_norms: bool = False,
        sinks: list[GeometrySink] = (),
    ) -> None:
        self.model = model
        self.sinks = list(sinks)
        self._previous: dict | None = None  # the last snapshot's deltas, for the cosine to it
        self.layers = adapter_layers(model)
        metadata = dict(metadata or {})
        methods = {layer.method for layer in self.layers.values()}
        if len(methods) > 1:
            raise ValueError(f"model mixes adapter methods {sorted(methods)}; record one method per run")
        method = methods.pop() if methods else metadata.get("method", "head")
        records = {name: layer.record() for name, layer in self.layers.items()}
        header = {
            "method": method,
            "rank": next(iter(self.layers.values())).rank if self.layers else 0,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
            "parameter_counts": count_parameters(model).as_dict(),
            **metadata,
            "layers": records,
        }
        self.writer = RunWriter(run_dir, header)
        self.path = self.writer.path
        if not self.writer.meta.get("frozen_file") and any(
            layer.frozen_differs_from_rebuild(records[name]) for name, layer in self.layers.items()
        ):
            self.writer.save_frozen({f"{n}.{k}": t for n, layer in self.layers.items() for k, t in layer.frozen_tensors().items()})
        self._grad_sq: torch.Tensor | None = None  # per layer, summed over the epoch's steps
        self._grad_steps = 0
        self._handles = []
        if record_grad_norms:
            self._attach_grad_hooks()

    @property
    def finished_epochs(self) -> list[int]:
        return self.writer.finished_epochs

    def _attach_grad_hooks(self) -> None:
        """One hook per backward pass for all layers (not one per parameter): a single Python call
        and three tensor ops per step, accumulated on the device without a host sync."""
        params, owners = [], []
        for index, group in enumerate(trainable_groups(self.model)):
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
        tensors = {f"{name}.{key}": t for name, layer in self.layers.items() for key, t in layer.trainable_tensors().items()}
        tensors.update({f"{HEAD_PREFIX}{name}": p for name, p in self._other_trainable()})
        if self._grad_steps:
            rms = (self._grad_sq / self._grad_steps).sqrt().tolist()
            record["grad_norm_rms"] = dict(zip(self.layers, rms))
            self._grad_sq.zero_()
            self._grad_steps = 0
        self.writer.write_epoch(epoch, tensors, {"metrics": dict(metrics or {}), **record})
        step = int(record.get("global_step", epoch))
        if self.sinks:
            self.log_geometry(step, histograms=True)
            self._previous = {name: layer.delta().to("cpu") for name, layer in self.layers.items()}
        return self.path

    def log_geometry(self, step: int, histograms: bool = False) -> dict[str, float]:
        """Send each layer's ‖ΔW‖_F, σ₁, stable rank, scale and cosine to the last snapshot
        to the sinks (factored, so cheap enough to call every few steps)."""
        deltas = {name: layer.delta() for name, layer in self.layers.items()}
        scales = {name: layer.scale() for name, layer in self.layers.items()}
        metrics = update_geometry(deltas, scales, self._previous)
        for sink in self.sinks:
            sink.log(metrics, step)
            if histograms:
                for name, layer in self.layers.items():
                    for key, tensor in layer.trainable_tensors().items():
                        if tensor.ndim:
                            sink.histogram(f"core/{key}/{name}", tensor, step)
        return metrics

    def _other_trainable(self):
        """Trainable parameters outside the adapters (a classifier head): small, and without them
        a snapshot could not restore the fine-tuned model."""
        adapter_params = {id(p) for layer in self.layers.values() for p in layer.parameters()}
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in adapter_params]

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
    """Each adapter layer's trainable parameters, in model order: the groups whose gradient norms
    :meth:`DeltaRecorder.add_gradient_norms` takes."""
    return [[p for n, p in layer.named_parameters() if not n.startswith("base.") and p.requires_grad]
            for layer in adapter_layers(model).values()]
