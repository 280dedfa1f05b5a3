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

from .analysis import module_and_layer, rank_measures
from .config import ANALYSIS
from .errors import InputError
from .methods import METHOD_SPECS, method_class
from .models import base_weights
from .sources import open_updates
from .sources.finetuned import FullFineTune

__all__ = ["inspect_checkpoint", "inspect_totals", "FullFineTune", "to_json"]

TOP_SINGULAR_VALUES = 4


def _open(path: str | Path, base: str | None, max_rank: int | None):
    """Any source; a fine-tune read with ``max_rank`` keeps each update's top singular directions."""
    source = open_updates(path, base)
    return source.truncated(max_rank) if max_rank is not None and isinstance(source, FullFineTune) else source


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
                        "notices": list(getattr(source, "notices", []) or []),
                        "totals": inspect_totals(source, table)})
    return table


def inspect_totals(source, table: pd.DataFrame) -> dict:
    """Totals for an :func:`inspect_checkpoint` table: layers, overall ‖ΔW‖_F, and the parameters that define the updates."""
    trainable, frozen = update_counts(source, table)
    counts = source.meta.get("parameter_counts", {})
    return {
        "method": source.method, "layers": len(table), "total_frobenius": float(math.sqrt((table.frobenius**2).sum())),
        "update_trainable_params": trainable, "update_frozen_random_params": frozen,
        "other_trainable_params": counts.get("other_trainable"),
    }


def update_counts(source, table: pd.DataFrame) -> tuple[int, int]:
    """(trained, frozen random) numbers that define a source's updates: counted from its tensors where it was
    read from a file, by the method's class for this toolkit's methods, as recorded from the model for a run of
    a peft model, and every entry of each ΔW for a fine-tune."""
    if getattr(source, "update_counts", None) is not None:
        return source.update_counts
    spec = METHOD_SPECS.get(source.method)
    if spec is not None and spec.layer is not None:
        trainable, frozen = method_class(source.method).update_counts(source.layers)
        return trainable, frozen if spec.frozen == "random" else 0
    counts = source.meta.get("parameter_counts")
    if isinstance(counts, dict) and isinstance(counts.get("adapter_trainable"), int) and isinstance(counts.get("frozen_random"), int):
        return counts["adapter_trainable"], counts["frozen_random"]
    return sum(o * i for o, i in (map(int, s.split("x")) for s in table["shape"])), 0  # a full fine-tune trains every entry


def to_json(table: pd.DataFrame) -> str:
    """The :func:`inspect_checkpoint` table and its totals as JSON (NaN -> null)."""
    records = json.loads(table.to_json(orient="records"))
    return json.dumps({**{k: v for k, v in table.attrs.items() if k != "totals"}, "totals": table.attrs["totals"], "layers": records}, indent=2)
