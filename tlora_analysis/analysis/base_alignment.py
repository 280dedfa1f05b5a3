"""How an update relates to the pretrained weight W0: amplification (LoRA paper §7.3) and
intruder dimensions (Shuttleworth et al. 2024). Both need W0, so they take it explicitly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from ..config import ANALYSIS
from ..errors import InputError
from ._common import UpdateSource, as_source, epochs_of, iter_deltas, per_run


def _w0(base_weights: Mapping[str, torch.Tensor], name: str, shape: tuple[int, int]) -> torch.Tensor:
    if name not in base_weights:
        raise InputError(f"no base weight W0 for module {name!r}")
    w0 = base_weights[name].detach().to(torch.float64)
    if tuple(w0.shape) != tuple(shape):
        raise InputError(f"module {name!r}: W0 has shape {tuple(w0.shape)}, the update {tuple(shape)}")
    if not bool(torch.isfinite(w0).all()):
        raise InputError(f"module {name!r}: W0 holds NaN or infinite values")
    return w0


def top_left_singular_vectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """The top-k left singular vectors (d x k, float64). Large matrices go through ARPACK
    (``scipy.sparse.linalg.svds``, to machine precision): k vectors of a 4096² matrix in about a
    second instead of the ~20 s of a full SVD; small ones through a full SVD."""
    k = min(k, min(matrix.shape))
    if min(matrix.shape) <= max(64, 4 * k):
        return torch.linalg.svd(matrix, full_matrices=False)[0][:, :k]
    from scipy.sparse.linalg import svds

    u, s, _ = svds(matrix.numpy(), k=k, tol=0, random_state=0)
    return torch.from_numpy(u[:, np.argsort(s)[::-1]].copy())


def _keeps_svds(base_weights) -> bool:
    """Whether W0's SVD comes from a store (disk or memory) rather than being computed on each call."""
    from ..base_weights import LoadedWeights, SafetensorsWeights

    return isinstance(base_weights, (SafetensorsWeights, LoadedWeights))


def w0_projection(delta, w0: torch.Tensor) -> float:
    """‖Uᵀ W0 V‖_F on ΔW's top-r singular directions (NaN for a zero update, which has none)."""
    if delta.frobenius_norm() <= 0:
        return float("nan")
    u, _, v = delta.svd()
    return float(torch.linalg.matrix_norm(u.T @ w0 @ v))


def intruder_similarities(delta, w0: torch.Tensor, w0_vectors: torch.Tensor, k: int) -> np.ndarray:
    """m_j = max_i |cos(y_j, x_i)| for the top-k left singular vectors y_j of W0 + ΔW against W0's x_i."""
    y = top_left_singular_vectors(w0 + delta.dense(torch.float64), k)
    return (y.T @ w0_vectors).abs().max(dim=1).values.numpy()


def layer_alignment(delta, base_weights: Mapping[str, torch.Tensor], name: str, k: int = ANALYSIS.intruder_k,
                    epsilon: float = ANALYSIS.intruder_epsilon) -> dict[str, float]:
    """One update's amplification factor and number of intruder dimensions among the top k (for the ladder)."""
    from ..base_weights import w0_svd

    w0 = _w0(base_weights, name, delta.shape)
    norm, projection = delta.frobenius_norm(), w0_projection(delta, w0)
    best = intruder_similarities(delta, w0, w0_svd(base_weights, name)[0], k)
    return {"amplification": norm / projection if norm > 0 else float("nan"), "intruders": float((best < epsilon).sum())}


@per_run
def amplification(
    run: UpdateSource, base_weights: Mapping[str, torch.Tensor], epochs: Iterable[int] | None = None, seed: int = 0
) -> pd.DataFrame:
    """‖Uᵀ W0 V‖_F on ΔW's top-r singular directions and the amplification factor ‖ΔW‖_F / ‖Uᵀ W0 V‖_F.

    For scale, the same projection onto W0's own top-r directions (``w0_top_projection``,
    the largest possible) and onto random orthonormal directions (``random_projection``).
    A large factor means ΔW amplifies directions that W0 barely uses (LoRA paper §7.3).
    """
    from ..base_weights import w0_svd

    run = as_source(run)
    generator = torch.Generator().manual_seed(seed)
    rows, w0_svals = [], {}
    for key, delta in iter_deltas(run, epochs):
        w0 = _w0(base_weights, key["name"], delta.shape)
        r = delta.rank
        if key["name"] not in w0_svals:
            w0_svals[key["name"]] = w0_svd(base_weights, key["name"])[1] if _keeps_svds(base_weights) else torch.linalg.svdvals(w0)
        q = torch.linalg.qr(torch.randn(w0.shape[0], r, generator=generator, dtype=torch.float64))[0]
        p = torch.linalg.qr(torch.randn(w0.shape[1], r, generator=generator, dtype=torch.float64))[0]
        norm, projection = delta.frobenius_norm(), w0_projection(delta, w0)
        rows.append({
            **key, "delta_frobenius": norm, "w0_projection": projection,
            "amplification": norm / projection if norm > 0 else float("nan"),
            "w0_top_projection": float(w0_svals[key["name"]][:r].norm()),
            "random_projection": float(torch.linalg.matrix_norm(q.T @ w0 @ p)),
        })
    return pd.DataFrame(rows)


@per_run
def intruder_dimensions(
    run: UpdateSource,
    base_weights: Mapping[str, torch.Tensor],
    epochs: Iterable[int] | None = None,
    k: int = ANALYSIS.intruder_k,
    epsilon: float = ANALYSIS.intruder_epsilon,
) -> pd.DataFrame:
    """For the top-k left singular vectors y_j of the merged W0 + ΔW: m_j = max_i |cos(y_j, x_i)| over
    W0's left singular vectors x_i; y_j is an intruder when m_j < ε (Shuttleworth et al. 2024).

    One row per (layer, epoch, j). W0's SVD is computed once per layer and reused for
    every epoch. This is the one analysis that forms dense matrices: the merged weight.
    """
    from tqdm.auto import tqdm

    from ..base_weights import w0_svd

    run = as_source(run)
    rows, w0_vectors = [], {}
    cached = _keeps_svds(base_weights)  # then W0's vectors come from the store each time instead of piling up here
    total = len(run.layers) * len(epochs_of(run, epochs))
    for key, delta in tqdm(iter_deltas(run, epochs), total=total, desc="intruder dimensions", disable=None, leave=False):
        w0 = _w0(base_weights, key["name"], delta.shape)
        if cached:
            x = w0_svd(base_weights, key["name"])[0]
        else:
            if key["name"] not in w0_vectors:
                w0_vectors[key["name"]] = w0_svd(base_weights, key["name"])[0]
            x = w0_vectors[key["name"]]
        best = intruder_similarities(delta, w0, x, k)
        for j, m in enumerate(best, start=1):
            rows.append({**key, "j": j, "max_similarity": float(m), "is_intruder": bool(m < epsilon)})
    return pd.DataFrame(rows)


def intruder_counts(intruders: pd.DataFrame) -> pd.DataFrame:
    """Number of intruder dimensions among the top ``k`` per (run, module, layer, epoch) from an :func:`intruder_dimensions` table."""
    keys = ["run", "method", "module", "layer", "epoch"]
    return intruders.groupby(keys, as_index=False).agg(intruders=("is_intruder", "sum"), k=("j", "max"), min_similarity=("max_similarity", "min"))
