"""The model a run trains, built from its config, and rebuilt later from its record."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..adapters import CLASSIFIER_HEADS, adapter_layers, check_targets, inject_adapters, is_linear, tensor_sha256, untrained_head
from ..config import TrainConfig
from ..data import TASKS
from ..errors import InputError
from ..methods import METHOD_SPECS
from ..models import load_causal_lm, load_model, model_named_in_file
from ..store import HEAD_PREFIX, PeftRun, RecordedRun, load_run

__all__ = ["build_model", "load_snapshot_into", "restore_model", "check_device", "seed_everything"]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_device(device: str, precision: str = "fp32") -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    if precision == "bf16" and device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        raise InputError(f"--precision bf16: this GPU ({torch.cuda.get_device_name()}) does not support bfloat16")


def build_model(config: TrainConfig, num_labels: int, total_steps: int = 1):
    """The base model with the method's adapters (or, head-only, the head alone) trainable; a method trained
    through peft gets its peft adapter (``total_steps``: the run's optimizer steps, which AdaLoRA's schedule needs)."""
    seed_everything(config.seed)  # the classifier head's initialization depends on it
    if TASKS[config.task].kind == "causal-lm":
        model = load_causal_lm(config.model, config.device)
    else:
        model = load_model(config.model, num_labels, config.device)
    if METHOD_SPECS[config.method].trains_through_peft:
        return _peft_model(model, config, total_steps)
    if not METHOD_SPECS[config.method].adapts_layers:
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if name.split(".")[0] in CLASSIFIER_HEADS:
                param.requires_grad_(True)
    else:
        inject_adapters(model, config.method, config.rank, config.targets, alpha=config.alpha, seed=config.seed,
                        modules_to_save=CLASSIFIER_HEADS, init=config.init)
    warning = untrained_head(model)  # a method that leaves the head frozen on a checkpoint without one would sit at chance
    if warning:
        warnings.warn(f"train: {warning}", stacklevel=2)
    return model


def _peft_model(model, config: TrainConfig, total_steps: int):
    """The model with the peft adapter the method (or ``--peft-config``) names; its classifier head trains too (peft's
    ``modules_to_save`` for a classification task), as this toolkit's methods train it."""
    import peft

    from ..methods.peft_format import resolve_module_patterns
    from ..peft_types.engine import peft_config_object

    settings = resolve_module_patterns(config.peft_settings(total_steps), [n for n, _ in model.named_modules() if n],
                                       config.peft_config or f"--method {config.method}")
    if isinstance(settings.get("target_modules"), list):  # peft takes a list of names as suffixes, as --targets does
        check_targets([n for n, m in model.named_modules() if is_linear(m) and n], settings["target_modules"])
    settings.setdefault("task_type", "CAUSAL_LM" if TASKS[config.task].kind == "causal-lm" else "SEQ_CLS")
    peft_config, dropped = peft_config_object(settings, config.peft_config or f"--method {config.method}", training=True)
    if dropped:
        raise InputError(f"{config.peft_config}: fields this peft does not know: {', '.join(dropped)}")
    try:
        return peft.get_peft_model(model, peft_config)
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise InputError(f"--method {config.method}: peft cannot build this adapter on {config.model} "
                         f"({' '.join(str(err).split())[:200]})") from err


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


def restore_model(run: RecordedRun | str | Path, epoch: int | None = None, device: str = "cpu", model: str | None = None):
    """Rebuild the fine-tuned model of a recorded run at ``epoch`` (default: the last one).

    Loads the base model named in run.json (or ``model``: see
    :func:`~tlora_analysis.models.model_named_in_file`), injects adapters with the run's
    seeds and copies the snapshot's adapter tensors and head into it.
    """
    run = run if isinstance(run, RecordedRun) else load_run(run)
    if not isinstance(run.meta.get("config"), dict):
        raise InputError(f"{run.path / 'run.json'}: has no 'config'; only runs written by tlora-analysis train can be restored")
    check_device(device)
    epoch = run.epochs[-1] if epoch is None else epoch
    tensors = run.snapshot_tensors(epoch)
    if isinstance(run, PeftRun):
        return _restore_peft(run, tensors, device, model).eval()
    config = TrainConfig.from_dict({**run.meta["config"], "device": device})
    config.model = model_named_in_file(config.model, run.path / "run.json", model)
    model = build_model(config, TASKS[config.task].num_labels)
    load_snapshot_into(model, run.layers, tensors, run.path / "run.json")
    return model.eval()


def _restore_peft(run: PeftRun, tensors: dict, device: str, model: str | None):
    """A run of a peft model, rebuilt from the peft config it recorded (not the file it was given, which may be gone)."""
    import peft

    from ..peft_types.engine import peft_config_object

    recorded = run.meta["config"]
    task = TASKS.get(recorded.get("task"), TASKS["default"])
    name = model_named_in_file(recorded.get("model"), run.path / "run.json", model)
    seed_everything(int(recorded.get("seed", 0)))
    base = load_causal_lm(name, device) if task.kind == "causal-lm" else load_model(name, task.num_labels, device)
    peft_config, _ = peft_config_object(run.peft_config, str(run.path / "run.json"), training=True)
    restored = peft.get_peft_model(base, peft_config)
    result = peft.set_peft_model_state_dict(restored, {k: v for k, v in tensors.items() if not k.startswith(HEAD_PREFIX)})
    if result.unexpected_keys:
        raise InputError(f"{run.path}: snapshot tensor {result.unexpected_keys[0]!r} has no place in the recorded peft config")
    params = dict(restored.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith(HEAD_PREFIX):
                params[key[len(HEAD_PREFIX):]].copy_(value)
    return restored
