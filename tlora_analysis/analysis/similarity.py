"""How alike two sets of updates are: Frobenius cosine (TLoRA paper finding 6) and subspace similarity
φ (LoRA paper §7), each with a random baseline so that "similar" has a scale."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch

from ..config import ANALYSIS
from ..errors import InputError
from ..factored import FactoredDelta, cosine_similarity, inner
from ._common import UpdateSource, as_source, epochs_of, module_and_layer


def _matched(run_a: UpdateSource, run_b: UpdateSource, epochs: Iterable[int] | None):
    common = [e for e in epochs_of(run_a) if e in set(epochs_of(run_b))] if epochs is None else list(epochs)
    if not common:
        raise InputError(f"runs {run_a.name!r} and {run_b.name!r} share no epoch")
    epochs_of(run_a, common), epochs_of(run_b, common)  # both must have every chosen epoch
    for epoch in common:
        deltas_a, deltas_b = run_a.deltas(epoch), run_b.deltas(epoch)
        if list(deltas_a) != list(deltas_b):
            only_a = sorted(set(deltas_a) - set(deltas_b))
            only_b = sorted(set(deltas_b) - set(deltas_a))
            raise InputError(
                f"runs {run_a.name!r} and {run_b.name!r} adapt different modules "
                f"(only in the first: {only_a or 'none'}; only in the second: {only_b or 'none'})"
            )
        for name in deltas_a:
            if deltas_a[name].shape != deltas_b[name].shape:
                raise InputError(f"module {name}: shapes differ, {deltas_a[name].shape} in {run_a.name!r} vs {deltas_b[name].shape} in {run_b.name!r}")
            yield epoch, name, deltas_a[name], deltas_b[name]


def random_like(delta: FactoredDelta, generator: torch.Generator) -> FactoredDelta:
    """An independent Gaussian update with the same shape and rank (norm is irrelevant for a cosine)."""
    d_out, d_in = delta.shape
    r = delta.rank
    return FactoredDelta(
        torch.randn(d_out, r, generator=generator, dtype=torch.float64),
        torch.eye(r, dtype=torch.float64),
        torch.randn(r, d_in, generator=generator, dtype=torch.float64),
    )


class RandomUpdates:
    """``samples`` independent Gaussian updates of one shape and rank, stacked so that their cosines
    with any update take two GEMMs instead of ``samples`` separate inner products."""

    def __init__(self, delta: FactoredDelta, samples: int, generator: torch.Generator) -> None:
        updates = [random_like(delta, generator) for _ in range(samples)]
        self.rank = delta.rank
        self.left = torch.cat([u.left for u in updates], dim=1)  # d_out x (n r)
        self.right = torch.cat([u.right for u in updates], dim=0)  # (n r) x d_in
        self.norms = torch.tensor([u.frobenius_norm() for u in updates], dtype=torch.float64)

    def cosines(self, other: FactoredDelta) -> np.ndarray:
        """cos(R_i, other) for every sample R_i (core = I): ⟨R_i, B⟩ = Σ ((L_iᵀ L_B) K_B) ⊙ (R_B R_iᵀ)ᵀ."""
        left = self.left.T @ other.left.double()  # (n r) x r_B
        right = other.right.double() @ self.right.T  # r_B x (n r)
        per_row = ((left @ other.core.double()) * right.T).sum(dim=1)  # (n r,)
        inners = per_row.reshape(-1, self.rank).sum(dim=1)
        return (inners / (self.norms * other.frobenius_norm())).numpy()


def update_similarity(
    run_a: UpdateSource,
    run_b: UpdateSource,
    epochs: Iterable[int] | None = None,
    baseline_samples: int = ANALYSIS.baseline_samples,
    seed: int = 0,
) -> pd.DataFrame:
    """Frobenius cosine of the two runs' ΔW per module, layer and epoch, exact in factor space.

    ``baseline_abs_mean`` and ``baseline_abs_q95`` are the mean and 95th percentile of
    |cos(ΔW_b, R)| over ``baseline_samples`` independent random updates R of ΔW_a's rank
    and shape: a cosine well above them is more alike than chance. Gaussian R is rotation
    invariant, so the R are drawn once per (shape, rank) and shared by all layers of that
    shape (drawing them per layer dominated the cost at 70B shapes). The cosine is NaN where
    either update is zero (epoch 0), since a zero update has no direction.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    generator = torch.Generator().manual_seed(seed)
    rows, baselines, random_updates = [], {}, {}
    for epoch, name, a, b in _matched(run_a, run_b, epochs):
        module, layer = module_and_layer(name)
        if name not in baselines or math.isnan(baselines[name][0]):
            key = (a.shape, a.rank)
            if baseline_samples and key not in random_updates:
                random_updates[key] = RandomUpdates(a, baseline_samples, generator)
            if baseline_samples and b.frobenius_norm() > 0:
                samples = np.abs(random_updates[key].cosines(b))
                baselines[name] = (float(samples.mean()), float(np.quantile(samples, 0.95)))
            else:
                baselines[name] = (math.nan, math.nan)
        rows.append({
            "run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
            "module": module, "layer": layer, "epoch": epoch, "name": name,
            "cosine": cosine_similarity(a, b),
            "baseline_abs_mean": baselines[name][0], "baseline_abs_q95": baselines[name][1],
        })
    return pd.DataFrame(rows)


