"""The CLI's training loop: fine-tune LoRA, TLoRA or a head-only baseline, recording every epoch.

The loop is plain PyTorch; a :class:`~tlora_analysis.recording.DeltaRecorder` writes the
snapshots. Every source of randomness is derived from the run seed and the epoch
(shuffling, dropout), and the learning rate is a function of the global step, so a run
resumed from its last finished epoch continues exactly as if it had not stopped.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import METHODS, adapter_layers, inject_adapters, tensor_sha256
from .data import compute_metrics, load_task
from .errors import InputError
from .models import load_model, load_tokenizer
from .recording import DeltaRecorder
from .store import HEAD_PREFIX, Run, atomic_save_tensors, load_run, read_json, read_tensors

__all__ = ["TrainConfig", "train", "resume", "restore_model", "DEFAULT_LR", "TRAIN_METHODS"]

TRAIN_METHODS = (*METHODS, "head")
DEFAULT_LR = {"lora": 1e-3, "tlora": 3e-2, "head": 1e-2}
"""Per-method defaults found on the default task: TLoRA trains r² + 1 numbers per layer and,
like VeRA's scaling vectors, wants a learning rate about thirty times LoRA's (0.918 vs 0.877 accuracy at 3e-2 vs 1e-2)."""

HEAD_MODULES = ("classifier", "score")  # BERT/RoBERTa and decoder-style classification heads


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in run.json as ``config``."""

    method: str = "tlora"
    task: str = "default"
    model: str = "default"
    rank: int = 8
    alpha: float | None = None
    targets: list[str] = field(default_factory=lambda: ["query", "value"])
    epochs: int = 4
    lr: float | None = None
    batch_size: int = 32
    max_length: int = 64
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    warmup_ratio: float = 0.06
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "cpu"
    data_dir: str | None = None
    record_grad_norms: bool = True

    def __post_init__(self) -> None:
        if self.method not in TRAIN_METHODS:
            raise InputError(f"--method must be one of {', '.join(TRAIN_METHODS)}, got {self.method!r}")
        for name in ("rank", "epochs", "batch_size", "max_length"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.method]
        if self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InputError(f"--device {self.device}: CUDA is not available on this machine")
        self.targets = list(self.targets)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_model(config: TrainConfig, num_labels: int):
    _seed_everything(config.seed)  # the classifier head's initialization depends on it
    model = load_model(config.model, num_labels, config.device)
    if config.method == "head":
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if name.split(".")[0] in HEAD_MODULES:
                param.requires_grad_(True)
    else:
        inject_adapters(model, config.method, config.rank, config.targets, alpha=config.alpha, seed=config.seed, modules_to_save=HEAD_MODULES)
    return model


def _encode(tokenizer, examples: list[dict], text_columns: tuple[str, ...], max_length: int) -> list[dict]:
    texts = [[ex[c] for ex in examples] for c in text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": ex["label"]} for i, ex in enumerate(examples)]


def _batches(tokenizer, features: list[dict], batch_size: int, order: list[int], device: str):
    for start in range(0, len(order), batch_size):
        chunk = [features[i] for i in order[start : start + batch_size]]
        batch = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in chunk], return_tensors="pt")
        labels = torch.tensor([f["labels"] for f in chunk])
        yield {k: v.to(device) for k, v in batch.items()}, labels.to(device)


