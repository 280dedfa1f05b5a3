"""The ``transformers.Trainer`` integration: a callback that records a run, and a sink that sends
its live update geometry to the Trainer's ``report_to`` integrations (TensorBoard, W&B)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..adapters import untrained_head
from ..distributed import full_parameters, squared_grad_norms
from ..recording import DeltaRecorder, trainable_groups

__all__ = ["DeltaRecorderCallback", "TrainerSink"]


class DeltaRecorderCallback(TrainerCallback):
    """``transformers.Trainer`` callback: epoch-0 snapshot at train begin, one after every epoch.

    Evaluation metrics that the Trainer computes at the end of an epoch are added to that
    epoch's record in run.json. ``train_loss`` is the mean training loss over the epoch's
    steps, weighted by the steps each of the Trainer's loss logs covers (as in ``train``).
    Under ``torchrun`` or ``accelerate launch`` (DDP or FSDP) global rank 0 alone writes, and
    every process gathers FSDP's shards for a snapshot.

    Args:
        run_dir: the run directory to write.
        metadata: extra run.json fields (task, model, ...).
        record_grad_norms: record each layer's gradient-norm RMS per epoch (on by default, as in ``train``): the norm of the
            gradient each optimizer step applies, reduced over processes and after the
            Trainer's clipping (``max_grad_norm``).
        trainer: give the Trainer (as TRL's callbacks take it) to send the update geometry
            through ``trainer.log`` to every ``report_to`` integration, per epoch and every
            ``log_every_steps`` steps; core histograms go to its TensorBoard writer. Add
            the callback with ``trainer.add_callback(callback)``.
        log_every_steps: 0 logs the geometry at each snapshot only.
    """

    def __init__(self, run_dir: str | Path, *, metadata: Mapping[str, Any] | None = None, record_grad_norms: bool = True,
                 trainer=None, log_every_steps: int = 0) -> None:
        self.run_dir = Path(run_dir)
        self.metadata = dict(metadata or {})
        self.record_grad_norms = record_grad_norms
        self.sinks = [TrainerSink(trainer)] if trainer is not None else []
        self.log_every_steps = log_every_steps
        self.recorder: DeltaRecorder | None = None
        self._groups: list[list[torch.Tensor]] = []
        self._epoch_start_step = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        warning = untrained_head(model)
        if warning and state.is_world_process_zero:
            warnings.warn(f"DeltaRecorderCallback: {warning}", stacklevel=2)
        if self.record_grad_norms:  # every process: under FSDP each holds a shard of every gradient
            self._groups = trainable_groups(model)
        with full_parameters(model):
            if state.is_world_process_zero:  # under torchrun / accelerate, global rank 0 alone writes the run
                self.recorder = DeltaRecorder(model, self.run_dir, metadata={"world_size": args.world_size, "trainer_seed": args.seed, **self.metadata},
                                              sinks=self.sinks)
                if 0 not in self.recorder.finished_epochs:
                    self.recorder.snapshot(0, global_step=state.global_step)
        self._epoch_start_step = state.global_step

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self._groups:
            squared = squared_grad_norms(self._groups)
            if self.recorder is not None:
                self.recorder.add_gradient_norms(squared)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        epoch_ends = abs(state.epoch - round(state.epoch)) < 1e-9  # the snapshot logs this step
        if self.log_every_steps and self.sinks and state.global_step % self.log_every_steps == 0 and not epoch_ends:
            with full_parameters(model):
                if self.recorder is not None:
                    self.recorder.log_geometry(state.global_step)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        with full_parameters(model):
            if self.recorder is not None:
                epoch = int(round(state.epoch))
                loss = _mean_logged_loss(state.log_history, self._epoch_start_step, state.global_step)
                metrics = {"train_loss": loss} if loss is not None else {}
                self.recorder.snapshot(epoch, metrics, global_step=state.global_step)
        self._epoch_start_step = state.global_step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        epoch = int(round(state.epoch or 0))
        if self.recorder is not None and metrics and abs((state.epoch or 0) - epoch) < 1e-6 and epoch in self.recorder.finished_epochs:
            self.recorder.add_metrics(epoch, {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.finish()


class TrainerSink:
    """Sends geometry through ``trainer.log``, which hands it to every ``report_to`` integration.

    A callback cannot reach the Trainer by itself, so, as TRL's callbacks do, it is given
    the trainer. Histograms go to the Trainer's TensorBoard writer when it reports there.
    """

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Each integration's ``on_log``, as ``trainer.log`` would call it, but not the console printers
        (a 7B model's geometry is thousands of numbers) and not ``state.log_history``."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer = self.trainer
        for callback in trainer.callback_handler.callbacks:
            if not isinstance(callback, (PrinterCallback, ProgressCallback)):
                callback.on_log(trainer.args, trainer.state, trainer.control, logs=dict(metrics))

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        for callback in self.trainer.callback_handler.callbacks:
            writer = getattr(callback, "tb_writer", None)
            if writer is not None:
                writer.add_histogram(tag, values.detach().float().cpu(), step)

    def close(self) -> None:
        pass


def _mean_logged_loss(history: list[dict], first_step: int, last_step: int) -> float | None:
    """Mean per-step loss over steps (first_step, last_step], from the Trainer's loss logs:
    each log's ``loss`` averages the steps since the previous log, so weight it by them."""
    total = steps = 0.0
    previous = first_step
    for entry in history:
        step = entry.get("step", 0)
        if "loss" in entry and first_step < step <= last_step:
            total += entry["loss"] * (step - previous)
            steps += step - previous
            previous = step
    return total / steps if steps else None
