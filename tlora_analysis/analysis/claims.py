"""The TLoRA paper's six findings, each read every way a careful reader could mean it.

The paper states its findings in words. Each *reading* below turns one finding into a
statistic, a threshold fixed before looking at our runs, a verdict and a one-line reason.
Readings are small functions registered in :data:`READINGS`, the way figures are in
``FIGURES``; each takes the analysis tables of one LoRA–TLoRA pair and the epoch to read.
A reading whose tables were not computed (W0 for the adapted-weight cosine, several seeds
for the seed controls) reports ``holds = None`` and says what it needs.

The thresholds are judgement calls, stated so that a reader can disagree; none was tuned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError

FINDINGS = {
    1: "TLoRA's B has Gaussian-like entries",
    2: "TLoRA's parameter norms are stable across epochs",
    3: "TLoRA's scale α varies across layers",
    4: "TLoRA's eigenvalue distributions resemble LoRA's",
    5: "TLoRA's and LoRA's parameter norms are close",
    6: "TLoRA's and LoRA's updates have high cosine similarity",
}

PAPER_METHOD = "tlora"
REFERENCE_METHOD = "lora"
"""The paper's pair: its findings describe TLoRA against LoRA, so the audit names them by design."""
GAUSSIAN_MAX_ABS_SKEW = 0.5
GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS = 1.0
NORMALITY_ALPHA = 0.05
STABLE_MAX_CHANGE = 0.10
ALPHA_MIN_CV = 0.05
SEED_NOISE_ALPHA = 0.05
SPECTRUM_MAX_DISTANCE = 0.25
WASSERSTEIN_MAX = 0.10
RANK_GAP_MAX = 1.0
NORM_RATIO_RANGE = (0.5, 2.0)
PROFILE_MIN_SPEARMAN = 0.5
HIGH_COSINE = 0.5
NORMALITY_TEST_NAMES = {"shapiro": "Shapiro–Wilk", "dagostino": "D'Agostino–Pearson"}


@dataclass(frozen=True)
class Verdict:
    value: float
    statistic: str
    holds: bool | None
    reason: str


@dataclass(frozen=True)
class Reading:
    finding: int
    name: str
    threshold: str
    needs: tuple[str, ...]
    compute: Callable[[Mapping[str, pd.DataFrame], int], Verdict]
    headline: bool = False
    limits: tuple[float, ...] = ()
    """The threshold values ``value`` is compared with, for drawing them."""


READINGS: list[Reading] = []


def reading(finding: int, name: str, threshold: str, needs: tuple[str, ...], headline: bool = False, limits: tuple[float, ...] = ()):
    """Register a reading of ``finding``; the function gets the tables and the epoch to read."""

    def register(compute):
        READINGS.append(Reading(finding, name, threshold, needs, compute, headline, limits))
        return compute

    return register


def _at(table: pd.DataFrame, last: int, method: str | None = None) -> pd.DataFrame:
    table = table[table.epoch == last]
    return table[table.method == method] if method else table


def _holds(value: float, test: Callable[[float], bool]) -> bool | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else bool(test(value))


# --------------------------------------------------------------------------- 1. Gaussian B
def _moments(rows: pd.DataFrame, what: str) -> Verdict:
    skew, kurt = float(rows.skewness.abs().max()), float(rows.excess_kurtosis.abs().max())
    holds = None if math.isnan(skew) or math.isnan(kurt) else skew < GAUSSIAN_MAX_ABS_SKEW and kurt < GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS
    worst = "skewness" if skew / GAUSSIAN_MAX_ABS_SKEW > kurt / GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS else "excess kurtosis"
    return Verdict(kurt, f"max |skewness| {skew:.3f}, max |excess kurtosis| {kurt:.3f} ({what}, n = {', '.join(map(str, rows.n))})",
                   holds, "both moments are within a normal's range" if holds else f"{worst} is outside a normal's range")


MOMENTS = f"|skewness| < {GAUSSIAN_MAX_ABS_SKEW} and |excess kurtosis| < {GAUSSIAN_MAX_ABS_EXCESS_KURTOSIS}"


