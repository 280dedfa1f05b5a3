"""Exact resume: what a run saves after each epoch besides its snapshot, and how it is put back."""

from __future__ import annotations

from pathlib import Path

import torch

from ..adapters import adapter_layers
from ..config import TrainConfig
from ..distributed import layout_like, whole_tensor
from ..errors import InputError
from ..store import LEGACY_METHOD_NAMES, read_resume_state

__all__ = ["resume_tensors", "load_resume_state", "restore_optimizer", "check_resumable"]


def resume_tensors(names: dict[int, str], optimizer) -> dict[str, torch.Tensor]:
    """The trained parameters (named by ``names``, from ``id``) and their optimizer state, whole.
    Every process calls it: under FSDP it gathers the shards."""
    tensors = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            tensors[f"param.{names[id(p)]}"] = whole_tensor(p)
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim.{names[id(p)]}.{key}"] = whole_tensor(torch.as_tensor(value))
    return tensors


def load_resume_state(run_dir: Path, epoch: int, model, expected_step: int) -> dict[str, dict[str, torch.Tensor]]:
    """Load the parameters saved after ``epoch`` into ``model`` (before it is wrapped for several
    processes) and return the optimizer state by parameter name, for :func:`restore_optimizer`.
    The saved step must be where that epoch ends."""
    tensors, step = read_resume_state(run_dir, epoch)
    where = Path(run_dir) / "resume"
    if step != expected_step:
        raise InputError(f"{where}: epoch {epoch}'s state records step {step if step is not None else '(none)'}, but epoch {epoch} "
                         f"of this run ends at step {expected_step}; the resume state does not belong to this run's settings")
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    saved = {key[len("param."):] for key in tensors if key.startswith("param.")}
    if saved != trainable:
        raise InputError(f"{where}: holds parameters {sorted(saved - trainable)[:3] or '(none extra)'} and lacks "
                         f"{sorted(trainable - saved)[:3] or '(none)'}; it does not match the model this run trains")
    with torch.no_grad():
        for name in saved:
            value = tensors[f"param.{name}"]
            if value.numel() != params[name].numel() or not value.is_floating_point():  # TLoRA's α was once stored 0-d
                raise InputError(f"{where}: param.{name} is {value.dtype} {tuple(value.shape)}, the model has {tuple(params[name].shape)}")
            params[name].copy_(value.reshape(params[name].shape))
    return {name: state for name in params if (state := {k.rsplit(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"optim.{name}.")})}


def restore_optimizer(model, optimizer, state: dict[str, dict[str, torch.Tensor]]) -> None:
    """Give each parameter its saved optimizer state, laid out as the parameter is (sharded under FSDP)."""
    for name, param in model.named_parameters():
        if name in state:
            optimizer.state[param] = {k: v if k == "step" else layout_like(v, param) for k, v in state[name].items()}


def check_resumed_data(meta: dict, config: TrainConfig, out_dir: Path, data_sha256: str) -> None:
    """A resumed run trains on the data it was trained on: the digest recorded at training time
    (runs recorded before digests were kept are not checked)."""
    where = out_dir / "run.json"
    recorded = meta.get("data_sha256")
    if recorded is not None and recorded != data_sha256:
        paths = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (("data_dir", config.data_dir), ("data_file", config.data_file)) if v)
        raise InputError(f"{where}: the data now at {paths or 'the default task'} is not the data this run was trained on "
                         f"(sha256 {data_sha256[:12]}, recorded {str(recorded)[:12]}); pass --data-dir or --data-file with the original data")


def check_resumable(meta: dict, config: TrainConfig, out_dir: Path, model) -> None:
    """A resumed run must rebuild exactly the adapters its header records."""
    where = out_dir / "run.json"
    expected = config.method
    if config.method == "peft" and isinstance(meta.get("peft_config"), dict):  # a user's config records its own peft method
        from ..peft_types import method_of_config

        expected = method_of_config(meta["peft_config"])
    if LEGACY_METHOD_NAMES.get(meta.get("method"), meta.get("method")) != expected:
        raise InputError(f"{where}: records method {meta.get('method')!r} but its config says {config.method!r}")
    if meta.get("seed", config.seed) != config.seed:
        raise InputError(f"{where}: records seed {meta.get('seed')!r} but its config says {config.seed!r}; "
                         "the frozen matrices would differ from the recorded ones")
    layers = meta.get("layers", {})
    for name, layer in adapter_layers(model).items():
        recorded = layers.get(name)
        if not isinstance(recorded, dict) or recorded.get("seed") != layer.seed or recorded.get("rank") != layer.rank:
            raise InputError(f"{where}: layer {name!r} is not recorded with the seed and rank that its config rebuilds")
