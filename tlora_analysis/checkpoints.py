"""Inspect the update geometry of any saved checkpoint, and export runs for other tools.

``inspect(path)`` reads a run directory, a snapshot file, a PEFT LoRA adapter directory,
or (with ``base=``) a fully fine-tuned model directory, whose ΔW = W_ft − W0 goes through
the same factored code after one dense SVD per layer.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch

from .adapters import inject_adapters
from .analysis import module_and_layer, rank_measures
from .errors import InputError
from .factored import FactoredDelta
from .methods import METHOD_CLASSES
from .models import base_weights, load_model, model_named_in_file, portable_model_name, resolve_model
from .sources import SingleState, open_updates, refuse_pickle, refuse_pickled_files
from .store import HEAD_PREFIX, atomic_save_tensors, atomic_write_json, inside, load_run, read_json, read_tensors, umask

__all__ = ["inspect", "inspect_totals", "FullFineTune", "export", "load_exported", "TLORA_ADAPTER_FORMAT"]

TLORA_ADAPTER_FORMAT = "tlora-analysis-adapter"
TOP_SINGULAR_VALUES = 4


class FullFineTune(SingleState):
    """A fully fine-tuned model directory read against its base: ΔW = W_ft − W0 for every 2-D weight that changed.

    Embedding matrices are skipped (they are lookups, not linear maps). ``max_rank``
    truncates each update to its top singular directions; by default the SVD is complete.
    """

    method = "full"

    def __init__(self, path: str | Path, base: str, max_rank: int | None = None) -> None:
        self.path, self.name, self.rank = Path(path), Path(path).name, max_rank or 0
        self.meta = {"model": base}
        tuned = _read_model_tensors(self.path)
        original = _read_model_tensors(Path(resolve_model(base)))
        self._deltas: dict[str, FactoredDelta] = {}
        self.base_weights: dict[str, torch.Tensor] = {}
        for key, weight in tuned.items():
            parts = key.split(".")
            if weight.ndim != 2 or parts[-1] != "weight" or "embeddings" in parts or not weight.is_floating_point():
                continue
            match = next((".".join(parts[i:]) for i in range(len(parts)) if ".".join(parts[i:]) in original), None)
            if match is None or original[match].shape != weight.shape:
                continue
            delta = weight.double() - original[match].double()
            if bool(delta.abs().max() > 0):
                self._deltas[key[: -len(".weight")]] = FactoredDelta.from_dense(delta, max_rank)
                self.base_weights[key[: -len(".weight")]] = original[match]
        if not self._deltas:
            raise InputError(f"{self.path}: no 2-D weight differs from base model {base!r} (is it the right base?)")
        self.layers = {name: {"shape": list(d.shape), "rank": d.rank} for name, d in self._deltas.items()}

    def deltas(self, epoch: int = 0) -> dict[str, FactoredDelta]:
        self._check(epoch)
        return self._deltas


def _read_model_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if folder.is_file():
        refuse_pickle(folder)
        return read_tensors(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model directory")
    single = folder / "model.safetensors"
    if single.exists():
        return read_tensors(single)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(inside(folder, index, "the safetensors index"), "safetensors index").get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise InputError(f"{index}: 'weight_map' should map tensor names to file names")
        files = sorted(set(weight_map.values()))
        for name in files:  # plain file names in this folder: no path from the index is followed
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise InputError(f"{index}: weight_map names {name!r:.80}; shards must be .safetensors files in {folder}")
        return {k: v for f in files for k, v in read_tensors(inside(folder, folder / f, "a shard")).items()}
    refuse_pickled_files(folder)
    raise InputError(f"{folder}: no model.safetensors (or sharded model.safetensors.index.json)")


def _open(path: str | Path, base: str | None, max_rank: int | None):
    path = Path(path)
    if base is not None and path.is_dir() and not (path / "run.json").exists() and not (path / "adapter_config.json").exists():
        return FullFineTune(path, base, max_rank)
    return open_updates(path)


def inspect(path: str | Path, epoch: int | None = None, base: str | None = None, max_rank: int | None = None,
            intruder_k: int = 10) -> pd.DataFrame:
    """One row per adapted layer: shape, rank, scale, norms, stable/effective rank and top singular values.

    Args:
        path: a run directory, a snapshot file, a PEFT adapter directory, or (with ``base``)
            a fully fine-tuned model directory.
        epoch: the epoch of a run (default: the last finished one).
        base: the base model. For a full fine-tune it defines ΔW = W_ft − W0; for any
            source it adds ``amplification`` (‖ΔW‖_F / ‖Uᵀ W0 V‖_F) and ``intruders`` (how
            many of the merged weight's top ``intruder_k`` singular vectors have no
            counterpart in W0).
        max_rank: full fine-tunes only: keep each ΔW's top singular directions.
        intruder_k: how many top singular vectors the intruder count looks at.
    """
    from .analysis import amplification, intruder_dimensions

    if isinstance(intruder_k, bool) or not isinstance(intruder_k, int) or intruder_k < 1:
        raise InputError(f"--intruder-k must be a whole number of at least 1, got {intruder_k!r}")
    source = _open(path, base, max_rank)
    if not source.layers:
        raise InputError(f"{path}: a {source.method!r} run has no adapted layers, so no update to inspect")
    epoch = source.epochs[-1] if epoch is None else epoch
    if epoch not in source.epochs:
        raise InputError(f"{path}: no epoch {epoch} (finished: {source.epochs})")
    scales = source.scales(epoch)
    deltas = source.deltas(epoch)
    rows = []
    for name, delta in deltas.items():
        module, layer = module_and_layer(name)
        s = delta.singular_values().numpy()
        rows.append({
            "name": name, "module": module, "layer": layer, "shape": f"{delta.shape[0]}x{delta.shape[1]}", "rank": delta.rank,
            "scale": scales.get(name, math.nan), "frobenius": delta.frobenius_norm(), "spectral": delta.spectral_norm(),
            **rank_measures(s),
            **{f"s{i + 1}": float(s[i]) if i < len(s) else math.nan for i in range(TOP_SINGULAR_VALUES)},
        })
    table = pd.DataFrame(rows)
    if base is not None:
        weights = source.base_weights if isinstance(source, FullFineTune) else base_weights(base, list(deltas))
        amp = amplification(source, weights, [epoch]).set_index("name")
        intruders = intruder_dimensions(source, weights, [epoch], k=intruder_k).groupby("name")["is_intruder"].sum()
        table["amplification"] = table["name"].map(amp["amplification"])
        table["intruders"] = table["name"].map(intruders).astype(int)
    table.attrs.update({"path": str(path), "method": source.method, "epoch": epoch, "base": base, "intruder_k": intruder_k,
                        "totals": inspect_totals(source, table)})
    return table


def inspect_totals(source, table: pd.DataFrame) -> dict:
    """Totals for an :func:`inspect` table: layers, overall ‖ΔW‖_F, and the parameters that define the updates."""
    shapes = [tuple(map(int, s.split("x"))) for s in table["shape"]]
    ranks = table["rank"].tolist()
    if source.method in METHOD_CLASSES:
        per_layer = [METHOD_CLASSES[source.method].parameter_counts(o, i, r) for r, (o, i) in zip(ranks, shapes)]
        trainable, frozen = sum(t for t, _ in per_layer), sum(f for _, f in per_layer)
    else:  # a full fine-tune trains every entry
        trainable, frozen = sum(o * i for o, i in shapes), 0
    counts = source.meta.get("parameter_counts", {})
    return {
        "method": source.method, "layers": len(table), "total_frobenius": float(math.sqrt((table.frobenius**2).sum())),
        "update_trainable_params": trainable, "update_frozen_random_params": frozen,
        "other_trainable_params": counts.get("other_trainable"),
    }


# ----------------------------------------------------------------------------- export
def export(run_dir: str | Path, out: str | Path, epoch: int | None = None) -> Path:
    """Write a LoRA run as a PEFT adapter directory, or a TLoRA run as this package's adapter format.

    TLoRA format (``tlora_config.json`` + ``tlora_model.safetensors``): the config names the
    base model, rank, targets and run seed, and per layer its shape, seed and frozen-matrix
    checksums; the tensors are each layer's ``tlora_B`` and ``tlora_alpha`` and the
    classifier head (``trainable.<name>``). :func:`load_exported` rebuilds the model from it.
    """
    run = load_run(run_dir)
    if run.method not in ("lora", "tlora"):
        raise InputError(f"{run_dir}: only LoRA and TLoRA runs can be exported, this one is {run.method!r}")
    epoch = run.epochs[-1] if epoch is None else epoch
    tensors = run.snapshot_tensors(epoch)
    out = Path(out)
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise InputError(f"{out}: exists and is not an empty directory; choose a new --out")
    config = run.meta.get("config", {})
    base = portable_model_name(run.meta.get("model"))
    head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
    # Build the export beside its destination and rename it into place: a failure leaves no half export.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if run.method == "lora":
            layer = next(iter(run.layers.values()))
            peft_tensors = {f"base_model.model.{n}.lora_{w}.weight": tensors[f"{n}.lora_{w}"] for n in run.layers for w in "AB"}
            peft_tensors.update({f"base_model.model.{k}": v for k, v in head.items()})
            atomic_save_tensors(staging / "adapter_model.safetensors", peft_tensors, {"format": "pt"})
            atomic_write_json(staging / "adapter_config.json", {
                "peft_type": "LORA", "task_type": "SEQ_CLS", "base_model_name_or_path": base, "r": run.rank,
                "lora_alpha": layer["lora_alpha"], "target_modules": config.get("targets", sorted({module_and_layer(n)[0] for n in run.layers})),
                "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
                "modules_to_save": sorted({k.split(".")[0] for k in head}) or None, "rank_pattern": {}, "alpha_pattern": {},
                "init_lora_weights": True, "inference_mode": True,
            })
        else:
            kept = {k: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX) or k.rsplit(".", 1)[-1] in ("tlora_B", "tlora_alpha")}
            atomic_save_tensors(staging / "tlora_model.safetensors", kept, {"format": TLORA_ADAPTER_FORMAT})
            atomic_write_json(staging / "tlora_config.json", {
                "format": TLORA_ADAPTER_FORMAT, "format_version": 1, "base_model": base, "num_labels": head_labels(head),
                "rank": run.rank, "targets": config.get("targets"), "seed": run.meta.get("seed", 0), "epoch": epoch,
                "layers": run.layers, "source_run": run.name,
            })
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's 0700 would hide the export from colleagues
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def head_labels(head: dict[str, torch.Tensor]) -> int | None:
    biases = [v for k, v in head.items() if k.endswith("bias") and v.ndim == 1]
    return int(biases[-1].shape[0]) if biases else None


def load_exported(path: str | Path, device: str = "cpu", base_model: str | None = None):
    """Rebuild the fine-tuned model from an exported TLoRA adapter directory (checksums verified).

    The base model is the one its config names if that is the embedded default or a local
    directory; otherwise pass ``base_model`` (a name read from a file is never fetched).
    """
    path = Path(path)
    config = read_json(path / "tlora_config.json", "tlora_config.json")
    if config.get("format") != TLORA_ADAPTER_FORMAT:
        raise InputError(f"{path / 'tlora_config.json'}: 'format' should be {TLORA_ADAPTER_FORMAT!r}")
    tensors = read_tensors(path / "tlora_model.safetensors")
    from .training import load_snapshot_into

    base = model_named_in_file(config.get("base_model"), path / "tlora_config.json", base_model)
    model = load_model(base, config.get("num_labels") or 2, device)
    inject_adapters(model, "tlora", int(config["rank"]), config["targets"], seed=int(config["seed"]))
    load_snapshot_into(model, config["layers"], tensors, path / "tlora_config.json")
    return model.eval()


def to_json(table: pd.DataFrame) -> str:
    """The :func:`inspect` table and its totals as JSON (NaN -> null)."""
    records = json.loads(table.to_json(orient="records"))
    return json.dumps({**{k: v for k, v in table.attrs.items() if k != "totals"}, "totals": table.attrs["totals"], "layers": records}, indent=2)
