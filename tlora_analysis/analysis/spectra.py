"""Eigenvalue spectra and effective ranks of the updates (TLoRA paper finding 4; beyond the paper: effective rank)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from ..config import ANALYSIS
from ._common import UpdateSource, as_source, epochs_of, has_square_core, iter_deltas, per_run, row_key


@per_run
def spectra(run: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """Singular values σ_i of ΔW and eigenvalues σ_i² of ΔWᵀΔW, one row per (layer, epoch, i).

    The TLoRA paper's "eigenvalue distributions" (finding 4) compare these between LoRA
    and TLoRA. Computed factored: thin QRs of the outer factors and an SVD of the r x r core.
    """
    run = as_source(run)
    rows = []
    for key, delta in iter_deltas(run, epochs):
        s = delta.singular_values().numpy()
        for i, sigma in enumerate(s, start=1):
            rows.append({**key, "index": i, "singular_value": float(sigma), "eigenvalue": float(sigma) ** 2})
    return pd.DataFrame(rows)


@per_run
def core_eigenvalues(run: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """Eigenvalues (complex in general) per layer and epoch: of the trained r x r core of methods
    that have one (TLoRA's B, LoRA-XS's R; ``matrix`` names it), and for other methods of the square ΔW itself, whose nonzero
    eigenvalues are those of the r x r product K·R·L of its factors (``matrix = "ΔW"``)."""
    run = as_source(run)
    rows = []
    for epoch in epochs_of(run, epochs):
        trainable = run.trainable(epoch) if has_square_core(run.method) else {}
        for name, delta in run.deltas(epoch).items():
            if trainable:
                matrix, core = next(iter(trainable[name].items()))
                square = core.double()
            elif delta.shape[0] == delta.shape[1]:
                matrix, square = "ΔW", delta.core.double() @ delta.right.double() @ delta.left.double()
            else:
                continue
            values = torch.linalg.eigvals(square).numpy()
            for i, lam in enumerate(sorted(values, key=lambda v: -abs(v)), start=1):
                rows.append({**row_key(run, name, epoch), "matrix": matrix, "index": i, "real": lam.real, "imag": lam.imag,
                             "magnitude": abs(lam)})
    return pd.DataFrame(rows)


def rank_measures(singular_values: np.ndarray, energy: float = ANALYSIS.energy_rank) -> dict[str, float]:
    """Stable rank, entropy effective rank (Roy & Vetterli 2007) and energy rank of one spectrum.

    All three are NaN for a zero update, whose rank is not a meaningful number of directions.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    total = s.sum()
    if total <= 0:
        return {"stable_rank": math.nan, "entropy_rank": math.nan, f"energy_rank_{round(energy * 100)}": math.nan}
    p = s / total
    nonzero = p[p > 0]
    squares = np.cumsum(s**2)
    return {
        "stable_rank": float(squares[-1] / s[0] ** 2),
        "entropy_rank": float(np.exp(-np.sum(nonzero * np.log(nonzero)))),
        f"energy_rank_{round(energy * 100)}": int(np.searchsorted(squares, energy * squares[-1] * (1 - 1e-12)) + 1),
    }


@per_run
def effective_rank(run: UpdateSource, epochs: Iterable[int] | None = None, energy: float = ANALYSIS.energy_rank) -> pd.DataFrame:
    """Per layer and epoch: nominal rank (and the layer's full rank min(d_out, d_in), which a dense update's equals), stable rank ‖ΔW‖_F²/‖ΔW‖₂², entropy effective rank exp(H(σ/Σσ))
    and the number of singular values holding ``energy`` of Σσ² (beyond the paper).

    No power-law fit: a rank-r update has only r eigenvalues, far too few for WeightWatcher's α.
    """
    run = as_source(run)
    rows = []
    for key, delta in iter_deltas(run, epochs):
        rows.append({**key, "rank": delta.rank, "full_rank": min(delta.shape), **rank_measures(delta.singular_values().numpy(), energy)})
    return pd.DataFrame(rows)