def subspace_similarity(
    delta_a: FactoredDelta, delta_b: FactoredDelta, i: int | None = None, j: int | None = None, side: str = "left"
) -> np.ndarray:
    """φ(i', j') = ‖U_a[:, :i']ᵀ U_b[:, :j']‖_F² / min(i', j') for all i' ≤ i, j' ≤ j (LoRA paper §7.2).

    Returns an (i x j) array in [0, 1]: 1 where one subspace contains the other, about
    max(i', j')/d for random subspaces. ``side="right"`` compares right singular vectors
    (the input side, as for LoRA's A). All-NaN if either update is zero.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    i = delta_a.rank if i is None else i
    j = delta_b.rank if j is None else j
    if delta_a.frobenius_norm() == 0.0 or delta_b.frobenius_norm() == 0.0:
        return np.full((i, j), math.nan)
    pick = 0 if side == "left" else 2
    return _phi_grid(delta_a.top_singular_vectors(i)[pick], delta_b.top_singular_vectors(j)[pick])


def _phi_grid(basis_a: torch.Tensor, basis_b: torch.Tensor) -> np.ndarray:
    """φ for every pair of leading column counts of two orthonormal bases."""
    overlap = (basis_a.T @ basis_b).pow(2).numpy()
    sizes = np.minimum.outer(np.arange(1, basis_a.shape[1] + 1), np.arange(1, basis_b.shape[1] + 1))
    return overlap.cumsum(0).cumsum(1) / sizes


def random_subspace_similarity(dim: int, i: int, j: int, samples: int = 16, seed: int = 0) -> np.ndarray:
    """Mean φ of random i- and j-dimensional subspaces of R^dim (empirical; its expectation is max(i', j')/dim)."""
    generator = torch.Generator().manual_seed(seed)
    total = np.zeros((i, j))
    for _ in range(samples):
        a = torch.linalg.qr(torch.randn(dim, i, generator=generator, dtype=torch.float64))[0]
        b = torch.linalg.qr(torch.randn(dim, j, generator=generator, dtype=torch.float64))[0]
        total += _phi_grid(a, b)
    return total / samples


def subspace_similarity_table(
    run_a: UpdateSource,
    run_b: UpdateSource,
    epochs: Iterable[int] | None = None,
    epoch_b: int | None = None,
    i: int | None = None,
    j: int | None = None,
    side: str = "left",
) -> pd.DataFrame:
    """φ on a grid (i', j') per module, layer and epoch, with ``phi_random`` from random subspaces.

    Compare LoRA with TLoRA (two runs), seeds (two runs of one method) or epochs of one run
    (``run_b = run_a`` with ``epoch_b`` fixed, e.g. the last epoch).
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    rows, random_cache = [], {}
    if epoch_b is not None:
        fixed = dict(run_b.deltas(epoch_b))  # once: asking per layer would re-read the snapshot for every layer
        pairs = ((e, n, d, fixed[n]) for e in epochs_of(run_a, epochs) for n, d in run_a.deltas(e).items())
    else:
        pairs = _matched(run_a, run_b, epochs)
    for epoch, name, a, b in pairs:
        module, layer = module_and_layer(name)
        ii, jj = i or a.rank, j or b.rank
        phi = subspace_similarity(a, b, ii, jj, side)
        dim = a.shape[0] if side == "left" else a.shape[1]
        if (dim, ii, jj) not in random_cache:
            random_cache[(dim, ii, jj)] = random_subspace_similarity(dim, ii, jj)
        for x in range(ii):
            for y in range(jj):
                rows.append({"run_a": run_a.name, "run_b": run_b.name, "module": module, "layer": layer, "epoch": epoch,
                             "epoch_b": epoch if epoch_b is None else epoch_b, "name": name, "side": side,
                             "i": x + 1, "j": y + 1, "phi": phi[x, y], "phi_random": random_cache[(dim, ii, jj)][x, y]})
    return pd.DataFrame(rows)


