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
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import adapter_layers, inject_adapters, tensor_sha256
from .config import TrainConfig
from .data import TASKS, compute_metrics, load_task
from .data.lm import encode_lm, predicted_tokens
from .distributed import full_parameters, like, processes, squared_grad_norms, whole
from .errors import InputError
from .io import inside, read_json
from .live import make_sinks
from .lock import RunLock
from .methods import METHOD_SPECS
from .models import load_causal_lm, load_model, load_tokenizer, model_named_in_file
from .recording import DeltaRecorder, trainable_groups
from .store import HEAD_PREFIX, LEGACY_METHOD_NAMES, Run, load_run
from .tensors import atomic_save_tensors, read_tensors

__all__ = ["TrainConfig", "train", "resume", "restore_model", "load_snapshot_into"]

HEAD_MODULES = ("classifier", "score")  # BERT/RoBERTa and decoder-style classification heads


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_model(config: TrainConfig, num_labels: int):
    _seed_everything(config.seed)  # the classifier head's initialization depends on it
    if TASKS[config.task].kind == "causal-lm":
        model = load_causal_lm(config.model, config.device)
    else:
        model = load_model(config.model, num_labels, config.device)
    if not METHOD_SPECS[config.method].adapts_layers:
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if name.split(".")[0] in HEAD_MODULES:
                param.requires_grad_(True)
    else:
        inject_adapters(model, config.method, config.rank, config.targets, alpha=config.alpha, seed=config.seed, modules_to_save=HEAD_MODULES,
                        init=config.init)
    return model


def _encode(tokenizer, examples: list[dict], spec, max_length: int) -> list[dict]:
    """Token ids and labels: a class (or score) per example, or per token for a causal LM."""
    if spec.kind == "causal-lm":
        return encode_lm(tokenizer, examples, max_length)
    texts = [[ex[c] for ex in examples] for c in spec.text_columns]
    encoded = tokenizer(*texts, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": ex["label"]} for i, ex in enumerate(examples)]


def _batches(tokenizer, features: list[dict], batch_size: int, order: list[int], device: str):
    for start in range(0, len(order), batch_size):
        yield _batch(tokenizer, [features[i] for i in order[start : start + batch_size]], device)


def _batch(tokenizer, chunk: list[dict], device: str):
    """Pad one batch (dynamic padding); token labels (causal LM) are padded with -100, which the loss ignores."""
    batch = tokenizer.pad([{k: v for k, v in f.items() if k != "labels"} for f in chunk], return_tensors="pt")
    if isinstance(chunk[0]["labels"], list):
        width = batch["input_ids"].shape[1]
        pad = [[-100] * (width - len(f["labels"])) for f in chunk]
        left = tokenizer.padding_side == "left"
        labels = torch.tensor([p + f["labels"] if left else f["labels"] + p for p, f in zip(pad, chunk)])
    else:
        labels = torch.tensor([f["labels"] for f in chunk])
    return {k: v.to(device) for k, v in batch.items()}, labels.to(device)


@torch.no_grad()
def evaluate(model, tokenizer, features: list[dict], task: str, batch_size: int, device: str) -> dict[str, float]:
    model.eval()
    if TASKS[task].kind == "causal-lm":
        return _evaluate_lm(model, tokenizer, features, batch_size, device)
    predictions, labels, losses = [], [], []
    for batch, y in _batches(tokenizer, features, batch_size, list(range(len(features))), device):
        out = model(**batch, labels=y)
        losses.append(float(out.loss) * len(y))
        logits = out.logits.float()
        predictions.append(logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1))
        labels.append(y)
    metrics = compute_metrics(task, torch.cat(predictions).cpu().numpy(), torch.cat(labels).cpu().numpy())
    return {"eval_loss": sum(losses) / max(len(features), 1), **metrics}