def _matrix(tables, last, method, matrix):
    stats = _at(tables["weight_stats"], last, method)
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
    holds = _holds(p, lambda v: v > NORMALITY_ALPHA)
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
    from .distributions import describe

    rows = _matrix(tables, last, PAPER_METHOD, "B")
    rng = np.random.default_rng(0)
    drawn = pd.DataFrame([describe(rng.standard_normal(int(n))) for n in rows.n])
    verdict = _moments(drawn, "N(0, 1) draws")
    p = float(drawn.normality_p.min())
    holds = _holds(p, lambda v: v > NORMALITY_ALPHA)
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
    holds = _holds(change, lambda v: v < STABLE_MAX_CHANGE)
    return Verdict(change, f"{change:.3f} (per-epoch means: {', '.join(f'{v:.3g}' for v in mean.to_numpy())})", holds,
                   "the norm has settled by the last epoch" if holds else "the norm still grows in the last epoch")


@reading(2, "relative step ‖ΔW_e − ΔW_e−1‖/‖ΔW_e‖ in every epoch from the second", f"< {STABLE_MAX_CHANGE} in every such epoch", ("norms",))
def _stable_steps(tables, last):
    norms = tables["norms"]
    t = norms[(norms.method == PAPER_METHOD) & (norms.epoch >= 2) & (norms.epoch <= last)]
    steps = (t.delta_step / t.frobenius).groupby(t.epoch).mean()
    worst = float(steps.max()) if len(steps) else math.nan
    holds = _holds(worst, lambda v: v < STABLE_MAX_CHANGE)
    return Verdict(worst, "mean relative step per epoch: " + ", ".join(f"e{e} {v:.3f}" for e, v in steps.items()), holds,
                   "each epoch moves ΔW little" if holds else
                   f"ΔW still moves by {worst:.0%} of its size in epoch {int(steps.idxmax()) if len(steps) else '?'}")


# --------------------------------------------------------------------------- 3. α varies
@reading(3, "coefficient of variation of α across layers", f"> {ALPHA_MIN_CV} in every module", ("scales",), headline=True,
         limits=(ALPHA_MIN_CV,))
def _alpha_cv(tables, last):
    sc = tables["scales"]
    cv = sc[sc.epoch == last].groupby("module")["alpha_cv_across_layers"].mean()
    value = float(cv.min()) if len(cv) else math.nan
    holds = _holds(value, lambda v: v > ALPHA_MIN_CV)
    return Verdict(value, "CV of α across layers: " + ", ".join(f"{m} {v:.3f}" for m, v in cv.items()), holds,
                   "α differs between layers" if holds else "α is nearly the same in every layer")


@reading(3, "α differs across layers more than across seeds (one-way ANOVA, layer as factor)", f"p < {SEED_NOISE_ALPHA} in every module",
         ("scales_over_seeds",))
def _alpha_vs_seeds(tables, last):
    from scipy.stats import f_oneway

    sc = tables["scales_over_seeds"]
    sc = sc[sc.epoch == last]
    results = {}
    for module, rows in sc.groupby("module"):
        groups = [g.alpha.to_numpy() for _, g in rows.groupby("layer")]
        if len(groups) > 1 and min(len(g) for g in groups) > 1:
            results[module] = f_oneway(*groups).pvalue
    value = float(max(results.values())) if results else math.nan
    holds = _holds(value, lambda v: v < SEED_NOISE_ALPHA)
    return Verdict(value, "ANOVA p: " + ", ".join(f"{m} {p:.2g}" for m, p in results.items()), holds,
                   "the layer-to-layer differences exceed seed noise" if holds else "layer differences are within seed noise")


# --------------------------------------------------------------------------- 4. spectra
def _spectra_pairs(tables, last, column="singular_value", table="spectra", matrices=None):
    sp = _at(tables[table], last)
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


def _tv(tables, last, **kwargs) -> float:
    distances = [0.5 * np.abs(a - b).sum() for a, b in _spectra_pairs(tables, last, **kwargs)]
    return float(np.mean(distances)) if distances else math.nan


@reading(4, "total-variation distance of normalized singular values σ_i/Σσ", f"< {SPECTRUM_MAX_DISTANCE}", ("spectra",), headline=True,
         limits=(SPECTRUM_MAX_DISTANCE,))
def _spectra_tv(tables, last):
    d = _tv(tables, last)
    holds = _holds(d, lambda v: v < SPECTRUM_MAX_DISTANCE)
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
    holds = _holds(d, lambda v: v < WASSERSTEIN_MAX)
    return Verdict(d, f"mean over layers {d:.3f}", holds,
                   "little spectral mass moves between directions" if holds else "spectral mass sits at other indices")


