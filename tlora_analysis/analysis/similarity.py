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
from ._common import UpdateSource, as_source, epochs_of, fixed_sides, module_and_layer, per_pair, per_run

PEFT_PREFIX = "base_model.model."
PAIR_COLUMNS = ["run_a", "run_b", "method_a", "method_b", "same_method", "module", "layer", "epoch", "epoch_a", "epoch_b", "name"]


def paired_epochs(run_a: UpdateSource, run_b: UpdateSource, epochs: Iterable[int] | None = None) -> list[tuple[int, int]]:
    """(epoch_a, epoch_b) to compare. Two trajectories: their common epochs (runs of different lengths
    meet where both have one). A source that holds one state (an adapter, an export, a snapshot file):
    each source's last epoch, so a run meets an adapter at the run's end, never at its zero epoch 0."""
    if epochs is not None:
        chosen = list(epochs)
        epochs_of(run_a, chosen), epochs_of(run_b, chosen)  # both must have every chosen epoch
        return [(e, e) for e in chosen]
    own_a, own_b = epochs_of(run_a), epochs_of(run_b)
    if len(own_a) == 1 or len(own_b) == 1:
        return [(own_a[-1], own_b[-1])]
    common = [e for e in own_a if e in set(own_b)]
    if not common:
        raise InputError(f"{run_a.name!r} (epochs {own_a}) and {run_b.name!r} (epochs {own_b}) share no epoch")
    return [(e, e) for e in common]


def _module_key(name: str) -> str:
    return name.removeprefix(PEFT_PREFIX)


def shared_modules(run_a: UpdateSource, run_b: UpdateSource, deltas_a: dict, deltas_b: dict) -> list[tuple[str, str]]:
    """(name in a, name in b) of the modules both adapt, in a's order, matched by name whatever the
    tensor order and peft's ``base_model.model.`` prefix; one line naming both sides if they share none."""
    by_key = {_module_key(n): n for n in deltas_b}
    shared = [(n, by_key[_module_key(n)]) for n in deltas_a if _module_key(n) in by_key]
    if not shared:
        raise InputError(f"{run_a.name!r} and {run_b.name!r} share no adapted module ({run_a.name}: {', '.join(list(deltas_a)[:4]) or 'none'}"
                         f"{' ...' if len(deltas_a) > 4 else ''}; {run_b.name}: {', '.join(list(deltas_b)[:4]) or 'none'}"
                         f"{' ...' if len(deltas_b) > 4 else ''})")
    return shared


def _matched(run_a: UpdateSource, run_b: UpdateSource, epochs: Iterable[int] | None):
    """(row key, ΔW_a, ΔW_b) for every shared module at every paired epoch."""
    for epoch_a, epoch_b in paired_epochs(run_a, run_b, epochs):
        deltas_a, deltas_b = run_a.deltas(epoch_a), run_b.deltas(epoch_b)
        for name_a, name_b in shared_modules(run_a, run_b, deltas_a, deltas_b):
            a, b = deltas_a[name_a], deltas_b[name_b]
            if a.shape != b.shape:
                raise InputError(f"module {_module_key(name_a)}: shapes differ, {a.shape} in {run_a.name!r} vs {b.shape} in {run_b.name!r}")
            yield pair_key(run_a, run_b, _module_key(name_a), epoch_a, epoch_b), a, b


def pair_key(run_a: UpdateSource, run_b: UpdateSource, name: str, epoch_a: int, epoch_b: int) -> dict:
    """The columns every table of two sources starts with. ``epoch`` is the later of the two (they are
    equal where both sources have trajectories)."""
    module, layer = module_and_layer(name)
    return {"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
            "same_method": run_a.method == run_b.method, "module": module, "layer": layer, "epoch": max(epoch_a, epoch_b),
            "epoch_a": epoch_a, "epoch_b": epoch_b, "name": name}


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


