"""Readings of findings 4–6: spectra, norms and update cosines resemble LoRA's."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .registry import (
    HIGH_COSINE,
    NORM_RATIO_RANGE,
    PAPER_METHOD,
    PROFILE_MIN_SPEARMAN,
    RANK_GAP_MAX,
    REFERENCE_METHOD,
    SPECTRUM_MAX_DISTANCE,
    WASSERSTEIN_MAX,
    Verdict,
    at_epoch,
    holds_if_defined,
    reading,
)


# --------------------------------------------------------------------------- 4. spectra
def _spectra_pairs(tables, last, column="singular_value", table="spectra", matrices=None):
    sp = at_epoch(tables[table], last)
    if matrices:
        sp = sp[sp.matrix.isin(matrices)]
    rank = int(sp["index"].max()) if len(sp) else 0
    for _, group in sp.groupby("name"):
        per = {}
        for method, g in group.groupby("method"):
            s = np.zeros(rank)
            v = np.sort(g[column].to_numpy())[::-1][:rank]
            s[: len(v)] = v
            per[method] = s / s.sum() if s.sum() > 0 else s
        if {REFERENCE_METHOD, PAPER_METHOD} <= set(per):
            yield per[REFERENCE_METHOD], per[PAPER_METHOD]


def spectrum_tv_distance(tables, last, **kwargs) -> float:
    distances = [0.5 * np.abs(a - b).sum() for a, b in _spectra_pairs(tables, last, **kwargs)]
    return float(np.mean(distances)) if distances else math.nan


@reading(4, "total-variation distance of normalized singular values σ_i/Σσ", f"< {SPECTRUM_MAX_DISTANCE}", ("spectra",), headline=True,
         limits=(SPECTRUM_MAX_DISTANCE,))
def _spectra_tv(tables, last):
    d = spectrum_tv_distance(tables, last)
    holds = holds_if_defined(d, lambda v: v < SPECTRUM_MAX_DISTANCE)
    return Verdict(d, f"mean TV distance over layers {d:.3f}", holds,
                   "the spectra have the same shape" if holds else "one method spreads its energy over more directions")


@reading(4, "Wasserstein distance of the normalized spectra over the index, divided by r − 1", f"< {WASSERSTEIN_MAX}", ("spectra",))
def _spectra_wasserstein(tables, last):
    from scipy.stats import wasserstein_distance

    distances = []
    for a, b in _spectra_pairs(tables, last):
        if a.sum() > 0 and b.sum() > 0 and len(a) > 1:
            index = np.arange(1, len(a) + 1)
            distances.append(wasserstein_distance(index, index, a, b) / (len(a) - 1))
    d = float(np.mean(distances)) if distances else math.nan
    holds = holds_if_defined(d, lambda v: v < WASSERSTEIN_MAX)
    return Verdict(d, f"mean over layers {d:.3f}", holds,
                   "little spectral mass moves between directions" if holds else "spectral mass sits at other indices")


@reading(4, "TV distance of eigenvalue moduli: TLoRA's B against LoRA's ΔW", f"< {SPECTRUM_MAX_DISTANCE}", ("core_eigenvalues",))
def _core_eigenvalues(tables, last):
    d = spectrum_tv_distance(tables, last, column="magnitude", table="core_eigenvalues")
    holds = holds_if_defined(d, lambda v: v < SPECTRUM_MAX_DISTANCE)
    return Verdict(d, f"mean TV distance of normalized |λ_i| over layers {d:.3f}", holds,
                   "B's eigenvalues are spread like LoRA's" if holds else "B's eigenvalue moduli are spread differently from LoRA's")


@reading(4, "gap in entropy effective rank", f"< {RANK_GAP_MAX} direction on average", ("effective_rank",))
def _rank_gap(tables, last):
    ranks = at_epoch(tables["effective_rank"], last)
    ranks = ranks[ranks.method.isin((REFERENCE_METHOD, PAPER_METHOD))].pivot_table(index="name", columns="method", values="entropy_rank")
    gap = float((ranks[PAPER_METHOD] - ranks[REFERENCE_METHOD]).abs().mean()) if {REFERENCE_METHOD, PAPER_METHOD} <= set(ranks.columns) else math.nan
    means = {m: float(ranks[m].mean()) for m in ranks.columns}
    holds = holds_if_defined(gap, lambda v: v < RANK_GAP_MAX)
    return Verdict(gap, f"mean |erank_TLoRA − erank_LoRA| {gap:.2f} (means: " + ", ".join(f"{m} {v:.2f}" for m, v in means.items()) + ")",
                   holds, "both use about as many directions" if holds else "the methods use different numbers of directions")


# --------------------------------------------------------------------------- 5. norms close
RATIO = f"between {NORM_RATIO_RANGE[0]} and {NORM_RATIO_RANGE[1]}"


def _ratio_verdict(ratio: float, text: str) -> Verdict:
    if not math.isfinite(ratio) or ratio == 0:
        return Verdict(math.nan, text, None, "undefined: one side's update is zero (as before training) or missing")
    holds = holds_if_defined(ratio, lambda v: NORM_RATIO_RANGE[0] <= v <= NORM_RATIO_RANGE[1])
    return Verdict(ratio, text, holds, "the sizes are within a factor of two" if holds else
                   f"TLoRA's updates are {ratio:.1f}x LoRA's" if ratio > 1 else f"TLoRA's updates are {1 / ratio:.1f}x smaller")


def _norm_ratio(table: pd.DataFrame, last: int, column: str):
    at = at_epoch(table, last).groupby("method")[column].mean()
    paper, reference = float(at.get(PAPER_METHOD, math.nan)), float(at.get(REFERENCE_METHOD, math.nan))
    return (paper / reference if reference else math.inf if paper else math.nan), at


@reading(5, "ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", RATIO, ("norms",), headline=True, limits=NORM_RATIO_RANGE)
def _frobenius_ratio(tables, last):
    ratio, at = _norm_ratio(tables["norms"], last, "frobenius")
    return _ratio_verdict(ratio, f"{ratio:.3f} ({at.get(PAPER_METHOD, math.nan):.3g} / {at.get(REFERENCE_METHOD, math.nan):.3g})")


@reading(5, "ratio of mean spectral norms ‖ΔW‖_2, TLoRA / LoRA", RATIO, ("norms",))
def _spectral_ratio(tables, last):
    ratio, at = _norm_ratio(tables["norms"], last, "spectral")
    return _ratio_verdict(ratio, f"{ratio:.3f} ({at.get(PAPER_METHOD, math.nan):.3g} / {at.get(REFERENCE_METHOD, math.nan):.3g})")


@reading(5, "ratio of mean relative norms ‖ΔW‖_F / ‖W0‖_F", RATIO, ("adapted_similarity",))
def _relative_ratio(tables, last):
    t = at_epoch(tables["adapted_similarity"], last)
    ratio = float(t.relative_norm_b.mean() / t.relative_norm_a.mean())
    return _ratio_verdict(ratio, f"{ratio:.3f} ({t.relative_norm_b.mean():.3g} / {t.relative_norm_a.mean():.3g} of ‖W0‖_F)")


@reading(5, "ratio of mean amplification factors ‖ΔW‖_F / ‖UᵀW0V‖_F", RATIO, ("amplification",))
def _amplification_ratio(tables, last):
    ratio, at = _norm_ratio(tables["amplification"], last, "amplification")
    return _ratio_verdict(ratio, f"{ratio:.3f} ({at.get(PAPER_METHOD, math.nan):.3g} / {at.get(REFERENCE_METHOD, math.nan):.3g})")


@reading(5, "Spearman correlation of the per-layer ‖ΔW‖_F profiles", f"ρ > {PROFILE_MIN_SPEARMAN}", ("norms",))
def _norm_profile(tables, last):
    from scipy.stats import spearmanr

    at = at_epoch(tables["norms"], last)
    wide = at[at.method.isin((REFERENCE_METHOD, PAPER_METHOD))].pivot_table(index="name", columns="method", values="frobenius")
    if not {REFERENCE_METHOD, PAPER_METHOD} <= set(wide.columns) or len(wide) < 3:
        return Verdict(math.nan, "fewer than three layers", None, "a profile needs at least three layers")
    rho, p = spearmanr(wide[REFERENCE_METHOD], wide[PAPER_METHOD])
    holds = holds_if_defined(float(rho), lambda v: v > PROFILE_MIN_SPEARMAN)
    return Verdict(float(rho), f"ρ = {rho:.3f} (p = {p:.2g}, {len(wide)} layers)", holds,
                   "the same layers get large updates in both methods" if holds else "the methods put their large updates in different layers")


# --------------------------------------------------------------------------- 6. cosine
def _cosine_verdict(value: float, text: str, yes: str, no: str) -> Verdict:
    holds = holds_if_defined(value, lambda v: v > HIGH_COSINE)
    return Verdict(value, text, holds, yes if holds else no)


@reading(6, "mean cosine of ΔW over layers", f"> {HIGH_COSINE}", ("similarity",), headline=True, limits=(HIGH_COSINE,))
def _cosine(tables, last):
    sim = at_epoch(tables["similarity"], last)
    mean = float(sim.cosine.mean())
    above = float((sim.cosine.abs() > sim.baseline_abs_q95).mean())
    return _cosine_verdict(mean, f"mean {mean:.3f} (max {sim.cosine.max():.3f}); random |cos| 95th percentile "
                                 f"{sim.baseline_abs_q95.mean():.3f}; {above:.0%} of layers above it",
                           "the updates point the same way", "the updates point in nearly unrelated directions")


@reading(6, "reachable bound: the best cosine any A·M·C with TLoRA's frozen A, C could have with ΔW_LoRA",
         f"> {HIGH_COSINE} (else the claim cannot hold)", ("reachable",))
def _reachable(tables, last):
    t = at_epoch(tables["reachable"], last)
    mean = float(t.reachable_cosine.mean())
    below = float((t.reachable_cosine < HIGH_COSINE).mean())
    return _cosine_verdict(mean, f"mean bound {mean:.3f} (max {t.reachable_cosine.max():.3f}); {below:.0%} of layers below {HIGH_COSINE}",
                           "TLoRA's subspaces leave room for a high cosine",
                           f"in {below:.0%} of layers no TLoRA update could reach a cosine of {HIGH_COSINE}, whatever it learns")


@reading(6, "cosine of the adapted weights W0 + ΔW", f"> {HIGH_COSINE}", ("adapted_similarity",))
def _adapted(tables, last):
    t = at_epoch(tables["adapted_similarity"], last)
    mean, shared = float(t.adapted_cosine.mean()), float(np.minimum(t.w0_cosine_a, t.w0_cosine_b).mean())
    return Verdict(mean, f"mean cos(W0 + ΔW_LoRA, W0 + ΔW_TLoRA) {mean:.4f}; cos(W0, W0 + ΔW) alone {shared:.4f}",
                   holds_if_defined(mean, lambda v: v > HIGH_COSINE),
                   "high only because both share W0: cos(W0, W0 + ΔW) is as high" if mean - shared < 0.5 * (1 - shared)
                   else "higher than sharing W0 alone explains")


@reading(6, "function-space cosine of ΔW·x over the inputs x that reach each layer", f"> {HIGH_COSINE}", ("function_similarity",))
def _function_space(tables, last):
    t = tables["function_similarity"]
    mean = float(t.cosine.mean())
    return _cosine_verdict(mean, f"mean over layers {mean:.3f} (max {t.cosine.max():.3f}; {int(t.tokens.iloc[0])} tokens)",
                           "on real inputs the updates change the layer's output alike",
                           "on real inputs the updates change the layer's output differently")


@reading(6, "against the same-method control: LoRA–TLoRA cosine as a share of the LoRA–LoRA cosine across seeds",
         f"> {HIGH_COSINE}", ("similarity", "seed_control"))
def _seed_control(tables, last):
    control = tables["seed_control"]
    lora_lora, chance = float(control.cosine.mean()), float(control.baseline_abs_q95.mean())
    cross = float(at_epoch(tables["similarity"], last).cosine.mean())
    text = f"LoRA–TLoRA {cross:.3f} / LoRA–LoRA {lora_lora:.3f} (random 95th percentile {chance:.3f})"
    if lora_lora <= chance:
        return Verdict(math.nan, text, None, "two LoRA seeds are no more alike than chance, so the cosine cannot tell methods apart here")
    share = cross / lora_lora
    return _cosine_verdict(share, f"{text} = {share:.2f}", "TLoRA is about as close to LoRA as another LoRA seed is",
                           f"TLoRA reaches {share:.0%} of the similarity two LoRA seeds have: the low cosine is a real difference")


