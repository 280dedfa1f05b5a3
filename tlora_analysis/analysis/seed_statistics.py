"""Mean, spread and a bootstrap confidence interval of every number over seeds.

A study's tables carry one row per run; :func:`aggregate` folds the seeds of each group
(method, rank, lr, module, layer, epoch, ...) into one row per quantity with its mean,
standard deviation, n and a 95% bootstrap interval (``scipy.stats.bootstrap``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..config import TrainConfig

KEY_COLUMNS = ("layer", "epoch", "epoch_b", "index", "i", "j", "bin", "bin_left", "bin_right", *TrainConfig.__dataclass_fields__)
"""Numeric columns that identify a row rather than measure something; every other numeric column is a quantity."""
RUN_COLUMNS = ("run", "run_a", "run_b", "path")
"""Columns that name a run, which differ between seeds and so are dropped when seeds are folded."""

CONFIDENCE = 0.95
RESAMPLES = 9999
CHUNK_ELEMENTS = 1 << 24
"""Resampled values held at once (128 MiB of float64)."""


def bootstrap_interval(samples: np.ndarray, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap intervals of the mean along the last axis: an (..., 2) array.

    Rows with fewer than two values get NaN; rows whose values are all equal get that value
    twice (scipy's resampling has nothing to spread). The percentile method is used because
    BCa is undefined for the three to five seeds a study usually has.
    """
    from scipy.stats import bootstrap

    samples = np.asarray(samples, dtype=float)
    out = np.full((*samples.shape[:-1], 2), np.nan)
    if samples.shape[-1] < 2 or samples.size == 0:
        return out
    constant = np.all(samples == samples[..., :1], axis=-1)
    out[constant] = samples[constant][..., :1]
    varying = ~constant & np.all(np.isfinite(samples), axis=-1)
    rows = samples[varying]
    low, high = np.empty(len(rows)), np.empty(len(rows))
    # scipy resamples every row with the same indices, drawn from the generator alone, so chunks
    # with a freshly seeded generator give exactly the one-call result; one call over 10,000 rows
    # would hold rows x resamples x n floats (9 GB for a 7B-shaped study's norms).
    chunk = max(1, CHUNK_ELEMENTS // (resamples * max(1, rows.shape[-1])))
    for start in range(0, len(rows), chunk):
        result = bootstrap((rows[start:start + chunk],), np.mean, axis=-1, vectorized=True, confidence_level=confidence,
                           n_resamples=resamples, method="percentile", random_state=np.random.default_rng(seed))
        low[start:start + chunk], high[start:start + chunk] = result.confidence_interval.low, result.confidence_interval.high
    out[varying, 0], out[varying, 1] = low, high
    return out


def aggregate(table: pd.DataFrame, over: str = "seed", by: Sequence[str] | None = None, values: Sequence[str] | None = None,
              confidence: float = CONFIDENCE, resamples: int = RESAMPLES) -> pd.DataFrame:
    """Fold ``over`` (the seeds) out of ``table``: one row per group and quantity.

    Args:
        table: a tidy analysis table of several runs (e.g. ``norms(study)``).
        over: the column whose values are the samples (default ``seed``).
        by: the grouping columns; default every non-numeric column and every key column
            (:data:`KEY_COLUMNS`) except ``over`` and the run names.
        values: the quantities; default every other numeric column.
        confidence: level of the bootstrap interval.
        resamples: bootstrap resamples.

    Returns columns ``by`` + ``quantity, mean, std, n, ci_low, ci_high``; ``std`` is the
    sample standard deviation (ddof = 1) and ``n`` counts the finite samples.
    """
    if over not in table.columns:
        raise ValueError(f"aggregate: the table has no {over!r} column to fold (columns: {', '.join(table.columns)})")
    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]) and not pd.api.types.is_bool_dtype(table[c])]
    if by is None:
        by = [c for c in table.columns if c != over and c not in RUN_COLUMNS and (c not in numeric or c in KEY_COLUMNS)]
    if values is None:
        values = [c for c in numeric if c not in by and c != over and c not in KEY_COLUMNS]
    long = table.melt(id_vars=[*by, over], value_vars=list(values), var_name="quantity", value_name="_value")
    keys = [*by, "quantity"]
    long = long.dropna(subset=["_value"])
    grouped = long.groupby(keys, dropna=False, sort=True)
    long = long.assign(_group=grouped.ngroup(), _n=grouped["_value"].transform("size")).sort_values(["_group", over], kind="stable")
    rows = []
    for n, part in long.groupby("_n"):
        samples = part["_value"].to_numpy(dtype=float).reshape(-1, n)
        ci = bootstrap_interval(samples, confidence, resamples)
        rows.append(part[keys].iloc[::n].reset_index(drop=True).assign(
            mean=samples.mean(axis=1), std=samples.std(axis=1, ddof=1) if n > 1 else np.nan, n=int(n), ci_low=ci[:, 0], ci_high=ci[:, 1]))
    if not rows:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "ci_low", "ci_high"])
    return pd.concat(rows, ignore_index=True).sort_values(keys, kind="stable").reset_index(drop=True)