@reading(4, "TV distance of eigenvalue moduli: TLoRA's B against LoRA's ΔW", f"< {SPECTRUM_MAX_DISTANCE}", ("core_eigenvalues",))
def _core_eigenvalues(tables, last):
    d = _tv(tables, last, column="magnitude", table="core_eigenvalues")
    holds = _holds(d, lambda v: v < SPECTRUM_MAX_DISTANCE)
    return Verdict(d, f"mean TV distance of normalized |λ_i| over layers {d:.3f}", holds,
                   "B's eigenvalues are spread like LoRA's" if holds else "B's eigenvalue moduli are spread differently from LoRA's")


@reading(4, "gap in entropy effective rank", f"< {RANK_GAP_MAX} direction on average", ("effective_rank",))
def _rank_gap(tables, last):
    er = _at(tables["effective_rank"], last)
    er = er[er.method.isin((REFERENCE_METHOD, PAPER_METHOD))].pivot_table(index="name", columns="method", values="entropy_rank")
    gap = float((er[PAPER_METHOD] - er[REFERENCE_METHOD]).abs().mean()) if {REFERENCE_METHOD, PAPER_METHOD} <= set(er.columns) else math.nan
    means = {m: float(er[m].mean()) for m in er.columns}
    holds = _holds(gap, lambda v: v < RANK_GAP_MAX)
    return Verdict(gap, f"mean |erank_TLoRA − erank_LoRA| {gap:.2f} (means: " + ", ".join(f"{m} {v:.2f}" for m, v in means.items()) + ")",
                   holds, "both use about as many directions" if holds else "the methods use different numbers of directions")


# --------------------------------------------------------------------------- 5. norms close
RATIO = f"between {NORM_RATIO_RANGE[0]} and {NORM_RATIO_RANGE[1]}"


def _ratio_verdict(ratio: float, text: str) -> Verdict:
    holds = _holds(ratio, lambda v: NORM_RATIO_RANGE[0] <= v <= NORM_RATIO_RANGE[1])
    return Verdict(ratio, text, holds, "the sizes are within a factor of two" if holds else
                   f"TLoRA's updates are {ratio:.1f}x LoRA's" if ratio > 1 else f"TLoRA's updates are {1 / ratio:.1f}x smaller")


def _norm_ratio(table: pd.DataFrame, last: int, column: str):
    at = _at(table, last).groupby("method")[column].mean()
    return float(at.get(PAPER_METHOD, math.nan) / at.get(REFERENCE_METHOD, math.nan)), at


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
    t = _at(tables["adapted_similarity"], last)
    ratio = float(t.relative_norm_b.mean() / t.relative_norm_a.mean())
    return _ratio_verdict(ratio, f"{ratio:.3f} ({t.relative_norm_b.mean():.3g} / {t.relative_norm_a.mean():.3g} of ‖W0‖_F)")


@reading(5, "ratio of mean amplification factors ‖ΔW‖_F / ‖UᵀW0V‖_F", RATIO, ("amplification",))
def _amplification_ratio(tables, last):
    ratio, at = _norm_ratio(tables["amplification"], last, "amplification")
    return _ratio_verdict(ratio, f"{ratio:.3f} ({at.get(PAPER_METHOD, math.nan):.3g} / {at.get(REFERENCE_METHOD, math.nan):.3g})")


@reading(5, "Spearman correlation of the per-layer ‖ΔW‖_F profiles", f"ρ > {PROFILE_MIN_SPEARMAN}", ("norms",))
def _norm_profile(tables, last):
    from scipy.stats import spearmanr

    at = _at(tables["norms"], last)
    wide = at[at.method.isin((REFERENCE_METHOD, PAPER_METHOD))].pivot_table(index="name", columns="method", values="frobenius")
    if not {REFERENCE_METHOD, PAPER_METHOD} <= set(wide.columns) or len(wide) < 3:
        return Verdict(math.nan, "fewer than three layers", None, "a profile needs at least three layers")
    rho, p = spearmanr(wide[REFERENCE_METHOD], wide[PAPER_METHOD])
    holds = _holds(float(rho), lambda v: v > PROFILE_MIN_SPEARMAN)
    return Verdict(float(rho), f"ρ = {rho:.3f} (p = {p:.2g}, {len(wide)} layers)", holds,
                   "the same layers get large updates in both methods" if holds else "the methods put their large updates in different layers")


# --------------------------------------------------------------------------- 6. cosine
def _cosine_verdict(value: float, text: str, yes: str, no: str) -> Verdict:
    holds = _holds(value, lambda v: v > HIGH_COSINE)
    return Verdict(value, text, holds, yes if holds else no)


