"""Analyses of recorded updates. Each takes runs (or paths) and returns a tidy pandas DataFrame.

Paper (TLoRA, arXiv 2504.18735) findings and where they are measured:
1. Gaussian-like B                    -> :func:`weight_distributions`, :func:`weight_histograms`
2. stable norms across epochs         -> :func:`norms`
3. α varies across layers             -> :func:`scales`, :func:`scale_variation`
4. eigenvalue spectra like LoRA's     -> :func:`spectra`, :func:`core_eigenvalues`
5. norms close to LoRA's              -> :func:`norms`
6. high LoRA/TLoRA cosine             -> :func:`update_similarity`
Beyond the paper: :func:`effective_rank`, :func:`subspace_similarity` (LoRA §7),
:func:`amplification`, :func:`intruder_dimensions`, and :func:`summary`.
"""

from importlib import import_module

from ._common import as_source, module_and_layer, runs_with_settings
from .base_alignment import amplification, intruder_counts, intruder_dimensions
from .norms import norms, scale_variation, scales
from .similarity import (
    adapted_weight_similarity,
    random_subspace_similarity,
    reachable_cosine,
    subspace_similarity,
    subspace_similarity_table,
    update_similarity,
)
from .spectra import core_eigenvalues, effective_rank, rank_measures, spectra
from .summary import summary
from .training_curves import gradient_norms, training_metrics

_LAZY = {"weight_distributions": "distributions", "weight_histograms": "distributions", "compare_runs": "compare", "paper_claims": "claims", "READINGS": "claims",
         "aggregate": "seed_statistics", "similarity_controls": "controls", "rank_similarity": "controls", "study_claims": "controls", "summarize_claims": "controls", "function_similarity": "function_space"}
"""Imported on first use: they need scipy's statistics, which ``inspect`` should not pay for."""

__all__ = [
    "as_source", "module_and_layer", "spectra", "core_eigenvalues", "effective_rank", "rank_measures", "norms", "scales",
    "scale_variation", "weight_distributions", "weight_histograms", "update_similarity", "subspace_similarity",
    "subspace_similarity_table", "random_subspace_similarity", "amplification", "intruder_dimensions", "intruder_counts",
    "summary", "compare_runs", "paper_claims", "READINGS", "aggregate", "similarity_controls", "rank_similarity", "study_claims", "summarize_claims", "function_similarity",
    "reachable_cosine", "adapted_weight_similarity", "runs_with_settings", "training_metrics", "gradient_norms",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
