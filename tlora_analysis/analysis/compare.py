"""All tables for a comparison of runs of any methods; the paper's claims read them in :mod:`.claims`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..config import ANALYSIS, METHODS
from ..errors import InputError
from ._common import UpdateSource, learns_scale, with_settings
from .base_alignment import amplification, intruder_counts, intruder_dimensions
from .claims import PAPER_METHOD, REFERENCE_METHOD
from .distributions import weight_distributions, weight_histograms
from .norms import norms, scales
from .similarity import (
    adapted_weight_similarity,
    paired_epochs,
    reachable_cosine,
    subspace_drift,
    subspace_similarity_table,
    update_similarity,
)
from .spectra import core_eigenvalues, effective_rank, spectra
from .summary import summary
from .training_curves import gradient_norms, training_metrics

METHOD_ORDER = {method: i for i, method in enumerate(METHODS)}


def compare_runs(
    runs: Sequence[UpdateSource] | Mapping[str, UpdateSource],
    base_weights: Mapping[str, torch.Tensor] | None = None,
    *,
    bins: int = ANALYSIS.histogram_bins,
    baseline_samples: int = ANALYSIS.baseline_samples,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every analysis table for any set of sources of the same model: runs, study cells, snapshot files,
    peft adapters and exports, of any methods, seeds and lengths.

    Args:
        runs: sources or paths, or a mapping ``label -> source`` (see
            :func:`~tlora_analysis.sources.open_sources`: each gets a unique label, the ``run`` column).
        base_weights: W0 per module, for amplification and intruders.
        bins: histogram bins of the trained matrices.
        baseline_samples: random updates per (shape, rank) for the cosine baseline.
        progress: a tqdm bar over the tables.

    Keys: spectra, norms, effective_rank, weight_stats, weight_histograms, summary (every source);
    subspace_epochs (each epoch of each trajectory vs its own last); ``similarity_pairs`` (every pair
    of sources, ``same_method`` marking pairs of one method, ``epoch_a``/``epoch_b`` the epochs that
    met); ``scales`` for methods that learn one; for the paper's pair (the first LoRA and the first
    TLoRA source) ``similarity``, ``subspace``, ``reachable`` and ``core_eigenvalues`` at their last
    shared epoch; with ``base_weights`` also amplification, intruders, intruder_counts and (for the
    pair) ``adapted_similarity``.
    """
    from tqdm.auto import tqdm

    from ..sources import open_sources

    sources = sorted(open_sources(runs), key=lambda r: METHOD_ORDER.get(r.method, len(METHOD_ORDER)))
    adapted = [r for r in sources if r.layers]
    if not adapted:
        raise InputError("compare_runs needs at least one source with adapted layers")
    steps = [*_source_steps(adapted, bins), ("similarity_pairs", lambda: _all_pairs(adapted, baseline_samples))]
    if base_weights is not None:
        steps += _base_steps(adapted, base_weights)
    tables: dict[str, pd.DataFrame] = {}
    for name, compute in tqdm(steps, desc="tables", unit="table", disable=not progress, leave=False):
        table = compute()
        if table is not None:
            tables[name] = table
    tables.update(_paper_pair(adapted, tables, base_weights))
    return tables


def _source_steps(adapted: list, bins: int) -> list:
    """The per-source tables, each a concatenation over the sources (trajectory tables over trajectories only)."""
    trajectories = [r for r in adapted if len(r.epochs) > 1]
    scaled = [r for r in adapted if learns_scale(r.method)]

    def over(sources, table):
        """One table over the sources; a source with no rows (an adapter has no training record) adds none."""
        def concatenated():
            tables = [t for t in (table(r) for r in sources) if len(t)]
            return pd.concat(tables, ignore_index=True) if tables else None
        return concatenated

    return [("spectra", over(adapted, spectra)), ("norms", over(adapted, norms)),
            ("effective_rank", over(adapted, lambda r: effective_rank(r, energy=ANALYSIS.energy_rank))),
            ("weight_stats", over(adapted, lambda r: weight_distributions(r, pool=True))),
            ("weight_histograms", over(adapted, lambda r: weight_histograms(r, bins=bins, pool=True))),
            ("subspace_epochs", over(trajectories, subspace_drift)), ("summary", over(adapted, summary)), ("scales", over(scaled, scales)),
            ("metrics", over(adapted, training_metrics)), ("grad_norms", over(adapted, gradient_norms))]


def _all_pairs(adapted: list, baseline_samples: int) -> pd.DataFrame | None:
    pairs = [(a, b) for i, a in enumerate(adapted) for b in adapted[i + 1:]]
    return pd.concat([update_similarity(a, b, baseline_samples=baseline_samples) for a, b in pairs], ignore_index=True) if pairs else None


def _base_steps(adapted: list, base_weights: Mapping[str, torch.Tensor]) -> list:
    def intruders():
        return pd.concat([intruder_dimensions(r, base_weights, k=ANALYSIS.intruder_k, epsilon=ANALYSIS.intruder_epsilon)
                          for r in adapted], ignore_index=True)

    found = {}
    return [("amplification", lambda: pd.concat([amplification(r, base_weights) for r in adapted], ignore_index=True)),
            ("intruders", lambda: found.setdefault("table", intruders())),
            ("intruder_counts", lambda: intruder_counts(found.setdefault("table", intruders())))]


