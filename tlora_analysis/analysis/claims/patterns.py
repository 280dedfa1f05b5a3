"""Pattern readings: the abstract's "closely resembles LoRA in ... parameter norms, and cosine
similarity of updates" read as *each method's own pattern over training looks like the other's*,
rather than as the two updates being alike.

- finding 5: the norm growth curves ‖ΔW_e‖ / ‖ΔW_last‖ (mean over layers) have the same shape;
- finding 6: the trajectories cos(ΔW_e, ΔW_last) (mean over layers) have the same shape.

Both compare epochs 1 .. last (epoch 0 is the zero update) by the largest gap between the two
curves; the threshold :data:`~.registry.PATTERN_MAX_GAP` was fixed before any run was read.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .registry import PAPER_METHOD, PATTERN_MAX_GAP, REFERENCE_METHOD, Verdict, holds_if_defined, reading


def _curves(norms: pd.DataFrame, last: int, column: str) -> pd.DataFrame | None:
    """Per method (columns) the mean over layers of ``column`` per epoch 1 .. last (rows); None without both methods or two epochs."""
    table = norms[(norms.epoch >= 1) & (norms.epoch <= last) & norms.method.isin((REFERENCE_METHOD, PAPER_METHOD))]
    wide = table.groupby(["epoch", "method"])[column].mean().unstack("method")
    if not {REFERENCE_METHOD, PAPER_METHOD} <= set(wide.columns) or len(wide) < 2:
        return None
    return wide[[REFERENCE_METHOD, PAPER_METHOD]].dropna()


def _gap_verdict(curves: pd.DataFrame | None, what: str, yes: str, no: str) -> Verdict:
    if curves is None or len(curves) < 2:
        return Verdict(math.nan, "fewer than two trained epochs", None, f"a {what} needs at least two trained epochs of both methods")
    gaps = (curves[PAPER_METHOD] - curves[REFERENCE_METHOD]).abs()
    gap, worst = float(gaps.max()), int(gaps.idxmax())
    holds = holds_if_defined(gap, lambda v: v < PATTERN_MAX_GAP)
    text = (f"largest gap {gap:.3f} (epoch {worst}); LoRA {', '.join(f'{v:.2f}' for v in curves[REFERENCE_METHOD])}, "
            f"TLoRA {', '.join(f'{v:.2f}' for v in curves[PAPER_METHOD])}")
    return Verdict(gap, text, holds, yes if holds else no)


@reading(5, "pattern: norm growth ‖ΔW_e‖_F / ‖ΔW_last‖_F over epochs, TLoRA's curve against LoRA's",
         f"largest gap < {PATTERN_MAX_GAP}", ("norms",), limits=(PATTERN_MAX_GAP,))
def _norm_growth(tables, last):
    norms = tables["norms"]
    final = norms[norms.epoch == last].groupby("method")["frobenius"].mean()
    curves = _curves(norms.assign(relative=norms.frobenius / norms.method.map(final).replace(0, np.nan)), last, "relative")
    return _gap_verdict(curves, "growth curve", "the norms grow with the same shape, whatever their sizes",
                        "the norms approach their final size along different curves")


@reading(6, "pattern: trajectory cos(ΔW_e, ΔW_last) over epochs, TLoRA's curve against LoRA's",
         f"largest gap < {PATTERN_MAX_GAP}", ("norms",), limits=(PATTERN_MAX_GAP,))
def _cosine_trajectory(tables, last):
    norms = tables["norms"]
    if "cosine_to_last" not in norms.columns:
        return Verdict(math.nan, "", None, "not computed: needs the norms table's cosine_to_last (recompute the tables)")
    return _gap_verdict(_curves(norms[norms.epoch <= last], last, "cosine_to_last"), "trajectory",
                        "each update settles on its final direction at the same pace",
                        "one update turns towards its final direction earlier than the other")
