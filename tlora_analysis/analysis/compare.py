"""All tables for a comparison of runs of any methods; the paper's claims read them in :mod:`.claims`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import torch

from ..config import ANALYSIS, METHODS
from ..errors import InputError
from ._common import UpdateSource, as_source, learns_scale, with_settings
from .base_alignment import amplification, intruder_counts, intruder_dimensions
from .claims import PAPER_METHOD, REFERENCE_METHOD
from .distributions import weight_distributions, weight_histograms
from .norms import norms, scales
from .similarity import adapted_weight_similarity, reachable_cosine, subspace_similarity_table, update_similarity
from .spectra import core_eigenvalues, effective_rank, spectra
from .summary import summary

METHOD_ORDER = {method: i for i, method in enumerate(METHODS)}

"""What :func:`compare_runs` computes with; figures.json records it next to the figures."""


def compare_runs(
    runs: Sequence[UpdateSource],
    base_weights: Mapping[str, torch.Tensor] | None = None,
    *,
    bins: int = ANALYSIS.histogram_bins,
    baseline_samples: int = ANALYSIS.baseline_samples,
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
    TLoRA run the paper's pair, ``similarity``, ``subspace``, ``reachable`` and
    ``core_eigenvalues`` (last epoch); and with ``base_weights`` also amplification,
    intruders, intruder_counts and (for the pair) ``adapted_similarity``.
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
        "effective_rank": pd.concat([effective_rank(r, energy=ANALYSIS.energy_rank) for r in adapted], ignore_index=True),
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
    scaled = [r for r in adapted if learns_scale(r.method)]
    if scaled:
        tables["scales"] = pd.concat([scales(r) for r in scaled], ignore_index=True)
    lora = [r for r in adapted if r.method == REFERENCE_METHOD]
    tlora = [r for r in adapted if r.method == PAPER_METHOD]
    if lora and tlora:  # the paper's pair: its claims and figures compare the first LoRA and the first TLoRA run
        similarity = tables["similarity_pairs"]
        tables["similarity"] = similarity[(similarity.run_a == lora[0].name) & (similarity.run_b == tlora[0].name)].reset_index(drop=True)
        tables["subspace"] = subspace_similarity_table(lora[0], tlora[0], epochs=[last])
        tables["reachable"] = reachable_cosine(lora[0], tlora[0], epochs=[last])
        tables["core_eigenvalues"] = pd.concat([core_eigenvalues(lora[0], [last]), core_eigenvalues(tlora[0], [last])], ignore_index=True)
        if base_weights is not None:
            tables["adapted_similarity"] = adapted_weight_similarity(lora[0], tlora[0], base_weights, epochs=[last])
    if base_weights is not None:
        tables["amplification"] = pd.concat([amplification(r, base_weights) for r in adapted], ignore_index=True)
        intruders = pd.concat(
            [intruder_dimensions(r, base_weights, k=ANALYSIS.intruder_k, epsilon=ANALYSIS.intruder_epsilon) for r in adapted],
            ignore_index=True,
        )
        tables["intruders"] = intruders
        tables["intruder_counts"] = intruder_counts(intruders)
    return tables


def metrics_over_epochs(study) -> pd.DataFrame:
    """One row per finished cell and epoch: its swept settings and every recorded metric."""
    rows = []
    for run, settings in study.finished():
        for epoch, metrics in run.metrics.items():
            rows.append({"run": run.name, **settings, "epoch": epoch, **metrics})
    return pd.DataFrame(rows)


def compare_study(study, base_weights: Mapping[str, torch.Tensor] | None = None, *, pair_seed: int | None = None,
                  function_examples: int = 64) -> dict[str, pd.DataFrame]:
    """Every table of a study: per-run tables with settings columns, their means and CIs over seeds,
    the controls, and the paper's claims per seed and summarized.

    Keys: runs, metrics, norms, spectra (last epoch), effective_rank, scales, controls,
    rank_similarity, claims_per_seed, claims; each per-run table also as ``<name>_over_seeds``
    (:func:`~tlora_analysis.analysis.aggregate.aggregate`). ``pair`` holds the
    :func:`compare_runs` tables of one LoRA and one TLoRA cell at ``pair_seed`` (default: the
    smallest seed) for the single-pair figures. ``function_examples`` validation examples feed
    the function-space reading of the claims (0 skips it; it needs the runs' base model).
    """
    from .aggregate import aggregate
    from .controls import rank_similarity, similarity_controls, study_claims, summarize_claims

    runs = study.runs
    tables: dict[str, pd.DataFrame] = {"runs": runs, "metrics": metrics_over_epochs(study)}
    adapted = study.finished(adapted_only=True)
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
    seeds = "seed" in study.swept and runs.seed.nunique() > 1
    for name in ("metrics", "norms", "spectra", "effective_rank", "scales"):
        if seeds and name in tables:
            tables[f"{name}_over_seeds"] = aggregate(tables[name])
    finished = runs[runs.status == "finished"]
    if seeds and len(finished):
        keys = [c for c in study.swept if c != "seed"]
        tables["runs_over_seeds"] = aggregate(finished, by=keys, values=["final_metric", "trainable_params", "adapter_params"])
    pair_seed = min((s.get("seed", 0) for _, s in adapted), default=None) if pair_seed is None else pair_seed
    pair = [r for r, s in adapted if s.get("seed", 0) == pair_seed]
    lora = [r for r in pair if r.method == REFERENCE_METHOD][:1]
    tlora = [r for r in pair if r.method == PAPER_METHOD][:1]
    others = [r for r in pair if r.method not in (REFERENCE_METHOD, PAPER_METHOD)]
    if lora or tlora:
        tables["pair"] = compare_runs([*lora, *tlora, *others], base_weights)
    return tables
