"""Distributions of the trained matrices' entries (TLoRA paper finding 1: B is "Gaussian-like").

The claim becomes numbers: skewness and excess kurtosis (both 0 for a Gaussian) and a
normality test's p-value, per layer or pooled over the layers of a module.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from ..config import ANALYSIS
from ._common import UpdateSource, as_source, epochs_of, module_and_layer, per_run

SHAPIRO_MAX = 5000  # scipy's Shapiro–Wilk p-value is exact up to this many values


def _entries(run, epochs, pool: bool):
    """Yield (key, matrix name, values) per layer, or per module with all layers' entries pooled (layer = -1)."""
    for epoch in epochs_of(run, epochs):
        groups: dict[tuple[str, str], list[np.ndarray]] = {}
        for name, matrices in run.trainable(epoch).items():
            module, layer = module_and_layer(name)
            for matrix, tensor in matrices.items():
                values = tensor.double().flatten().numpy()
                if pool:
                    groups.setdefault((module, matrix), []).append(values)
                else:
                    yield {"run": run.name, "method": run.method, "module": module, "layer": layer, "epoch": epoch}, matrix, values
        for (module, matrix), parts in groups.items():
            yield {"run": run.name, "method": run.method, "module": module, "layer": -1, "epoch": epoch}, matrix, np.concatenate(parts)


def describe(values: np.ndarray) -> dict[str, float]:
    """Moments and a normality test of a sample. Constant samples (B = 0 at epoch 0) give NaN shape statistics."""
    values = np.asarray(values, dtype=np.float64)
    out = {"n": int(values.size), "mean": float(values.mean()), "std": float(values.std())}
    if values.size < 3 or out["std"] == 0.0:
        return {**out, "skewness": math.nan, "excess_kurtosis": math.nan, "normality_test": "", "normality_statistic": math.nan, "normality_p": math.nan}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if values.size <= SHAPIRO_MAX:
            test, (statistic, p) = "shapiro", stats.shapiro(values)
        else:
            test, (statistic, p) = "dagostino", stats.normaltest(values)
    return {
        **out,
        "skewness": float(stats.skew(values)),
        "excess_kurtosis": float(stats.kurtosis(values)),
        "normality_test": test,
        "normality_statistic": float(statistic),
        "normality_p": float(p),
    }


@per_run
def weight_distributions(run: UpdateSource, epochs: Iterable[int] | None = None, pool: bool = False) -> pd.DataFrame:
    """Mean, std, skewness, excess kurtosis and a normality test (Shapiro–Wilk up to 5,000 values,
    D'Agostino–Pearson above) of the trained matrices' entries: B for TLoRA, A and B for LoRA.

    One row per (layer, epoch, matrix); with ``pool=True`` one per (module, epoch, matrix)
    over all layers' entries, marked ``layer = -1``.
    """
    run = as_source(run)
    return pd.DataFrame([{**key, "matrix": matrix, **describe(values)} for key, matrix, values in _entries(run, epochs, pool)])


@per_run
def weight_histograms(run: UpdateSource, epochs: Iterable[int] | None = None, bins: int = ANALYSIS.histogram_bins, pool: bool = True) -> pd.DataFrame:
    """Histogram of the trained matrices' entries: one row per bin with its edges, count and density
    (``numpy.histogram``), and the density of the normal with the sample's mean and std at the bin centre."""
    run = as_source(run)
    rows = []
    for key, matrix, values in _entries(run, epochs, pool):
        counts, edges = np.histogram(values, bins=bins)
        width = np.diff(edges)
        density = counts / (counts.sum() * width)
        centres = (edges[:-1] + edges[1:]) / 2
        std = values.std()
        normal = stats.norm.pdf(centres, values.mean(), std) if std > 0 else np.full_like(centres, np.nan)
        for i in range(bins):
            rows.append({**key, "matrix": matrix, "bin": i, "left": edges[i], "right": edges[i + 1], "count": int(counts[i]),
                         "density": density[i], "normal_density": normal[i]})
    return pd.DataFrame(rows)
