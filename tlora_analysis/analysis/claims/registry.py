"""The TLoRA paper's six findings and the registry of their readings.

The paper states its findings in words. Each *reading* below turns one finding into a
statistic, a threshold fixed before looking at our runs, a verdict and a one-line reason.
Readings are small functions registered in :data:`READINGS` (in :mod:`.distribution` for
findings 1–3 and :mod:`.geometry` for 4–6), the way figures are in ``FIGURES``; each takes the analysis tables of one LoRA–TLoRA pair and the epoch to read.
A reading whose tables were not computed (W0 for the adapted-weight cosine, several seeds
for the seed controls) reports ``holds = None`` and says what it needs.

The thresholds are judgement calls, stated so that a reader can disagree; none was tuned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from ...errors import InputError

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
PATTERN_MAX_GAP = 0.1
"""Pattern readings (:mod:`.patterns`): the largest gap between two curves that each run normalises to [0, 1] itself."""
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


def at_epoch(table: pd.DataFrame, last: int, method: str | None = None) -> pd.DataFrame:
    table = table[table.epoch == last]
    return table[table.method == method] if method else table


def holds_if_defined(value: float, test: Callable[[float], bool]) -> bool | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else bool(test(value))


# --------------------------------------------------------------------------- evaluation
def last_common_epoch(tables: Mapping[str, pd.DataFrame]) -> int:
    norms = tables["norms"][tables["norms"].method.isin((REFERENCE_METHOD, PAPER_METHOD))]
    return int(norms.groupby("method")["epoch"].max().min())


def meeting(tables: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with a one-state source (an adapter, an export) met at the other's last epoch, as
    :func:`~tlora_analysis.analysis.similarity.paired_epochs` meets them: its rows in every per-source table
    are read at that epoch, so that the claims compare the two at the run's end, not at its epoch 0."""
    norms = tables["norms"][tables["norms"].method.isin((REFERENCE_METHOD, PAPER_METHOD))]
    epochs = norms.groupby("method")["epoch"].unique()
    if len(epochs) != 2 or not any(len(e) == 1 for e in epochs) or all(len(e) == 1 for e in epochs):
        return dict(tables)
    single = next(m for m, e in epochs.items() if len(e) == 1)
    state, last = int(epochs[single][0]), int(max(e.max() for m, e in epochs.items() if m != single))
    out = {}
    for name, table in tables.items():
        if isinstance(table, pd.DataFrame) and {"method", "epoch"} <= set(table.columns) and "run_a" not in table.columns:
            table = table.copy()
            table.loc[(table.method == single) & (table.epoch == state), "epoch"] = last
        out[name] = table
    return out


def paper_claims(tables: Mapping[str, pd.DataFrame], headline_only: bool = False) -> pd.DataFrame:
    """Every reading of the paper's six findings on one LoRA–TLoRA pair's tables.

    One row per reading: finding, claim, reading, headline, statistic (text), value (the
    number the verdict tests), threshold, holds (True/False, or None where the tables it
    needs are missing or its statistic is undefined) and a one-line reason.
    """
    if "similarity" not in tables or "scales" not in tables:
        raise InputError("the paper's claims compare a LoRA run with a TLoRA run, and these tables have no such pair")
    tables = meeting(tables)
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
