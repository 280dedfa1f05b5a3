"""One line per run: what a reader wants before the details."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ._common import UpdateSource, as_source, learns_scale, per_run
from .norms import norms, scales
from .spectra import effective_rank


@per_run
def summary(run: UpdateSource) -> pd.DataFrame:
    """Final metric, trainable parameters, and at the last epoch: mean ‖ΔW‖_F, mean stable and entropy
    rank, and (TLoRA) the coefficient of variation of α across layers."""
    run = as_source(run)
    last = run.epochs[-1]
    meta = run.meta
    counts = meta.get("parameter_counts", {})
    main = meta.get("main_metric", "accuracy")
    metrics = run.metrics.get(last, {})
    ranks = effective_rank(run, [last])
    row = {
        "run": run.name,
        "method": run.method,
        "rank": run.rank,
        "epochs": last,
        "metric": main,
        "final_metric": metrics.get(main, math.nan),
        "adapter_trainable_params": counts.get("adapter_trainable", math.nan),
        "other_trainable_params": counts.get("other_trainable", math.nan),
        "frozen_random_params": counts.get("frozen_random", math.nan),
        "mean_delta_frobenius": float(norms(run, [last])["frobenius"].mean()),
        "mean_stable_rank": float(np.nanmean(ranks["stable_rank"])) if ranks["stable_rank"].notna().any() else math.nan,
        "mean_entropy_rank": float(np.nanmean(ranks["entropy_rank"])) if ranks["entropy_rank"].notna().any() else math.nan,
        "alpha_cv_across_layers": float(scales(run, [last])["alpha_cv_across_layers"].mean()) if learns_scale(run.method) else math.nan,
    }
    return pd.DataFrame([row])


def comparison_summary(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per source, one row per pair) from :func:`~tlora_analysis.analysis.compare_runs`'s tables: what
    ``tlora-analysis compare`` prints. A pair's cosine is the mean over the layers both sources adapt, at the
    states that met (``epoch_a``, ``epoch_b``); its norm ratio is the ratio of the two sources' mean ‖ΔW‖_F there."""
    per_source = tables["summary"][["run", "method", "epochs", "mean_delta_frobenius", "mean_entropy_rank"]].rename(
        columns={"epochs": "last_epoch"})
    pairs = tables.get("similarity_pairs")
    if pairs is None or not len(pairs):
        return per_source.reset_index(drop=True), pd.DataFrame()
    norms_at = tables["norms"].groupby(["run", "epoch"])["frobenius"].mean()
    rows = []
    for (run_a, run_b), group in pairs.groupby(["run_a", "run_b"], sort=False):
        epoch_a, epoch_b = int(group.epoch_a.iloc[-1]), int(group.epoch_b.iloc[-1])
        last = group[(group.epoch_a == epoch_a) & (group.epoch_b == epoch_b)]
        norm_a, norm_b = norms_at.get((run_a, epoch_a), math.nan), norms_at.get((run_b, epoch_b), math.nan)
        rows.append({"run_a": run_a, "run_b": run_b, "epoch_a": epoch_a, "epoch_b": epoch_b, "layers": len(last),
                     "mean_cosine": float(last.cosine.mean()), "norm_ratio_a_to_b": norm_a / norm_b if norm_b else math.nan})
    return per_source.reset_index(drop=True), pd.DataFrame(rows)
