"""Export a recorded run for other tools, in a directory that this package and peft both read.

Every export holds a *native record*: a one-epoch run directory (``run.json`` and
``snapshots/epoch_NNN.safetensors``, plus ``frozen.safetensors`` where the run keeps its frozen
matrices), so ``inspect``, ``analyze``, ``figures``, ``report`` and :func:`load_exported` read it
as any run. Beside it, what the method's spec lists under ``exports``:

- ``peft-lora``: ``adapter_config.json`` + ``adapter_model.safetensors`` that
  ``peft.PeftModel.from_pretrained`` loads. Any factored ΔW = L·K·R is written exactly as LoRA
  with lora_B = L·K, lora_A = R and lora_alpha = r (scaling 1): TLoRA's α·A·B·C = (α·A·B)·C.
- ``peft-vera``: a peft VeRA adapter with its projections saved (``save_projection``).
- ``peft``: a run of a method trained through peft: its snapshot is the adapter as peft saves it, written
  with the peft config it recorded.
- ``dense``: the fine-tuned model itself (config, tokenizer and every weight, W0 + ΔW in the adapted
  layers), a folder that ``AutoModelFor….from_pretrained`` loads.

Trained modules outside the adapters (the head, a pooler) go into peft's ``modules_to_save`` by their
module paths; ``task_type`` follows the run's task (``CAUSAL_LM`` for ``--task lm``). A peft export names
its base portably (the embedded default by its Hub name), so it loads anywhere the base can be had; on a
machine without the network, load it on the local base in one step:
``PeftModel.from_pretrained(load_model("default"), EXPORT)`` (docs/your-adapters.md).

The base model named in run.json is opened only if it is the embedded default or a local folder (a name
read from a file is never fetched); ``base_model`` gives it otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .data.tasks import TASKS
from .errors import InputError
from .io import atomic_write_json, check_output, umask
from .methods import method_spec
from .methods.peft_format import PEFT_PREFIX
from .models import portable_model_name
from .store import FROZEN_FILE, HEAD_PREFIX, PeftRun, RunWriter, load_run
from .tensors import atomic_save_tensors, read_tensors

__all__ = ["export", "load_exported"]



def export(run_dir: str | Path, out: str | Path, epoch: int | None = None, base_model: str | None = None) -> Path:
    """Write epoch ``epoch`` (default: the last) of a run into the new directory ``out``; returns ``out``."""
    run = load_run(run_dir, base_model)
    exports = ("peft",) if isinstance(run, PeftRun) else method_spec(run.method, str(run.path / "run.json")).exports
    if not exports:
        raise InputError(f"{run_dir}: a {method_spec(run.method).label} run changes no adapted layer, so it has no update to export")
    epoch = run.epochs[-1] if epoch is None else epoch
    run.record(epoch)  # raises if the epoch is not finished
    out = Path(out)
    check_output(out, [run.path], "dir")
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise InputError(f"{out}: exists and is not an empty directory; choose a new --out")
    created = _missing_parents(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:  # built beside its destination and renamed into place: a failure leaves no half export
        _write_native(run, epoch, staging)
        for kind in exports:
            _WRITERS[kind](run, epoch, staging, base_model)
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 would hide the export from colleagues
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # the parents this export made, innermost first, if nothing else went into them
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    return out


def _missing_parents(out: Path) -> list[Path]:
    """The parent folders of ``out`` that do not exist yet, innermost first."""
    missing, folder = [], out.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def _write_native(run, epoch: int, folder: Path) -> None:
    header = {k: v for k, v in run.meta.items() if k not in ("format", "format_version", "epochs", "frozen_file")}
    writer = RunWriter(folder, {**header, "exported_from": {"run": run.name, "epoch": epoch}})
    try:
        if run.meta.get("frozen_file"):
            writer.save_frozen(read_tensors(run.path / FROZEN_FILE))
        writer.write_epoch(epoch, run.snapshot_tensors(epoch), {k: v for k, v in run.record(epoch).items() if k not in ("epoch", "snapshot")})
    finally:
        writer.close()
    (folder / ".lock").unlink(missing_ok=True)


def _head(run, epoch: int) -> dict[str, torch.Tensor]:
    return {k[len(HEAD_PREFIX):]: v for k, v in run.snapshot_tensors(epoch).items() if k.startswith(HEAD_PREFIX)}


def _peft_config(run, peft_type: str, head: dict, **fields) -> dict:
    config = run.meta.get("config") if isinstance(run.meta.get("config"), dict) else {}
    task = config.get("task") or run.meta.get("task", "default")
    causal = task in TASKS and TASKS[task].kind == "causal-lm"
    return {
        "peft_type": peft_type, "task_type": "CAUSAL_LM" if causal else "SEQ_CLS",
        "base_model_name_or_path": portable_model_name(run.meta.get("model")), "r": run.rank,
        "target_modules": sorted(run.layers),  # whole names: a suffix such as "dense" would match more layers in peft
        "modules_to_save": sorted({k.rsplit(".", 1)[0] for k in head}) or None, "fan_in_fan_out": False, "bias": "none",
        "inference_mode": True, **fields,
    }


def _write_peft_lora(run, epoch: int, folder: Path, base_model: str | None = None) -> None:
    head = _head(run, epoch)
    tensors = {}
    for name, delta in run.deltas(epoch).items():
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = (delta.left.double() @ delta.core.double()).float().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = delta.right.float().contiguous()
    tensors.update({f"{PEFT_PREFIX}{k}": v for k, v in head.items()})
    atomic_save_tensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    atomic_write_json(folder / "adapter_config.json", _peft_config(
        run, "LORA", head, lora_alpha=run.rank, lora_dropout=0.0, use_rslora=False, use_dora=False, rank_pattern={},
        alpha_pattern={}, init_lora_weights=True))


def _write_peft_vera(run, epoch: int, folder: Path, base_model: str | None = None) -> None:
    from .methods.vera import vera_frozen_matrices

    head = _head(run, epoch)
    record = next(iter(run.layers.values()))
    projection = tuple(record.get("projection_shape") or record["shape"])
    vera_a, vera_b = vera_frozen_matrices(int(record["seed"]), *projection, run.rank)
    tensors = {"base_model.vera_A": vera_a, "base_model.vera_B": vera_b}
    for name, trained in run.trainable(epoch).items():
        tensors[f"{PEFT_PREFIX}{name}.vera_lambda_d"] = trained["lambda_d"].float().contiguous()
        tensors[f"{PEFT_PREFIX}{name}.vera_lambda_b"] = trained["lambda_b"].float().contiguous()
    tensors.update({f"{PEFT_PREFIX}{k}": v for k, v in head.items()})
    atomic_save_tensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    atomic_write_json(folder / "adapter_config.json", _peft_config(
        run, "VERA", head, projection_prng_key=int(record["seed"]), save_projection=True, vera_dropout=0.0, d_initial=0.1))


def _write_dense(run, epoch: int, folder: Path, base_model: str | None = None) -> None:
    """The fine-tuned model as transformers saves one: the base with W0 + ΔW in each adapted layer and the trained head."""
    from .models import load_causal_lm, load_model, load_tokenizer, model_named_in_file, quiet_loading

    config = run.meta.get("config") if isinstance(run.meta.get("config"), dict) else {}
    task = TASKS.get(config.get("task") or run.meta.get("task", "default"), TASKS["default"])
    name = model_named_in_file(run.meta.get("model"), run.path / "run.json", base_model)
    model = load_causal_lm(name) if task.kind == "causal-lm" else load_model(name, task.num_labels)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for layer, delta in run.deltas(epoch).items():
            module = model.get_submodule(layer)
            update = delta.dense(torch.float64)
            module.weight.add_((update if isinstance(module, torch.nn.Linear) else update.T).to(module.weight.dtype))  # Conv1D: Wᵀ
        for key, value in _head(run, epoch).items():
            params[key].copy_(value)
    with quiet_loading():
        model.save_pretrained(folder, safe_serialization=True)
    load_tokenizer(name).save_pretrained(folder)


def _write_peft(run, epoch: int, folder: Path, base_model: str | None = None) -> None:
    tensors = {k: v for k, v in run.snapshot_tensors(epoch).items() if not k.startswith(HEAD_PREFIX)}
    atomic_save_tensors(folder / "adapter_model.safetensors", tensors, {"format": "pt"})
    atomic_write_json(folder / "adapter_config.json", {**run.peft_config, "inference_mode": True,
                                                       "base_model_name_or_path": portable_model_name(run.meta.get("model"))})


_WRITERS = {"peft-lora": _write_peft_lora, "peft-vera": _write_peft_vera, "peft": _write_peft, "dense": _write_dense}


def load_exported(path: str | Path, device: str = "cpu", base_model: str | None = None):
    """Rebuild the fine-tuned model from an export (frozen matrices checked against their checksums).

    The base model is the one its record names if that is the embedded default or a local
    directory; otherwise pass ``base_model`` (a name read from a file is never fetched).
    """
    from .training import restore_model

    return restore_model(path, device=device, model=base_model)
