"""The CLI's training loop as a recipe, in the manner of torchtune's: small steps in a fixed order,
every resource (the run lock, the recorder, the process group) owned by one ``ExitStack``.

The loop is plain PyTorch; a :class:`~tlora_analysis.recording.DeltaRecorder` writes the
snapshots. Every source of randomness is derived from the run seed and the epoch
(:func:`~.batches.derived_seed`), and the learning rate is a function of the global step, so a
run resumed from its last finished epoch continues exactly as if it had not stopped.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..data import load_task
from ..data.encode import encode
from ..data.lm import predicted_tokens
from ..distributed import full_parameters, squared_grad_norms, start_processes
from ..errors import InputError
from ..io import read_json
from ..live import make_sinks
from ..lock import RunLock
from ..methods import METHOD_SPECS
from ..models import load_tokenizer, model_named_in_file
from ..recording import DeltaRecorder, trainable_groups
from ..store import Run, load_run
from ..tensors import MAX_ABS_VALUE
from .batches import autocast, derived_seed, evaluate, lr_at, make_batch
from .model import build_model, check_device
from .probe import LinearProbe
from .resume_state import check_resumable, check_resumed_data, load_resume_state, restore_optimizer, resume_tensors

__all__ = ["TrainingRecipe", "train", "resume"]


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> Run:
    """Fine-tune, recording a snapshot at epoch 0 and after every epoch into ``out_dir``.

    Args:
        config: every setting of the run (see :class:`~tlora_analysis.config.TrainConfig`).
        out_dir: the run directory. It is locked while training, so a second process
            writing the same directory stops with an error instead of interleaving files.
        resume: continue the run in ``out_dir`` from its last finished epoch.
        progress: show tqdm bars.
        log: where the one-line epoch summaries go.

    Everything is validated (settings, data, model, targets) before run.json is written,
    so a run that cannot start leaves nothing behind. ``train_loss`` in each epoch's
    metrics is the mean of the per-step training losses of that epoch.
    """
    return TrainingRecipe(config, out_dir, resume=resume, progress=progress, log=log).train()


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None, model: str | None = None,
           data_dir: str | None = None, data_file: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Run:
    """Continue a run from its last finished epoch, with the configuration stored in its run.json.

    Resuming with the same ``epochs`` reproduces the uninterrupted run exactly. A larger
    ``epochs`` extends it: the learning-rate schedule is then stretched over the new total
    from the step reached, so the result differs from a run planned that long from the start.
    ``device`` moves the rest of the run to another device. A Hub model named in run.json is
    loaded only if ``model`` names it (or a local copy of it). ``data_dir`` and ``data_file`` replace
    the recorded data paths; either way the data must have the digest recorded at training time.
    """
    meta = read_json(Path(run_dir) / "run.json", "run.json")
    if not isinstance(meta.get("config"), dict):
        raise InputError(f"{Path(run_dir) / 'run.json'}: has no 'config' (not written by tlora-analysis train), cannot resume")
    try:
        config = TrainConfig.from_dict(meta["config"])
    except TypeError as err:
        raise InputError(f"{Path(run_dir) / 'run.json'}: 'config' is not a valid training configuration ({err})") from err
    if epochs is not None:
        config.epochs = epochs
    if device is not None:
        config.device = device
    config.data_dir = data_dir if data_dir is not None else config.data_dir
    config.data_file = data_file if data_file is not None else config.data_file
    config.model = model_named_in_file(config.model, Path(run_dir) / "run.json", model)
    return train(config, run_dir, resume=True, progress=progress, log=log)


class TrainingRecipe:
    """One run of :func:`train`. Steps: :meth:`setup_data`, :meth:`setup_model`, :meth:`setup_probe`,
    :meth:`setup_recorder`, :meth:`setup_optimizer`, then :meth:`run_epoch` and :meth:`save_epoch`
    per epoch."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, resume: bool, progress: bool, log: Callable[[str], None]) -> None:
        self.config, self.out_dir, self.resuming, self.log = config, Path(out_dir), resume, log
        check_device(config.device, config.precision)
        self.data = load_task(config.task, config.data_dir, config.max_train_samples, config.max_eval_samples, config.data_file)
        self.data_sha256 = data_digest(self.data.train, self.data.validation)
        self.processes = start_processes(config.device, config.batch_size, len(self.data.train), config.sharding)
        self.progress = progress and self.processes.writes
        self.recorder: DeltaRecorder | None = None
        self.probe: LinearProbe | None = None
        self.step = self.start_epoch = 0

    def train(self) -> Run:
        created = not self.out_dir.exists()
        with contextlib.ExitStack() as stack:  # cleanup in reverse order: recorder, lock, empty directory, processes
            stack.callback(self.processes.close)
            if self.processes.writes:  # rank 0 alone writes the run
                stack.callback(self._remove_if_empty, created)
                stack.callback(RunLock.acquire(self.out_dir).release)
            self._check_out_dir()
            self.setup_data()
            optimizer_state = self.setup_model()
            self.setup_probe()
            stack.callback(self._close_recorder)
            self.setup_recorder()
            self.setup_optimizer(optimizer_state)
            epochs = tqdm(range(self.start_epoch + 1, self.config.epochs + 1), desc=f"{self.config.method} epochs",
                          disable=not self.progress, initial=self.start_epoch, total=self.config.epochs)
            for epoch in epochs:
                started = time.perf_counter()
                metrics = self.run_epoch(epoch)
                self.save_epoch(epoch, metrics, time.perf_counter() - started)
            if self.recorder is not None:
                self.recorder.finish()
            self.processes.barrier()
        return load_run(self.out_dir)

    def _check_out_dir(self) -> None:
        has_run = (self.out_dir / "run.json").exists()
        self.processes.barrier()  # every process has looked before rank 0 writes anything
        if not self.resuming and has_run:
            raise InputError(f"{self.out_dir}: already holds a run; use --resume to continue it or choose another --out")
        if self.resuming and not has_run:
            raise InputError(f"{self.out_dir}: no run.json to resume")
        if self.resuming:  # before the model is loaded
            check_resumed_data(read_json(self.out_dir / "run.json", "run.json"), self.config, self.out_dir, self.data_sha256)

    def _remove_if_empty(self, created: bool) -> None:
        if created and self.out_dir.is_dir() and not any(self.out_dir.iterdir()):
            self.out_dir.rmdir()  # a run that never started leaves no empty directory

    def _close_recorder(self) -> None:
        if self.recorder is not None:
            self.recorder.close()

    # ------------------------------------------------------------------ setup
    def setup_data(self) -> None:
        """Tokenize both splits; the step count and, for a causal LM, each example's share of the loss."""
        config, spec = self.config, self.data.spec
        _check_labels(self.data.train + self.data.validation, spec.num_labels, config.task)
        self.tokenizer = load_tokenizer(config.model)
        self.train_features = encode(self.tokenizer, self.data.train, spec, config.max_length)
        self.eval_features = encode(self.tokenizer, self.data.validation, spec, config.max_length)
        if not self.train_features or not self.eval_features:
            raise InputError(f"task {config.task!r}: the train or validation split is empty")
        # What the loss averages over, per example: one each, or a causal LM's predicted tokens.
        self.weights = [predicted_tokens(f) for f in self.train_features] if spec.kind == "causal-lm" else None
        self.steps_per_epoch = math.ceil(len(self.train_features) / config.batch_size)
        self.total_steps = self.steps_per_epoch * config.epochs

    def setup_model(self) -> dict:
        """Build the model; when resuming, check it against the run and load its last state. Returns the optimizer state."""
        self.model = build_model(self.config, self.data.spec.num_labels, self.total_steps)
        self.allocate = getattr(getattr(self.model, "base_model", None), "update_and_allocate", None)
        """AdaLoRA's rank allocation, which peft asks every training loop to call after each optimizer step."""
        positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)
        if positions and self.config.max_length > positions:
            raise InputError(f"--max-length {self.config.max_length} is beyond the model's {positions} positions")
        if not self.resuming:
            return {}
        previous = load_run(self.out_dir)
        check_resumable(previous.meta, self.config, self.out_dir, self.model)
        self.start_epoch = previous.epochs[-1] if previous.epochs else 0
        if self.start_epoch > self.config.epochs:
            raise InputError(f"{self.out_dir}: already has {self.start_epoch} epochs, more than --epochs {self.config.epochs}")
        if self.start_epoch == 0:
            return {}
        self.step = self.start_epoch * self.steps_per_epoch
        return load_resume_state(self.out_dir, self.start_epoch, self.model, self.step)

    def setup_probe(self) -> None:
        """Head-only on one process: encode both splits once and train the head on the cached inputs
        (:class:`~.probe.LinearProbe`), where the head allows it."""
        config = self.config
        if METHOD_SPECS[config.method].adapts_layers or self.processes.world > 1 or self.data.spec.kind == "causal-lm":
            return
        with autocast(config):
            self.probe = LinearProbe.build(self.model, self.tokenizer, config.task, self.train_features, self.eval_features,
                                           config.batch_size, config.device)
        if self.probe is not None:
            self.log(f"{config.method}: a linear probe on the frozen encoder's outputs, encoded once")

    def setup_recorder(self) -> None:
        """Rank 0 opens the run (run.json) and records epoch 0 from the model, not yet wrapped."""
        config = self.config
        if self.processes.writes:
            metadata = {"task": config.task, "model": config.model, "targets": config.targets,
                        "seed": config.seed, "main_metric": self.data.spec.main_metric, "world_size": self.processes.world,
                        "precision": config.precision, "recorded_dtype": "float32", "data_sha256": self.data_sha256,
                        "config": asdict(config)}
            self.recorder = DeltaRecorder(self.model, self.out_dir, metadata=metadata, sinks=make_sinks(config.report_to, self.out_dir),
                                          head_only=not METHOD_SPECS[config.method].adapts_layers)
            if self.resuming:
                self.recorder.writer.update(config=asdict(config), world_size=self.processes.world)  # --epochs may have extended the run
                self.log(f"resuming {self.out_dir} after epoch {self.start_epoch}")
            if 0 not in self.recorder.finished_epochs:
                started = time.perf_counter()
                metrics = self._evaluate()
                self.recorder.snapshot(0, metrics, eval_time_s=time.perf_counter() - started, global_step=0)
        self.processes.barrier()

    def setup_optimizer(self, state: dict) -> None:
        """Wrap the model for the processes, then AdamW over what trains (FSDP replaces the parameters)."""
        self.wrapped = self.processes.wrap(self.model)
        # FSDP's root unit keeps the parameters whole after a forward pass, so the names are taken now.
        self.names = {id(p): n for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.config.lr,
                                           weight_decay=self.config.weight_decay)
        restore_optimizer(self.model, self.optimizer, state)
        # Gradient norms from the reduced gradients (tensor hooks would see one process's share).
        record = self.config.record_grad_norms and METHOD_SPECS[self.config.method].adapts_layers
        self.grad_groups = trainable_groups(self.model) if record else []

    # ------------------------------------------------------------------ the loop
    def run_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training split in this epoch's order; returns the mean training loss and the evaluation."""
        config, started, losses = self.config, time.perf_counter(), []
        self.model.train()
        torch.manual_seed(derived_seed(config.seed, "dropout", epoch))
        order = torch.randperm(len(self.train_features), generator=torch.Generator().manual_seed(derived_seed(config.seed, "shuffle", epoch)))
        shares = tqdm(self.processes.share(order.tolist(), config.batch_size, self.weights), desc=f"epoch {epoch}", leave=False,
                      disable=not self.progress)
        for indices, share in shares:
            losses.append(self._train_step(indices, share))
            shares.set_postfix(loss=f"{losses[-1]:.3f}")
        self.train_time = time.perf_counter() - started
        metrics = {"train_loss": sum(losses) / len(losses)}
        self._check_finite(epoch, metrics["train_loss"])
        if self.processes.writes or self.processes.sharded:  # FSDP's forward pass needs every process
            metrics.update(self._evaluate())
        return metrics

    def _check_finite(self, epoch: int, loss: float) -> None:
        """A diverged epoch is not recorded: every reader refuses values that are not finite or beyond
        :data:`~tlora_analysis.tensors.MAX_ABS_VALUE`, so such a snapshot would not be readable; every finished epoch stays."""
        trained = () if self.processes.sharded else (p for p in self.model.parameters() if p.requires_grad)  # shards: the loss says it
        if math.isfinite(loss) and all(bool(torch.isfinite(p).all()) and float(p.detach().abs().max()) <= MAX_ABS_VALUE
                                       for p in trained if p.numel()):
            return
        raise InputError(f"{self.out_dir}: training diverged in epoch {epoch} (train loss {loss:.3g}); epochs up to "
                         f"{epoch - 1} are kept; lower --lr (now {self.config.lr:g})")

    def _train_step(self, indices: list[int], share: float) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, self.config)
        loss = self._loss(indices)
        (loss * share).backward()
        if self.grad_groups:
            squared = squared_grad_norms(self.grad_groups)
            if self.recorder is not None:
                self.recorder.add_gradient_norms(squared)
        self.optimizer.step()
        if self.allocate is not None:
            self.allocate(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        every = self.config.log_every_steps
        if every and self.step % every == 0 and self.step % self.steps_per_epoch:
            with full_parameters(self.model):
                if self.recorder is not None:
                    self.recorder.log_geometry(self.step)
        return self.processes.mean(loss.item() * share)

    def _loss(self, indices: list[int]) -> torch.Tensor:
        if self.probe is not None:
            return self.probe.loss(indices)
        batch, labels = make_batch(self.tokenizer, [self.train_features[i] for i in indices], self.config.device)
        with autocast(self.config):
            return self.wrapped(**batch, labels=labels).loss

    def _evaluate(self) -> dict[str, float]:
        config = self.config
        if self.probe is not None:
            return self.probe.evaluate()
        with autocast(config):
            return evaluate(self.model, self.tokenizer, self.eval_features, config.task, config.batch_size, config.device)

    def save_epoch(self, epoch: int, metrics: dict[str, float], elapsed: float) -> None:
        """The resume state, then the snapshot (whole parameters under FSDP), then every process waits."""
        state = resume_tensors(self.names, self.optimizer)  # every process: FSDP gathers the shards
        if self.recorder is not None:
            self.recorder.writer.save_resume_state(epoch, state, self.step)
        with full_parameters(self.model):
            if self.recorder is not None:
                self.recorder.snapshot(epoch, metrics, time_s=self.train_time, eval_time_s=elapsed - self.train_time, global_step=self.step)
                self.log(f"{self.config.method} epoch {epoch}/{self.config.epochs}: train loss {metrics['train_loss']:.4f}, "
                         f"{self.data.spec.main_metric} {metrics[self.data.spec.main_metric]:.4f}, {self.train_time:.1f}s")
        self.processes.barrier()


def data_digest(train: list[dict], validation: list[dict]) -> str:
    """SHA-256 of both splits' examples: what a resumed run checks its data against."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([train, validation], sort_keys=True, default=str).encode()).hexdigest()


def _check_labels(examples: list[dict], num_labels: int, task: str) -> None:
    if num_labels <= 1:  # regression, or a causal LM (no labels)
        return
    bad = next((ex["label"] for ex in examples if not 0 <= int(ex["label"]) < num_labels), None)
    if bad is not None:
        raise InputError(f"task {task!r}: label {bad} is outside 0..{num_labels - 1}")