@reading(6, "mean cosine of ΔW over layers", f"> {HIGH_COSINE}", ("similarity",), headline=True, limits=(HIGH_COSINE,))
def _cosine(tables, last):
    sim = _at(tables["similarity"], last)
    mean = float(sim.cosine.mean())
    above = float((sim.cosine.abs() > sim.baseline_abs_q95).mean())
    return _cosine_verdict(mean, f"mean {mean:.3f} (max {sim.cosine.max():.3f}); random |cos| 95th percentile "
                                 f"{sim.baseline_abs_q95.mean():.3f}; {above:.0%} of layers above it",
                           "the updates point the same way", "the updates point in nearly unrelated directions")


@reading(6, "reachable bound: the best cosine any A·M·C with TLoRA's frozen A, C could have with ΔW_LoRA",
         f"> {HIGH_COSINE} (else the claim cannot hold)", ("reachable",))
def _reachable(tables, last):
    t = _at(tables["reachable"], last)
    mean = float(t.reachable_cosine.mean())
    below = float((t.reachable_cosine < HIGH_COSINE).mean())
    return _cosine_verdict(mean, f"mean bound {mean:.3f} (max {t.reachable_cosine.max():.3f}); {below:.0%} of layers below {HIGH_COSINE}",
                           "TLoRA's subspaces leave room for a high cosine",
                           f"in {below:.0%} of layers no TLoRA update could reach a cosine of {HIGH_COSINE}, whatever it learns")


@reading(6, "cosine of the adapted weights W0 + ΔW", f"> {HIGH_COSINE}", ("adapted_similarity",))
def _adapted(tables, last):
    t = _at(tables["adapted_similarity"], last)
    mean, shared = float(t.adapted_cosine.mean()), float(np.minimum(t.w0_cosine_a, t.w0_cosine_b).mean())
    return Verdict(mean, f"mean cos(W0 + ΔW_LoRA, W0 + ΔW_TLoRA) {mean:.4f}; cos(W0, W0 + ΔW) alone {shared:.4f}",
                   _holds(mean, lambda v: v > HIGH_COSINE),
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
    cross = float(_at(tables["similarity"], last).cosine.mean())
    text = f"LoRA–TLoRA {cross:.3f} / LoRA–LoRA {lora_lora:.3f} (random 95th percentile {chance:.3f})"
    if lora_lora <= chance:
        return Verdict(math.nan, text, None, "two LoRA seeds are no more alike than chance, so the cosine cannot tell methods apart here")
    share = cross / lora_lora
    return _cosine_verdict(share, f"{text} = {share:.2f}", "TLoRA is about as close to LoRA as another LoRA seed is",
                           f"TLoRA reaches {share:.0%} of the similarity two LoRA seeds have: the low cosine is a real difference")


# --------------------------------------------------------------------------- evaluation
def last_common_epoch(tables: Mapping[str, pd.DataFrame]) -> int:
    norms = tables["norms"][tables["norms"].method.isin((REFERENCE_METHOD, PAPER_METHOD))]
    return int(norms.groupby("method")["epoch"].max().min())


def paper_claims(tables: Mapping[str, pd.DataFrame], headline_only: bool = False) -> pd.DataFrame:
    """Every reading of the paper's six findings on one LoRA–TLoRA pair's tables.

    One row per reading: finding, claim, reading, headline, statistic (text), value (the
    number the verdict tests), threshold, holds (True/False, or None where the tables it
    needs are missing or its statistic is undefined) and a one-line reason.
    """
    if "similarity" not in tables or "scales" not in tables:
        raise InputError("the paper's claims compare a LoRA run with a TLoRA run, and these tables have no such pair")
    last = last_common_epoch(tables)
    rows = []
    for r in READINGS:
        if headline_only and not r.headline:
            continue
        missing = [t for t in r.needs if t not in tables]
        if missing:
            verdict = Verdict(math.nan, "", None, f"not computed: needs {' and '.join(missing)}" + (
                " (a study with several seeds)" if any(m in ("seed_control", "scales_over_seeds") for m in missing) else ""))
        else:
            verdict = r.compute(tables, last)
        rows.append({"finding": r.finding, "claim": f"{r.finding}. {FINDINGS[r.finding]}", "reading": r.name, "headline": r.headline,
                     "statistic": verdict.statistic, "value": verdict.value, "threshold": r.threshold, "holds": verdict.holds,
                     "reason": verdict.reason, "epoch": last})
    return pd.DataFrame(rows)
