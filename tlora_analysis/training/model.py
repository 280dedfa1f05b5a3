"""The model a run trains, built from its config, and rebuilt later from its record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..adapters import CLASSIFIER_HEADS, adapter_layers, inject_adapters, tensor_sha256
from ..config import TrainConfig
from ..data import TASKS
from ..errors import InputError
from ..methods import METHOD_SPECS
from ..models import load_causal_lm, load_model, model_named_in_file
from ..store import HEAD_PREFIX, Run, load_run

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


def build_model(config: TrainConfig, num_labels: int):
    """The base model with the method's adapters (or, head-only, the head alone) trainable."""
    seed_everything(config.seed)  # the classifier head's initialization depends on it
    if TASKS[config.task].kind == "causal-lm":
        model = load_causal_lm(config.model, config.device)
    else:
        model = load_model(config.model, num_labels, config.device)
    if not METHOD_SPECS[config.method].adapts_layers:
        model.requires_grad_(False)
        for name, param in model.named_parameters():
            if name.split(".")[0] in CLASSIFIER_HEADS:
                param.requires_grad_(True)
    else:
        inject_adapters(model, config.method, config.rank, config.targets, alpha=config.alpha, seed=config.seed,
                        modules_to_save=CLASSIFIER_HEADS, init=config.init)
    return model


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
    if not isinstance(run.meta.get("config"), dict):
        raise InputError(f"{run.path / 'run.json'}: has no 'config'; only runs written by tlora-analysis train can be restored")
    check_device(device)
    config = TrainConfig.from_dict({**run.meta["config"], "device": device})
    config.model = model_named_in_file(config.model, run.path / "run.json", model)
    epoch = run.epochs[-1] if epoch is None else epoch
    tensors = run.snapshot_tensors(epoch)
    model = build_model(config, TASKS[config.task].num_labels)
    load_snapshot_into(model, run.layers, tensors, run.path / "run.json")
    return model.eval()
