"""Inspect the update geometry of any saved checkpoint, and export runs for other tools.

``inspect_checkpoint(path)`` reads a run directory, a snapshot file, a PEFT LoRA adapter directory,
or (with ``base=``) a fully fine-tuned model directory, whose ΔW = W_ft − W0 goes through
the same factored code after one dense SVD per layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import torch

from .analysis import module_and_layer, rank_measures
from .config import ANALYSIS
from .errors import InputError
from .factored import FactoredDelta
from .io import inside, read_json, refuse_pickle, refuse_pickled_files
from .methods import METHOD_SPECS, method_class
from .models import base_weights, resolve_model
from .sources import SingleState, open_updates
from .tensors import read_tensors

__all__ = ["inspect_checkpoint", "inspect_totals", "FullFineTune"]

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
    return open_updates(path, base)


def inspect_checkpoint(path: str | Path, epoch: int | None = None, base: str | None = None, max_rank: int | None = None,
            intruder_k: int = ANALYSIS.intruder_k) -> pd.DataFrame:
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
    if max_rank is not None and (isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1):
        raise InputError(f"--max-rank must be a whole number of at least 1, got {max_rank!r}")
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
        weights = source.base_weights if isinstance(source, FullFineTune) else base_weights(base, list(deltas), {n: d.shape for n, d in deltas.items()})
        amp = amplification(source, weights, [epoch]).set_index("name")
        intruders = intruder_dimensions(source, weights, [epoch], k=intruder_k).groupby("name")["is_intruder"].sum()
        table["amplification"] = table["name"].map(amp["amplification"])
        table["intruders"] = table["name"].map(intruders).astype(int)
    table.attrs.update({"path": str(path), "method": source.method, "epoch": epoch, "base": base, "intruder_k": intruder_k,
                        "totals": inspect_totals(source, table)})
    return table


def inspect_totals(source, table: pd.DataFrame) -> dict:
    """Totals for an :func:`inspect_checkpoint` table: layers, overall ‖ΔW‖_F, and the parameters that define the updates."""
    spec = METHOD_SPECS.get(source.method)
    if spec is not None and spec.adapts_layers:
        trainable, frozen = method_class(source.method).update_counts(source.layers)
        frozen = frozen if spec.frozen == "random" else 0
    else:  # a full fine-tune read against its base trains every entry
        trainable, frozen = sum(o * i for o, i in (map(int, s.split("x")) for s in table["shape"])), 0
    counts = source.meta.get("parameter_counts", {})
    return {
        "method": source.method, "layers": len(table), "total_frobenius": float(math.sqrt((table.frobenius**2).sum())),
        "update_trainable_params": trainable, "update_frozen_random_params": frozen,
        "other_trainable_params": counts.get("other_trainable"),
    }


def to_json(table: pd.DataFrame) -> str:
    """The :func:`inspect_checkpoint` table and its totals as JSON (NaN -> null)."""
    records = json.loads(table.to_json(orient="records"))
    return json.dumps({**{k: v for k, v in table.attrs.items() if k != "totals"}, "totals": table.attrs["totals"], "layers": records}, indent=2)