@torch.no_grad()
def evaluate(model, tokenizer, features: list[dict], task: str, batch_size: int, device: str) -> dict[str, float]:
    model.eval()
    predictions, labels, losses = [], [], []
    for batch, y in _batches(tokenizer, features, batch_size, list(range(len(features))), device):
        out = model(**batch, labels=y)
        losses.append(float(out.loss) * len(y))
        logits = out.logits.float()
        predictions.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(y)
    metrics = compute_metrics(task, torch.cat(predictions).cpu().numpy(), torch.cat(labels).cpu().numpy())
    return {"eval_loss": sum(losses) / max(len(features), 1), **metrics}


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    warmup = max(1, int(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * max(0.0, (total - step) / max(1, total - warmup))


def _save_resume_state(run_dir: Path, epoch: int, model, optimizer, step: int) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = torch.as_tensor(value)
    atomic_save_tensors(run_dir / "resume" / f"epoch_{epoch:03d}.safetensors", tensors, {"epoch": str(epoch), "step": str(step)})
    # Keep the previous epoch's state too: until run.json lists this epoch, resume starts from that one.
    for old in (run_dir / "resume").glob("epoch_*.safetensors"):
        if old.name != f"epoch_{epoch:03d}.safetensors" and int(old.stem.split("_")[1]) < epoch - 1:
            old.unlink(missing_ok=True)


def _load_resume_state(run_dir: Path, epoch: int, model, optimizer) -> int:
    path = run_dir / "resume" / f"epoch_{epoch:03d}.safetensors"
    tensors = read_tensors(path)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                params[key[len("param.") :]].copy_(value)
    for name, param in params.items():
        state = {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")}
        if state:
            optimizer.state[param] = {k: v.to(param.device) if k != "step" else v for k, v in state.items()}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return int(handle.metadata()["step"])


def train(config: TrainConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> Run:
    """Fine-tune, recording a snapshot at epoch 0 and after every epoch into ``out_dir``."""
    out_dir = Path(out_dir)
    if not resume and (out_dir / "run.json").exists():
        raise InputError(f"{out_dir}: already holds a run; use --resume to continue it or choose another --out")
    data = load_task(config.task, config.data_dir, config.max_train_samples, config.max_eval_samples)
    tokenizer = load_tokenizer(config.model)
    model = _build_model(config, data.spec.num_labels)
    spec = data.spec
    train_features = _encode(tokenizer, data.train, spec.text_columns, config.max_length)
    eval_features = _encode(tokenizer, data.validation, spec.text_columns, config.max_length)
    if not train_features or not eval_features:
        raise InputError(f"task {config.task!r}: the train or validation split is empty")

    metadata = {"task": config.task, "model": config.model, "targets": config.targets, "seed": config.seed,
                "main_metric": spec.main_metric, "config": asdict(config)}
    recorder = DeltaRecorder(model, out_dir, metadata=metadata, record_grad_norms=config.record_grad_norms and config.method != "head")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_features) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs

    step, start_epoch = 0, 0
    if resume and recorder.finished_epochs:
        recorder.writer.update(config=asdict(config))  # --epochs may have extended the run
        start_epoch = max(recorder.finished_epochs)
        if start_epoch > 0:
            step = _load_resume_state(out_dir, start_epoch, model, optimizer)
        log(f"resuming {out_dir} after epoch {start_epoch}")
    if 0 not in recorder.finished_epochs:
        started = time.perf_counter()
        metrics = evaluate(model, tokenizer, eval_features, config.task, config.batch_size, config.device)
        recorder.snapshot(0, metrics, eval_time_s=time.perf_counter() - started)

    epochs = tqdm(range(start_epoch + 1, config.epochs + 1), desc=f"{config.method} epochs", disable=not progress,
                  initial=start_epoch, total=config.epochs)
    for epoch in epochs:
        model.train()
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout masks
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)).tolist()
        started, loss_sum = time.perf_counter(), 0.0
        batches = tqdm(_batches(tokenizer, train_features, config.batch_size, order, config.device), total=steps_per_epoch,
                       desc=f"epoch {epoch}", leave=False, disable=not progress)
        for batch, labels in batches:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, config)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.item() * len(labels)
            step += 1
            batches.set_postfix(loss=f"{loss.item():.3f}")
        train_time = time.perf_counter() - started
        metrics = {"train_loss": loss_sum / len(train_features)}
        started = time.perf_counter()
        metrics.update(evaluate(model, tokenizer, eval_features, config.task, config.batch_size, config.device))
        _save_resume_state(out_dir, epoch, model, optimizer, step)
        recorder.snapshot(epoch, metrics, time_s=train_time, eval_time_s=time.perf_counter() - started, global_step=step)
        log(f"{config.method} epoch {epoch}/{config.epochs}: train loss {metrics['train_loss']:.4f}, "
            f"{spec.main_metric} {metrics[spec.main_metric]:.4f}, {train_time:.1f}s")
    recorder.finish()
    return load_run(out_dir)


def resume(run_dir: str | Path, *, epochs: int | None = None, progress: bool = True, log: Callable[[str], None] = print) -> Run:
    """Continue a run from its last finished epoch, with the configuration stored in its run.json.

    Resuming with the same ``epochs`` reproduces the uninterrupted run exactly. A larger
    ``epochs`` extends it: the learning-rate schedule is then stretched over the new total
    from the step reached, so the result differs from a run planned that long from the start.
    """
    meta = read_json(Path(run_dir) / "run.json", "run.json")
    if "config" not in meta:
        raise InputError(f"{Path(run_dir) / 'run.json'}: has no 'config' (not written by tlora-analysis train), cannot resume")
    config = TrainConfig.from_dict(meta["config"])
    if epochs is not None:
        config.epochs = epochs
    return train(config, run_dir, resume=True, progress=progress, log=log)


def restore_model(run: Run | str | Path, epoch: int | None = None, device: str = "cpu"):
    """Rebuild the fine-tuned model of a recorded run at ``epoch`` (default: the last one).

    Loads the base model named in run.json, injects adapters with the run's seeds and
    copies the snapshot's adapter tensors and head into it.
    """
    run = run if isinstance(run, Run) else load_run(run)
    if "config" not in run.meta:
        raise InputError(f"{run.path / 'run.json'}: has no 'config'; only runs written by tlora-analysis train can be restored")
    config = TrainConfig.from_dict({**run.meta["config"], "device": device})
    epoch = run.epochs[-1] if epoch is None else epoch
    tensors = run.snapshot_tensors(epoch)
    from .data.glue import TASKS

    model = _build_model(config, TASKS[config.task].num_labels)
    for name, layer in adapter_layers(model).items():
        recorded = run.layers.get(name)
        if recorded is None:
            raise InputError(f"{run.path}: run.json has no layer {name!r} that the rebuilt model adapts")
        for key, checksum in recorded.get("frozen_sha256", {}).items():
            if tensor_sha256(getattr(layer, key)) != checksum:
                raise InputError(f"{run.path}: frozen matrix {key} of {name} does not match its recorded checksum")
        layer.load_trainable_tensors({k: tensors[f"{name}.{k}"] for k in layer.trainable_tensors()})
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith(HEAD_PREFIX):
                params[key[len(HEAD_PREFIX):]].copy_(value)
    return model.eval()