@per_pair
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
    shape (drawing them per layer dominated the cost at 70B shapes). Where either update is zero
    (a run's epoch 0), it has no direction: the cosine is reported as 0 and ``note`` says so.

    Which epochs meet is :func:`paired_epochs`'s rule (``epoch_a``, ``epoch_b``); modules are
    matched by name (:func:`shared_modules`), so the cosine column does not depend on the order of
    the two sources.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    generator = torch.Generator().manual_seed(seed)
    rows, baselines, random_updates = [], {}, {}
    for key, a, b in _matched(run_a, run_b, epochs):
        name = key["name"]
        if name not in baselines or math.isnan(baselines[name][0]):
            shape = (a.shape, a.rank)
            if baseline_samples and shape not in random_updates:
                random_updates[shape] = RandomUpdates(a, baseline_samples, generator)
            if baseline_samples and b.frobenius_norm() > 0:
                samples = np.abs(random_updates[shape].cosines(b))
                baselines[name] = (float(samples.mean()), float(np.quantile(samples, 0.95)))
            else:
                baselines[name] = (math.nan, math.nan)
        zero = [label for label, d, e in ((run_a.name, a, key["epoch_a"]), (run_b.name, b, key["epoch_b"])) if d.frobenius_norm() == 0]
        rows.append({**key, "cosine": 0.0 if zero else cosine_similarity(a, b),
                     "baseline_abs_mean": baselines[name][0], "baseline_abs_q95": baselines[name][1],
                     "note": f"zero update in {' and '.join(zero)}: no direction, cosine reported as 0" if zero else ""})
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


@per_pair
def subspace_similarity_table(
    run_a: UpdateSource,
    run_b: UpdateSource,
    epochs: Iterable[int] | None = None,
    epoch_b: int | None = None,
    i: int | None = None,
    j: int | None = None,
    side: str = "left",
    diagonal: bool = False,
) -> pd.DataFrame:
    """φ on a grid (i', j') per module, layer and epoch, with ``phi_random`` from random subspaces.

    Compare LoRA with TLoRA (two runs), seeds (two runs of one method) or epochs of one run
    (``run_b = run_a`` with ``epoch_b`` fixed, e.g. the last epoch). ``diagonal`` keeps the rows i' = j' alone: r
    rows per layer instead of r² (a full-rank dense update has r = d, 147,456 rows per layer and epoch at d = 384).
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    rows, random_cache = [], {}
    if epoch_b is not None:
        fixed = dict(run_b.deltas(epoch_b))  # once: asking per layer would re-read the snapshot for every layer
        pairs = ((pair_key(run_a, run_b, n, e, epoch_b), d, fixed[n]) for e in epochs_of(run_a, epochs) for n, d in run_a.deltas(e).items())
    else:
        pairs = _matched(run_a, run_b, epochs)
    for key, a, b in pairs:
        ii, jj = i or a.rank, j or b.rank
        phi = subspace_similarity(a, b, ii, jj, side)
        dim = a.shape[0] if side == "left" else a.shape[1]
        if (dim, ii, jj) not in random_cache:
            random_cache[(dim, ii, jj)] = random_subspace_similarity(dim, ii, jj)
        for x in range(ii):
            for y in ((x,) if x < jj else ()) if diagonal else range(jj):
                rows.append({**key, "epoch": key["epoch_a"], "side": side, "i": x + 1, "j": y + 1, "phi": phi[x, y],
                             "phi_random": random_cache[(dim, ii, jj)][x, y]})
    return pd.DataFrame(rows, columns=None if rows else [*PAIR_COLUMNS, "side", "i", "j", "phi", "phi_random"])


@per_pair
def reachable_cosine(run_a: UpdateSource, run_b: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """The largest cosine with ΔW_a that any update run_b's method can learn could reach, per layer.

    run_b's fixed sides (``MethodSpec.fixed_sides``: TLoRA's frozen A and C, LoRA-FA's and VeRA's
    A, LoRA-XS's singular vectors) confine every update it can learn to the matrices with those
    column and row spaces, so its best cosine with ΔW_a is ‖P_L ΔW_a P_R‖_F / ‖ΔW_a‖_F, P_L and
    P_R the orthogonal projectors onto the fixed spans (the identity on a free side). Where this
    bound is below a threshold, no training could make the cosine reach it. ``reachable_random``
    is the root-mean-square bound for uniformly random fixed subspaces of the same sizes,
    √(Π r_side / dim_side), what frozen random factors would give without any relation to ΔW_a.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    sides = fixed_sides(run_b.method)
    rows = []
    for key, a, b in _matched(run_a, run_b, epochs):
        rows.append({**key, "reachable_cosine": reachable_bound(a, b, sides),
                     "reachable_random": random_reachable_bound(b.shape, b.rank, sides)})
    return pd.DataFrame(rows)


def reachable_bound(target: FactoredDelta, confined: FactoredDelta, sides: Iterable[str]) -> float:
    """‖P_L T P_R‖_F / ‖T‖_F for T = ``target``, with P_L, P_R the projectors onto the column space of
    ``confined.left`` and the row space of ``confined.right`` on the ``sides`` named (the identity
    elsewhere); from thin QRs and r x r products. NaN for a zero target."""
    sides = set(sides)
    norm = target.frobenius_norm()
    if norm == 0:
        return math.nan
    left, right = target.left.double(), target.right.double().T
    if "left" in sides:
        left = torch.linalg.qr(confined.left.double())[0].T @ left
    if "right" in sides:
        right = torch.linalg.qr(confined.right.double().T)[0].T @ right
    return min(1.0, float(torch.linalg.matrix_norm(left @ target.core.double() @ right.T)) / norm)


def random_reachable_bound(shape: tuple[int, int], rank: int, sides: Iterable[str]) -> float:
    """√E[bound²] for uniformly random fixed subspaces of dimension ``rank``: E[P_U] = (r/d)·I, and
    the two sides are independent, so E‖P_L T P_R‖² = Π (r / dim) ‖T‖² over the fixed sides."""
    dims = {"left": shape[0], "right": shape[1]}
    return math.sqrt(math.prod(min(1.0, rank / dims[side]) for side in set(sides)))


def _inner_dense(weight: torch.Tensor, delta: FactoredDelta) -> float:
    """⟨W, ΔW⟩_F from ΔW's factors: Σ (Lᵀ W Rᵀ) ⊙ K."""
    return float(((delta.left.double().T @ weight @ delta.right.double().T) * delta.core.double()).sum())


@per_pair
def adapted_weight_similarity(run_a: UpdateSource, run_b: UpdateSource, base_weights, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """cos(W0 + ΔW_a, W0 + ΔW_b) per layer, beside cos(W0, W0 + ΔW_a) and cos(W0, W0 + ΔW_b).

    The adapted weights share W0, so their cosine is high whatever the updates are; the two
    W0 columns show how high it is for that reason alone. Also ‖W0‖_F and each relative norm
    ‖ΔW‖_F / ‖W0‖_F. No d x d matrix besides W0 itself is formed.
    """
    run_a, run_b = as_source(run_a), as_source(run_b)
    rows = []
    for key, a, b in _matched(run_a, run_b, epochs):
        w0 = base_weights[key["name"]].double()
        w0_sq = float(w0.pow(2).sum())
        wa, wb = _inner_dense(w0, a), _inner_dense(w0, b)
        na, nb = a.frobenius_norm() ** 2, b.frobenius_norm() ** 2
        norm_a, norm_b = math.sqrt(w0_sq + 2 * wa + na), math.sqrt(w0_sq + 2 * wb + nb)
        rows.append({**key, "adapted_cosine": (w0_sq + wa + wb + inner(a, b)) / (norm_a * norm_b),
                     "w0_cosine_a": (w0_sq + wa) / (math.sqrt(w0_sq) * norm_a), "w0_cosine_b": (w0_sq + wb) / (math.sqrt(w0_sq) * norm_b),
                     "w0_frobenius": math.sqrt(w0_sq), "relative_norm_a": math.sqrt(na / w0_sq), "relative_norm_b": math.sqrt(nb / w0_sq)})
    return pd.DataFrame(rows)


@per_run
def subspace_drift(run: UpdateSource) -> pd.DataFrame:
    """φ between each trained epoch's top subspaces and the last epoch's, per module and layer (the diagonal i = j of
    :func:`subspace_similarity_table` of a run against itself): how far the update's directions still move. Per run,
    so a study's cells store it (for a dense-read update of full rank it is the costliest per-cell table)."""
    run = as_source(run)
    return subspace_similarity_table(run, run, epochs=[e for e in run.epochs if e != 0], epoch_b=run.epochs[-1], diagonal=True)
