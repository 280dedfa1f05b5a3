"""What training recorded besides the updates: per-epoch metrics and each layer's gradient-norm RMS."""

from __future__ import annotations

import math

import pandas as pd

from ._common import UpdateSource, as_source, module_and_layer, per_run

__all__ = ["training_metrics", "gradient_norms"]


@per_run
def training_metrics(run: UpdateSource) -> pd.DataFrame:
    """One row per recorded epoch: train loss and every evaluation metric (empty for a source that holds
    one state and no training record, such as a peft adapter)."""
    run = as_source(run)
    rows = [{"run": run.name, "method": run.method, "epoch": epoch, **metrics} for epoch, metrics in run.metrics.items() if metrics]
    return pd.DataFrame(rows, columns=None if rows else ["run", "method", "epoch"])


@per_run
def gradient_norms(run: UpdateSource) -> pd.DataFrame:
    """One row per layer and epoch: the RMS over the epoch's optimizer steps of the layer's trainable-gradient
    norm (``grad_norm_rms`` in run.json), where the run recorded it."""
    run = as_source(run)
    rows = []
    for epoch in run.epochs:
        recorded = run.record(epoch).get("grad_norm_rms", {}) if hasattr(run, "record") else {}
        for name, value in recorded.items() if isinstance(recorded, dict) else ():
            if isinstance(value, (int, float)) and math.isfinite(value):
                module, layer = module_and_layer(name)
                rows.append({"run": run.name, "method": run.method, "module": module, "layer": layer, "epoch": epoch, "name": name,
                             "grad_norm_rms": float(value)})
    if not rows:
        return pd.DataFrame({"run": [], "method": [], "module": [], "layer": [], "epoch": [], "name": [], "grad_norm_rms": []}).astype(
            {"layer": int, "epoch": int, "grad_norm_rms": float})
    return pd.DataFrame(rows)
