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