def _paper_pair(adapted: list, tables: Mapping[str, pd.DataFrame], base_weights) -> dict[str, pd.DataFrame]:
    """The paper's pair, the first LoRA and the first TLoRA source, at the last epochs they meet: its claims read these."""
    lora = next((r for r in adapted if r.method == REFERENCE_METHOD), None)
    tlora = next((r for r in adapted if r.method == PAPER_METHOD), None)
    if lora is None or tlora is None:
        return {}
    epoch_a, epoch_b = paired_epochs(lora, tlora)[-1]
    epochs = [epoch_a] if epoch_a == epoch_b else None
    similarity = tables["similarity_pairs"]
    pair = {
        "similarity": similarity[(similarity.run_a == lora.name) & (similarity.run_b == tlora.name)].reset_index(drop=True),
        "subspace": subspace_similarity_table(lora, tlora, epochs=epochs),
        "reachable": reachable_cosine(lora, tlora, epochs=epochs),
        "core_eigenvalues": pd.concat([core_eigenvalues(lora, [epoch_a]), core_eigenvalues(tlora, [epoch_b])], ignore_index=True),
    }
    if base_weights is not None:
        pair["adapted_similarity"] = adapted_weight_similarity(lora, tlora, base_weights, epochs=epochs)
    return pair


def metrics_over_epochs(study) -> pd.DataFrame:
    """One row per finished cell and epoch: its swept settings and every recorded metric."""
    rows = []
    for run, settings in study.finished():
        for epoch, metrics in run.metrics.items():
            rows.append({"run": run.name, **settings, "epoch": epoch, **metrics})
    return pd.DataFrame(rows)


def _ladder_tables(study, function_examples: int, base_weights=None) -> dict[str, pd.DataFrame]:
    """The ladder (:mod:`.ladder`) where the study has LoRA cells to set the others against."""
    from .ladder import ladder, ladder_layers, ladder_over_seeds

    layers = ladder_layers(study, function_examples, base_weights)
    if not len(layers):
        return {}
    table = ladder(study, layers)
    return {"ladder_layers": layers, "ladder": table, "ladder_over_seeds": ladder_over_seeds(table)}


def compare_study(study, base_weights: Mapping[str, torch.Tensor] | None = None, *, pair_seed: int | None = None,
                  function_examples: int = 64, runs_only: bool = False) -> dict[str, pd.DataFrame]:
    """Every table of a study: per-run tables with settings columns, their means and CIs over seeds,
    the controls, and the paper's claims per seed and summarized.

    Keys: runs, metrics, norms, spectra (last epoch), effective_rank, scales, controls,
    rank_similarity, claims_per_seed, claims, and where LoRA cells set the others a reference
    ladder_layers, ladder and ladder_over_seeds (:mod:`.ladder`); each per-run table also as ``<name>_over_seeds``
    (:func:`~tlora_analysis.analysis.seed_statistics.aggregate`). ``pair`` holds the
    :func:`compare_runs` tables of one LoRA and one TLoRA cell at ``pair_seed`` (default: the
    smallest seed) for the single-pair figures. ``function_examples`` validation examples feed
    the function-space reading of the claims (0 skips it; it needs the runs' base model). ``runs_only``
    keeps to the cells' metrics and parameter counts (what a learning-rate sweep chooses from) and reads no update.
    """
    from .controls import rank_similarity, similarity_controls, study_claims, summarize_claims
    from .seed_statistics import aggregate

    runs = study.runs
    tables: dict[str, pd.DataFrame] = {"runs": runs, "metrics": metrics_over_epochs(study)}
    adapted = [] if runs_only else study.finished(adapted_only=True)
    if adapted:
        last = min(run.epochs[-1] for run, _ in adapted)
        tables["norms"] = norms(study)
        tables["spectra"] = spectra(study, [last])
        tables["effective_rank"] = effective_rank(study, [last], energy=ANALYSIS.energy_rank)
        if any(learns_scale(r.method) for r, _ in adapted):
            tables["scales"] = pd.concat([with_settings(scales(r), s) for r, s in adapted if learns_scale(r.method)], ignore_index=True)
        tables["controls"] = similarity_controls(study, baseline_samples=ANALYSIS.baseline_samples)
        tables["rank_similarity"] = rank_similarity(study)
        tables["claims_per_seed"] = study_claims(study, base_weights, controls=tables["controls"], norms_table=tables["norms"],
                                                 function_examples=function_examples if base_weights is not None else 0)
        tables["claims"] = summarize_claims(tables["claims_per_seed"])
        tables.update(_ladder_tables(study, function_examples if base_weights is not None else 0, base_weights))
    seeds = "seed" in study.swept and runs.seed.nunique() > 1
    for name in ("metrics", "norms", "spectra", "effective_rank", "scales"):
        if seeds and name in tables:
            tables[f"{name}_over_seeds"] = aggregate(tables[name])
    finished = runs[runs.status == "finished"]
    if len(finished) and "seed" in finished.columns:  # one seed too: a one-seed sweep still chooses a rate (n = 1, no CI)
        keys = ["method", *(c for c in study.swept if c not in ("method", "seed"))]
        tables["runs_over_seeds"] = aggregate(finished, by=keys, values=["final_metric", "trainable_params", "adapter_params"])
    pair_seed = min((s.get("seed", 0) for _, s in adapted), default=None) if pair_seed is None else pair_seed
    pair = [r for r, s in adapted if s.get("seed", 0) == pair_seed]
    lora = [r for r in pair if r.method == REFERENCE_METHOD][:1]
    tlora = [r for r in pair if r.method == PAPER_METHOD][:1]
    others = [r for r in pair if r.method not in (REFERENCE_METHOD, PAPER_METHOD)]
    if lora or tlora:
        tables["pair"] = compare_runs([*lora, *tlora, *others], base_weights)
    return tables