def reachable_cosine(run_a: UpdateSource, run_b: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """The largest cosine with ΔW_a that any update of run_b's form P·M·Q could reach, per layer.

    run_b's outer factors are fixed (TLoRA's frozen A and C), so every update it can learn
    lies in {P M Q}: its best cosine with ΔW_a is ‖P_P ΔW_a P_Q‖_F / ‖ΔW_a‖_F, with P_P and
    P_Q the orthogonal projectors onto span(P) and the row space of Q. Computed from thin QRs
    and r x r products. Where this bound is below a threshold, no training of run_b's core
    could make the cosine reach it.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    rows = []
    for epoch, name, a, b in _matched(run_a, run_b, epochs):
        module, layer = module_and_layer(name)
        q_left = torch.linalg.qr(b.left.double())[0]
        q_right = torch.linalg.qr(b.right.double().T)[0]
        projected = (q_left.T @ a.left.double()) @ a.core.double() @ (a.right.double() @ q_right)
        norm = a.frobenius_norm()
        rows.append({"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
                     "module": module, "layer": layer, "epoch": epoch, "name": name,
                     "reachable_cosine": float(torch.linalg.matrix_norm(projected)) / norm if norm > 0 else math.nan})
    return pd.DataFrame(rows)


def _inner_dense(weight: torch.Tensor, delta: FactoredDelta) -> float:
    """⟨W, ΔW⟩_F from ΔW's factors: Σ (Lᵀ W Rᵀ) ⊙ K."""
    return float(((delta.left.double().T @ weight @ delta.right.double().T) * delta.core.double()).sum())


def adapted_weight_similarity(run_a: UpdateSource, run_b: UpdateSource, base_weights, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """cos(W0 + ΔW_a, W0 + ΔW_b) per layer, beside cos(W0, W0 + ΔW_a) and cos(W0, W0 + ΔW_b).

    The adapted weights share W0, so their cosine is high whatever the updates are; the two
    W0 columns show how high it is for that reason alone. Also ‖W0‖_F and each relative norm
    ‖ΔW‖_F / ‖W0‖_F. No d x d matrix besides W0 itself is formed.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    rows = []
    for epoch, name, a, b in _matched(run_a, run_b, epochs):
        module, layer = module_and_layer(name)
        w0 = base_weights[name].double()
        w0_sq = float(w0.pow(2).sum())
        wa, wb = _inner_dense(w0, a), _inner_dense(w0, b)
        na, nb = a.frobenius_norm() ** 2, b.frobenius_norm() ** 2
        norm_a, norm_b = math.sqrt(w0_sq + 2 * wa + na), math.sqrt(w0_sq + 2 * wb + nb)
        rows.append({"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
                     "module": module, "layer": layer, "epoch": epoch, "name": name,
                     "adapted_cosine": (w0_sq + wa + wb + inner(a, b)) / (norm_a * norm_b),
                     "w0_cosine_a": (w0_sq + wa) / (math.sqrt(w0_sq) * norm_a), "w0_cosine_b": (w0_sq + wb) / (math.sqrt(w0_sq) * norm_b),
                     "w0_frobenius": math.sqrt(w0_sq), "relative_norm_a": math.sqrt(na / w0_sq), "relative_norm_b": math.sqrt(nb / w0_sq)})
    return pd.DataFrame(rows)
