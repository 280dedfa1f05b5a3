"""All tables for a LoRA-vs-TLoRA comparison, and the paper's claims checked on them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..config import METHODS
from ..errors import InputError
from ._common import UpdateSource, as_source
from .base_alignment import amplification, intruder_counts, intruder_dimensions
from .distributions import weight_distributions, weight_histograms
from .norms import norms, scales
from .similarity import subspace_similarity_table, update_similarity
from .spectra import effective_rank, spectra
from .summary import summary

METHOD_ORDER = {method: i for i, method in enumerate(METHODS)}

SETTINGS = {"histogram_bins": 40, "baseline_samples": 32, "intruder_k": 10, "intruder_epsilon": 0.5, "energy_rank": 0.9}
"""What :func:`compare_runs` computes with; figures.json records it next to the figures."""


def compare_runs(
    runs: Sequence[UpdateSource],
    base_weights: Mapping[str, torch.Tensor] | None = None,
    *,
    bins: int = SETTINGS["histogram_bins"],
    baseline_samples: int = SETTINGS["baseline_samples"],
) -> dict[str, pd.DataFrame]:
    """Every analysis table for a set of runs of the same model and targets, any methods.

    Args:
        runs: runs, PEFT adapters or paths; their names must differ.
        base_weights: W0 per module, for amplification and intruders.
        bins: histogram bins of the trained matrices.
        baseline_samples: random updates per (shape, rank) for the cosine baseline.

    Keys: spectra, norms, effective_rank, weight_stats, weight_histograms, subspace_epochs
    (each epoch of each run vs its own last), summary; ``similarity_pairs`` (the cosine for
    every pair of runs of different methods); with a TLoRA run ``scales``; with a LoRA and a
    TLoRA run the paper's pair, ``similarity`` and ``subspace`` (last epoch); and with
    ``base_weights`` also amplification, intruders and intruder_counts.
    """
    runs = sorted((as_source(r) for r in runs), key=lambda r: METHOD_ORDER.get(r.method, len(METHOD_ORDER)))
    adapted = [r for r in runs if r.layers]
    if not adapted:
        raise InputError("compare_runs needs at least one run with adapted layers")
    names = [r.name for r in adapted]
    if len(set(names)) != len(names):
        raise InputError(f"compare_runs needs runs with different names, got {names}")
    last = min(r.epochs[-1] for r in adapted)
    pairs = [(a, b) for i, a in enumerate(adapted) for b in adapted[i + 1:] if a.method != b.method]
    tables = {
        "spectra": pd.concat([spectra(r) for r in adapted], ignore_index=True),
        "norms": pd.concat([norms(r) for r in adapted], ignore_index=True),
        "effective_rank": pd.concat([effective_rank(r, energy=SETTINGS["energy_rank"]) for r in adapted], ignore_index=True),
        "weight_stats": pd.concat([weight_distributions(r, pool=True) for r in adapted], ignore_index=True),
        "weight_histograms": pd.concat([weight_histograms(r, bins=bins, pool=True) for r in adapted], ignore_index=True),
        "subspace_epochs": pd.concat(
            [subspace_similarity_table(r, r, epochs=[e for e in r.epochs if e > 0], epoch_b=r.epochs[-1]).query("i == j") for r in adapted],
            ignore_index=True,
        ),
        "summary": pd.concat([summary(r) for r in adapted], ignore_index=True),
    }
    if pairs:
        tables["similarity_pairs"] = pd.concat([update_similarity(a, b, baseline_samples=baseline_samples) for a, b in pairs],
                                               ignore_index=True)
    tlora = [r for r in adapted if r.method == "tlora"]
    if tlora:
        tables["scales"] = pd.concat([scales(r) for r in tlora], ignore_index=True)
    lora = [r for r in adapted if r.method == "lora"]
    if lora and tlora:  # the paper's pair: its claims and figures compare the first LoRA and the first TLoRA run
        similarity = tables["similarity_pairs"]
        tables["similarity"] = similarity[(similarity.run_a == lora[0].name) & (similarity.run_b == tlora[0].name)].reset_index(drop=True)
        tables["subspace"] = subspace_similarity_table(lora[0], tlora[0], epochs=[last])
    if base_weights is not None:
        tables["amplification"] = pd.concat([amplification(r, base_weights) for r in adapted], ignore_index=True)
        intruders = pd.concat(
            [intruder_dimensions(r, base_weights, k=SETTINGS["intruder_k"], epsilon=SETTINGS["intruder_epsilon"]) for r in adapted],
            ignore_index=True,
        )
        tables["intruders"] = intruders
        tables["intruder_counts"] = intruder_counts(intruders)
    return tables


# Thresholds for the claims check. They are judgement calls, stated so a reader can disagree.
GAUSSIAN_MAX_ABS_SKEW = 0.5
GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS = 1.0
STABLE_MAX_LAST_EPOCH_CHANGE = 0.10
ALPHA_MIN_CV = 0.05
SPECTRUM_MAX_DISTANCE = 0.25
NORM_RATIO_RANGE = (0.5, 2.0)
HIGH_COSINE = 0.5


def _normalized_spectrum(values: pd.Series, rank: int) -> np.ndarray:
    s = np.zeros(rank)
    v = np.sort(values.to_numpy())[::-1][:rank]
    s[: len(v)] = v
    return s / s.sum() if s.sum() > 0 else s


NORMALITY_TEST_NAMES = {"shapiro": "Shapiro–Wilk", "dagostino": "D'Agostino–Pearson"}


def paper_claims(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The TLoRA paper's six adaptation-dynamics findings, each as statistic, threshold and verdict.

    Computed at the last epoch both runs share. ``holds`` is True/False, or None where the
    statistic cannot be computed.
    """
    if "similarity" not in tables or "scales" not in tables:
        raise InputError("the paper's claims compare a LoRA run with a TLoRA run, and these tables have no such pair")
    norms_t = tables["norms"][tables["norms"].method.isin(("lora", "tlora"))]
    last = int(norms_t.groupby("method")["epoch"].max().min())
    rows = []

    stats = tables["weight_stats"]
    b = stats[(stats.method == "tlora") & (stats.matrix == "B") & (stats.epoch == last)]
    skew, kurt = float(b.skewness.abs().max()), float(b.excess_kurtosis.abs().max())
    rows.append(_claim(
        "1. TLoRA's B has Gaussian-like entries",
        f"max |skewness| {skew:.3f}, max |excess kurtosis| {kurt:.3f} over modules (pooled over layers); "
        "normality p = " + ", ".join(f"{p:.2g} ({NORMALITY_TEST_NAMES.get(t, t)}, n = {n})" for p, t, n in zip(b.normality_p, b.normality_test, b.n)),
        f"|skewness| < {GAUSSIAN_MAX_ABS_SKEW} and |excess kurtosis| < {GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS}",
        skew < GAUSSIAN_MAX_ABS_SKEW and kurt < GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS if not (math.isnan(skew) or math.isnan(kurt)) else None,
    ))

    t = norms_t[norms_t.method == "tlora"]
    mean_norm = t.groupby("epoch")["frobenius"].mean()
    change = abs(mean_norm.get(last, math.nan) - mean_norm.get(last - 1, math.nan)) / mean_norm.get(last, math.nan)
    rows.append(_claim(
        "2. TLoRA's parameter norms are stable across epochs",
        f"relative change of mean ‖ΔW‖_F in the last epoch: {change:.3f} "
        f"(per-epoch means: {', '.join(f'{v:.3g}' for v in mean_norm.to_numpy())})",
        f"< {STABLE_MAX_LAST_EPOCH_CHANGE}",
        None if math.isnan(change) else change < STABLE_MAX_LAST_EPOCH_CHANGE,
    ))

    sc = tables["scales"]
    cv = sc[sc.epoch == last].groupby("module")["alpha_cv_across_layers"].first()
    rows.append(_claim(
        "3. TLoRA's scale α varies across layers",
        "coefficient of variation of α across layers: " + ", ".join(f"{m} {v:.3f}" for m, v in cv.items()),
        f"> {ALPHA_MIN_CV} for every module",
        bool((cv > ALPHA_MIN_CV).all()) if len(cv) else None,
    ))

    sp = tables["spectra"]
    sp = sp[sp.epoch == last]
    rank = int(sp["index"].max())
    distances = []
    for _, group in sp.groupby("name"):
        per_method = {m: _normalized_spectrum(g.singular_value, rank) for m, g in group.groupby("method")}
        if {"lora", "tlora"} <= set(per_method):
            distances.append(0.5 * np.abs(per_method["lora"] - per_method["tlora"]).sum())
    distance = float(np.mean(distances)) if distances else math.nan
    rows.append(_claim(
        "4. TLoRA's eigenvalue distributions resemble LoRA's",
        f"mean total-variation distance between the normalized spectra σ_i/Σσ of the two methods: {distance:.3f}",
        f"< {SPECTRUM_MAX_DISTANCE}",
        None if math.isnan(distance) else distance < SPECTRUM_MAX_DISTANCE,
    ))

    at_last = norms_t[norms_t.epoch == last].groupby("method")["frobenius"].mean()
    ratio = float(at_last.get("tlora", math.nan) / at_last.get("lora", math.nan))
    low, high = NORM_RATIO_RANGE
    rows.append(_claim(
        "5. TLoRA's and LoRA's parameter norms are close",
        f"mean ‖ΔW‖_F TLoRA / LoRA = {ratio:.3f} ({at_last.get('tlora', math.nan):.3g} / {at_last.get('lora', math.nan):.3g})",
        f"between {low} and {high}",
        None if math.isnan(ratio) else low <= ratio <= high,
    ))

    sim = tables["similarity"]
    sim = sim[sim.epoch == last]
    mean_cos = float(sim.cosine.mean())
    above = float((sim.cosine.abs() > sim.baseline_abs_q95).mean())
    rows.append(_claim(
        "6. TLoRA's and LoRA's updates have high cosine similarity",
        f"mean cosine of ΔW over layers {mean_cos:.3f} (max {sim.cosine.max():.3f}); random baseline |cos| 95th percentile "
        f"{sim.baseline_abs_q95.mean():.3f}; {above:.0%} of layers above it",
        f"mean cosine > {HIGH_COSINE}",
        None if math.isnan(mean_cos) else mean_cos > HIGH_COSINE,
    ))
    return pd.DataFrame(rows).assign(epoch=last)


def _claim(claim: str, statistic: str, threshold: str, holds) -> dict:
    return {"claim": claim, "statistic": statistic, "threshold": threshold, "holds": None if holds is None else bool(holds)}
