"""Readings of findings 1–3: B's entries are Gaussian-like, norms are stable, α varies across layers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .registry import (
    ALPHA_MIN_CV,
    GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS,
    GAUSSIAN_MAX_ABS_SKEW,
    NORMALITY_ALPHA,
    NORMALITY_TEST_NAMES,
    PAPER_METHOD,
    REFERENCE_METHOD,
    SEED_NOISE_ALPHA,
    STABLE_MAX_CHANGE,
    Verdict,
    at_epoch,
    holds_if_defined,
    reading,
)


# --------------------------------------------------------------------------- 1. Gaussian B
def _moments(rows: pd.DataFrame, what: str) -> Verdict:
    skew, kurt = float(rows.skewness.abs().max()), float(rows.excess_kurtosis.abs().max())
    holds = None if math.isnan(skew) or math.isnan(kurt) else skew < GAUSSIAN_MAX_ABS_SKEW and kurt < GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS
    worst = "skewness" if skew / GAUSSIAN_MAX_ABS_SKEW > kurt / GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS else "excess kurtosis"
    return Verdict(kurt, f"max |skewness| {skew:.3f}, max |excess kurtosis| {kurt:.3f} ({what}, n = {', '.join(map(str, rows.n))})",
                   holds, "both moments are within a normal's range" if holds else f"{worst} is outside a normal's range")


MOMENTS = f"|skewness| < {GAUSSIAN_MAX_ABS_SKEW} and |excess kurtosis| < {GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS}"


def _matrix(tables, last, method, matrix):
    stats = at_epoch(tables["weight_stats"], last, method)
    return stats[stats.matrix == matrix]


@reading(1, "max |excess kurtosis| (and |skewness|) of TLoRA's B, pooled per module", MOMENTS, ("weight_stats",), headline=True,
         limits=(GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS,))
def _gaussian_b(tables, last):
    return _moments(_matrix(tables, last, PAPER_METHOD, "B"), "TLoRA's B")


@reading(1, "normality test of TLoRA's B", f"p > {NORMALITY_ALPHA} in every module", ("weight_stats",))
def _normality_b(tables, last):
    rows = _matrix(tables, last, PAPER_METHOD, "B")
    p = float(rows.normality_p.min())
    tests = ", ".join(f"{q:.2g} ({NORMALITY_TEST_NAMES.get(t, t)}, n = {n})" for q, t, n in zip(rows.normality_p, rows.normality_test, rows.n))
    holds = holds_if_defined(p, lambda v: v > NORMALITY_ALPHA)
    return Verdict(p, f"normality p = {tests}", holds,
                   "normality is not rejected" if holds else "normality is rejected; at this n a test detects small departures")


@reading(1, "max |excess kurtosis| (and |skewness|) of LoRA's A", MOMENTS, ("weight_stats",))
def _gaussian_lora_a(tables, last):
    return _moments(_matrix(tables, last, REFERENCE_METHOD, "A"), "LoRA's A, Kaiming-uniform at init")


@reading(1, "max |excess kurtosis| (and |skewness|) of LoRA's B", MOMENTS, ("weight_stats",))
def _gaussian_lora_b(tables, last):
    return _moments(_matrix(tables, last, REFERENCE_METHOD, "B"), "LoRA's B, zero at init")


@reading(1, "the same test on a Gaussian B of the same size (chance reference)", f"p > {NORMALITY_ALPHA} in every module", ("weight_stats",))
def _gaussian_reference(tables, last):
    from ..distributions import describe

    rows = _matrix(tables, last, PAPER_METHOD, "B")
    rng = np.random.default_rng(0)
    drawn = pd.DataFrame([describe(rng.standard_normal(int(n))) for n in rows.n])
    verdict = _moments(drawn, "N(0, 1) draws")
    p = float(drawn.normality_p.min())
    holds = holds_if_defined(p, lambda v: v > NORMALITY_ALPHA)
    return Verdict(p, f"{verdict.statistic}; normality p = {', '.join(f'{q:.2g}' for q in drawn.normality_p)}", holds,
                   "what a truly Gaussian B of this size gives: the scale for the rows above")


# --------------------------------------------------------------------------- 2. stable norms
def _mean_norms(tables, method=PAPER_METHOD) -> pd.Series:
    norms = tables["norms"]
    return norms[norms.method == method].groupby("epoch")["frobenius"].mean()


@reading(2, "relative change of mean ‖ΔW‖_F in the last epoch", f"< {STABLE_MAX_CHANGE}", ("norms",), headline=True,
         limits=(STABLE_MAX_CHANGE,))
def _stable_last(tables, last):
    mean = _mean_norms(tables)
    change = abs(mean.get(last, math.nan) - mean.get(last - 1, math.nan)) / mean.get(last, math.nan)
    holds = holds_if_defined(change, lambda v: v < STABLE_MAX_CHANGE)
    return Verdict(change, f"{change:.3f} (per-epoch means: {', '.join(f'{v:.3g}' for v in mean.to_numpy())})", holds,
                   "the norm has settled by the last epoch" if holds else "the norm still grows in the last epoch")


@reading(2, "relative step ‖ΔW_e − ΔW_e−1‖/‖ΔW_e‖ in every epoch from the second", f"< {STABLE_MAX_CHANGE} in every such epoch", ("norms",))
def _stable_steps(tables, last):
    norms = tables["norms"]
    later = norms[(norms.method == PAPER_METHOD) & (norms.epoch >= 2) & (norms.epoch <= last)]
    steps = (later.delta_step / later.frobenius).groupby(later.epoch).mean()
    worst = float(steps.max()) if len(steps) else math.nan
    holds = holds_if_defined(worst, lambda v: v < STABLE_MAX_CHANGE)
    return Verdict(worst, "mean relative step per epoch: " + ", ".join(f"e{e} {v:.3f}" for e, v in steps.items()), holds,
                   "each epoch moves ΔW little" if holds else
                   f"ΔW still moves by {worst:.0%} of its size in epoch {int(steps.idxmax()) if len(steps) else '?'}")


# --------------------------------------------------------------------------- 3. α varies
@reading(3, "coefficient of variation of α across layers", f"> {ALPHA_MIN_CV} in every module", ("scales",), headline=True,
         limits=(ALPHA_MIN_CV,))
def _alpha_cv(tables, last):
    scales_table = tables["scales"]
    cv = scales_table[scales_table.epoch == last].groupby("module")["alpha_cv_across_layers"].mean()
    value = float(cv.min()) if len(cv) else math.nan
    holds = holds_if_defined(value, lambda v: v > ALPHA_MIN_CV)
    return Verdict(value, "CV of α across layers: " + ", ".join(f"{m} {v:.3f}" for m, v in cv.items()), holds,
                   "α differs between layers" if holds else "α is nearly the same in every layer")


@reading(3, "α differs across layers more than across seeds (one-way ANOVA, layer as factor)", f"p < {SEED_NOISE_ALPHA} in every module",
         ("scales_over_seeds",))
def _alpha_vs_seeds(tables, last):
    from scipy.stats import f_oneway

    scales_table = tables["scales_over_seeds"]
    scales_table = scales_table[scales_table.epoch == last]
    results = {}
    for module, rows in scales_table.groupby("module"):
        groups = [g.alpha.to_numpy() for _, g in rows.groupby("layer")]
        if len(groups) > 1 and min(len(g) for g in groups) > 1:
            results[module] = f_oneway(*groups).pvalue
    value = float(max(results.values())) if results else math.nan
    holds = holds_if_defined(value, lambda v: v < SEED_NOISE_ALPHA)
    return Verdict(value, "ANOVA p: " + ", ".join(f"{m} {p:.2g}" for m, p in results.items()), holds,
                   "the layer-to-layer differences exceed seed noise" if holds else "layer differences are within seed noise")