def _evaluate_lm(model, tokenizer, features: list[dict], batch_size: int, device: str) -> dict[str, float]:
    """Mean next-token loss over every predicted (unmasked) token, and its exponential, the perplexity."""
    total, tokens = 0.0, 0
    for batch, y in _batches(tokenizer, features, batch_size, list(range(len(features))), device):
        predicted = int((y[:, 1:] != -100).sum())  # the model shifts the labels by one
        total += float(model(**batch, labels=y).loss) * predicted
        tokens += predicted
    loss = total / max(tokens, 1)
    return {"perplexity": math.exp(min(loss, 700.0)), "eval_loss": loss}


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    warmup = max(1, int(config.warmup_ratio * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * max(0.0, (total - step) / max(1, total - warmup))


def _resume_tensors(names: dict[int, str], optimizer) -> dict[str, torch.Tensor]:
    """The trained parameters (named by ``names``, from ``id``) and their optimizer state, whole.
    Every process calls it: under FSDP it gathers the shards."""
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors[f"param.{names[id(p)]}"] = whole(p)
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = whole(torch.as_tensor(value))
    return tensors


def _save_resume_state(run_dir: Path, epoch: int, tensors: dict[str, torch.Tensor], step: int) -> None:
    inside(run_dir, run_dir / "resume", "the resume folder")
    atomic_save_tensors(run_dir / "resume" / f"epoch_{epoch:03d}.safetensors", tensors, {"epoch": str(epoch), "step": str(step)})
    # Keep the previous epoch's state too: until run.json lists this epoch, resume starts from that one.
    for old in (run_dir / "resume").glob("epoch_*.safetensors"):
        number = old.stem.split("_", 1)[1]
        if number.isdigit() and int(number) < epoch - 1 and not old.is_symlink():
            old.unlink()


def _load_resume_state(run_dir: Path, epoch: int, model, expected_step: int) -> dict[str, dict[str, torch.Tensor]]:
    """Load the parameters saved after ``epoch`` into ``model`` (before it is wrapped for several
    processes) and return the optimizer state by parameter name, for :func:`_restore_optimizer`.
    The saved step must be where that epoch ends."""
    path = inside(run_dir, run_dir / "resume" / f"epoch_{epoch:03d}.safetensors", "the resume state")
    tensors = read_tensors(path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        step_text = (handle.metadata() or {}).get("step", "")
    if not step_text.isdigit() or int(step_text) != expected_step:
        raise InputError(f"{path}: records step {step_text or '(none)'}, but epoch {epoch} of this run ends at step {expected_step}; "
                         "the resume state does not belong to this run's settings")
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    saved = {key[len("param."):] for key in tensors if key.startswith("param.")}
    if saved != trainable:
        raise InputError(f"{path}: holds parameters {sorted(saved - trainable)[:3] or '(none extra)'} and lacks "
                         f"{sorted(trainable - saved)[:3] or '(none)'}; it does not match the model this run trains")
    with torch.no_grad():
        for name in saved:
            value = tensors[f"param.{name}"]
            if value.numel() != params[name].numel() or not value.is_floating_point():  # TLoRA's α was once stored 0-d
                raise InputError(f"{path}: param.{name} is {value.dtype} {tuple(value.shape)}, the model has {tuple(params[name].shape)}")
            params[name].copy_(value.reshape(params[name].shape))
    return {name: state for name in params if (state := {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")})}


def _restore_optimizer(model, optimizer, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Give each parameter its saved optimizer state, laid out as the parameter is (sharded under FSDP)."""
    for name, param in model.named_parameters():
        if name in state:
            optimizer.state[param] = {k: v if k == "step" else like(v, param) for k, v in state[name].items()}


def _check_device(device: str, precision: str = "fp32") -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise InputError(f"--precision bf16: this GPU ({torch.cuda.get_device_name()}) does not support bfloat16")


def _autocast(config: TrainConfig):
    """bfloat16 autocast for ``--precision bf16``: matrix products in bf16, parameters (the adapters) in float32."""
    return torch.autocast(device_type=torch.device(config.device).type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


def _check_labels(examples: list[dict], num_labels: int, task: str) -> None:
    if num_labels <= 1:  # regression, or a causal LM (no labels)
        return
    bad = next((ex["label"] for ex in examples if not 0 <= int(ex["label"]) < num_labels), None)
    if bad is not None:
        raise InputError(f"task {task!r}: label {bad} is outside 0..{num_labels - 1}")


def _check_resumable(meta: dict, config: TrainConfig, out_dir: Path, model) -> None:
    """A resumed run must rebuild exactly the adapters its header records."""
    where = out_dir / "run.json"
    if LEGACY_METHOD_NAMES.get(meta.get("method"), meta.get("method")) != config.method:
        raise InputError(f"{where}: records method {meta.get('method')!r} but its config says {config.method!r}")
    if meta.get("seed", config.seed) != config.seed:
        raise InputError(f"{where}: records seed {meta.get('seed')!r} but its config says {config.seed!r}; "
                         "the frozen matrices would differ from the recorded ones")
    layers = meta.get("layers", {})
    for name, layer in adapter_layers(model).items():
        recorded = layers.get(name)
        if not isinstance(recorded, dict) or recorded.get("seed") != layer.seed or recorded.get("rank") != layer.rank:
            raise InputError(f"{where}: layer {name!r} is not recorded with the seed and rank that its config rebuilds")


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
    out_dir = Path(out_dir)
    _check_device(config.device, config.precision)
    data = load_task(config.task, config.data_dir, config.max_train_samples, config.max_eval_samples, config.data_file)
    procs = processes(config.device, config.batch_size, len(data.train), config.sharding)
    progress = progress and procs.writes
    created = not out_dir.exists()
    lock = RunLock.acquire(out_dir) if procs.writes else None  # rank 0 alone writes the run
    recorder = None
    try:
        has_run = (out_dir / "run.json").exists()
        procs.barrier()  # every process has looked before rank 0 writes anything
        if not resume and has_run:
            raise InputError(f"{out_dir}: already holds a run; use --resume to continue it or choose another --out")
        if resume and not has_run:
            raise InputError(f"{out_dir}: no run.json to resume")
        spec = data.spec
        _check_labels(data.train + data.validation, spec.num_labels, config.task)
        tokenizer = load_tokenizer(config.model)
        model = _build_model(config, spec.num_labels)
        train_features = _encode(tokenizer, data.train, spec, config.max_length)
        eval_features = _encode(tokenizer, data.validation, spec, config.max_length)
        if not train_features or not eval_features:
            raise InputError(f"task {config.task!r}: the train or validation split is empty")
        # What the loss averages over, per example: one each, or a causal LM's predicted tokens.
        weights = [predicted_tokens(f) for f in train_features] if spec.kind == "causal-lm" else None
        steps_per_epoch = math.ceil(len(train_features) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs

        step, start_epoch, optimizer_state = 0, 0, {}
        if resume:
            previous = load_run(out_dir)
            _check_resumable(previous.meta, config, out_dir, model)
            start_epoch = previous.epochs[-1] if previous.epochs else 0
            if start_epoch > config.epochs:
                raise InputError(f"{out_dir}: already has {start_epoch} epochs, more than --epochs {config.epochs}")
            if start_epoch > 0:
                step = start_epoch * steps_per_epoch
                optimizer_state = _load_resume_state(out_dir, start_epoch, model, step)

        metadata = {"method": config.method, "task": config.task, "model": config.model, "targets": config.targets, "seed": config.seed,
                    "main_metric": spec.main_metric, "world_size": procs.world, "precision": config.precision,
                    "recorded_dtype": "float32", "config": asdict(config)}
        if procs.writes:  # the model is not yet wrapped: rank 0 reads and evaluates it alone
            recorder = DeltaRecorder(model, out_dir, metadata=metadata, sinks=make_sinks(config.report_to, out_dir))
            if resume:
                recorder.writer.update(config=asdict(config), world_size=procs.world)  # --epochs may have extended the run
                log(f"resuming {out_dir} after epoch {start_epoch}")
            if 0 not in recorder.finished_epochs:
                started = time.perf_counter()
                with _autocast(config):
                    metrics = evaluate(model, tokenizer, eval_features, config.task, config.batch_size, config.device)
                recorder.snapshot(0, metrics, eval_time_s=time.perf_counter() - started, global_step=0)
        procs.barrier()
        trained = procs.wrap(model)
        # After wrapping: FSDP replaces the parameters by their shards (and its root unit keeps
        # them whole after a forward pass, so the names are taken now).
        names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
        _restore_optimizer(model, optimizer, optimizer_state)
        # Gradient norms from the reduced gradients (tensor hooks would see one process's share).
        groups = trainable_groups(model) if config.record_grad_norms and METHOD_SPECS[config.method].adapts_layers else []

        epochs = tqdm(range(start_epoch + 1, config.epochs + 1), desc=f"{config.method} epochs", disable=not progress,
                      initial=start_epoch, total=config.epochs)
        for epoch in epochs:
            model.train()
            torch.manual_seed(config.seed * 100_003 + epoch)  # dropout masks
            order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(config.seed * 7919 + epoch)).tolist()
            started, losses = time.perf_counter(), []
            batches = tqdm(procs.share(order, config.batch_size, weights), desc=f"epoch {epoch}", leave=False, disable=not progress)
            for indices, share in batches:
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, total_steps, config)
                batch, labels = _batch(tokenizer, [train_features[i] for i in indices], config.device)
                with _autocast(config):
                    loss = trained(**batch, labels=labels).loss
                (loss * share).backward()
                if groups:
                    squared = squared_grad_norms(groups)
                    if recorder is not None:
                        recorder.add_gradient_norms(squared)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(procs.mean(loss.item() * share))
                step += 1
                batches.set_postfix(loss=f"{losses[-1]:.3f}")
                if config.log_every_steps and step % config.log_every_steps == 0 and step % steps_per_epoch:
                    with full_parameters(model):
                        if recorder is not None:
                            recorder.log_geometry(step)
            train_time = time.perf_counter() - started
            metrics = {"train_loss": sum(losses) / len(losses)}
            started = time.perf_counter()
            if procs.writes or procs.sharded:  # FSDP's forward pass needs every process
                with _autocast(config):
                    metrics.update(evaluate(model, tokenizer, eval_features, config.task, config.batch_size, config.device))
            resume_tensors = _resume_tensors(names, optimizer)  # every process: FSDP gathers the shards
            if procs.writes:
                _save_resume_state(out_dir, epoch, resume_tensors, step)
            with full_parameters(model):
                if procs.writes:
                    recorder.snapshot(epoch, metrics, time_s=train_time, eval_time_s=time.perf_counter() - started, global_step=step)
                    log(f"{config.method} epoch {epoch}/{config.epochs}: train loss {metrics['train_loss']:.4f}, "
                        f"{spec.main_metric} {metrics[spec.main_metric]:.4f}, {train_time:.1f}s")
            procs.barrier()
        if recorder is not None:
            recorder.finish()
    except BaseException:
        if recorder is not None:
            recorder.close()
        if lock is not None:
            lock.release()
        if created and procs.writes and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a run that never started leaves no empty directory
        procs.close()
        raise
    if lock is not None:
        lock.release()
    procs.barrier()
    procs.close()
    return load_run(out_dir)


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None, model: str | None = None,
           progress: bool = True, log: Callable[[str], None] = print) -> Run:
    """Continue a run from its last finished epoch, with the configuration stored in its run.json.

    Resuming with the same ``epochs`` reproduces the uninterrupted run exactly. A larger
    ``epochs`` extends it: the learning-rate schedule is then stretched over the new total
    from the step reached, so the result differs from a run planned that long from the start.
    ``device`` moves the rest of the run to another device. A Hub model named in run.json is
    loaded only if ``model`` names it (or a local copy of it).
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
    config.model = model_named_in_file(config.model, Path(run_dir) / "run.json", model)
    return train(config, run_dir, resume=True, progress=progress, log=log)


def load_snapshot_into(model, layers: dict, tensors: dict, where: Path) -> None:
    """Copy a snapshot's adapter tensors and head (``trainable.<name>``) into a model that has the
    same adapters injected, after checking its frozen matrices against ``layers``' checksums
    (``layers`` as in run.json; ``where`` names that file in errors)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, layer in adapter_layers(model).items():
            recorded = layers.get(name)
            if recorded is None:
                raise InputError(f"{where}: no entry for adapted layer {name!r}")
            for key, checksum in recorded.get("frozen_sha256", {}).items():
                if tensor_sha256(getattr(layer, key)) != checksum:
                    raise InputError(f"{where}: frozen matrix {key} of {name} does not match its recorded checksum")
            layer.load_trainable_tensors({k: tensors[f"{name}.{k}"] for k in layer.trainable_tensors()})
        for key, value in tensors.items():
            if key.startswith(HEAD_PREFIX):
                params[key[len(HEAD_PREFIX):]].copy_(value)


def restore_model(run: Run | str | Path, epoch: int | None = None, device: str = "cpu", model: str | None = None):
    """Rebuild the fine-tuned model of a recorded run at ``epoch`` (default: the last one).

    Loads the base model named in run.json (or ``model``: see
    :func:`~tlora_analysis.models.model_named_in_file`), injects adapters with the run's
    seeds and copies the snapshot's adapter tensors and head into it.
    """
    run = run if isinstance(run, Run) else load_run(run)
    if "config" not in run.meta:
        raise InputError(f"{run.path / 'run.json'}: has no 'config'; only runs written by tlora-analysis train can be restored")
    _check_device(device)
    config = TrainConfig.from_dict({**run.meta["config"], "device": device})
    config.model = model_named_in_file(config.model, run.path / "run.json", model)
    epoch = run.epochs[-1] if epoch is None else epoch
    tensors = run.snapshot_tensors(epoch)
    model = _build_model(config, TASKS[config.task].num_labels)
    load_snapshot_into(model, run.layers, tensors, run.path / "run.json")
    return model.eval()
