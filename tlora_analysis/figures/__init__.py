"""Paper-style figures. Each is a pure function of analysis tables; :func:`render_all` draws them all."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..io import atomic_write_bytes
from . import dynamics, geometry, overview
from .across_tasks import TASK_FIGURES
from .drawing import draw_registered, drawing_workers
from .study import STUDY_FIGURES
from .style import FORMATS, save, style

__all__ = ["render_all", "render_study", "render_tasks", "FIGURES", "STUDY_FIGURES", "TASK_FIGURES", "dynamics", "geometry", "overview"]

# name -> (function, tables it needs, what it shows)
FIGURES = {
    "spectra": (dynamics.spectra_comparison, ("spectra",), "singular values of ΔW of every source, at three layers"),
    "spectra_evolution": (dynamics.spectra_evolution, ("spectra",), "singular values of ΔW over epochs"),
    "norms": (dynamics.norms_over_epochs, ("norms",), "‖ΔW‖_F per layer over epochs"),
    "norm_heatmap": (dynamics.norm_heatmaps, ("norms",), "layer x epoch heat maps of ‖ΔW‖_F"),
    "scales": (dynamics.scales_by_layer, ("scales",), "TLoRA's α per layer over epochs"),
    "weight_histograms": (dynamics.weight_histograms, ("weight_histograms", "weight_stats"), "entries of the trained matrices with normal fits"),
    "cosine_similarity": (geometry.cosine_similarity, ("similarity",), "LoRA vs TLoRA cosine of ΔW with a random baseline"),
    "pairwise_similarity": (geometry.pairwise_similarity, ("similarity_pairs",), "mean cosine of ΔW for every pair of methods"),
    "subspace_similarity": (geometry.subspace_similarity, ("subspace",), "φ(i, j) of LoRA's and TLoRA's top subspaces"),
    "subspace_drift": (geometry.subspace_drift, ("subspace_epochs",), "φ between each epoch and the last"),
    "effective_rank": (geometry.effective_rank, ("effective_rank",), "stable and entropy effective rank over epochs"),
    "intruders": (geometry.intruders, ("intruder_counts", "amplification"), "intruder dimensions and amplification factors"),
    "learning_curves": (dynamics.learning_curves, ("metrics",), "training loss and evaluation metrics over epochs, per source"),
    "gradient_norms": (dynamics.gradient_norms, ("grad_norms",), "each layer's gradient-norm RMS per epoch, mean over layers"),
}

OVERVIEW = ("key panels side by side", ("several",))
"""What ``figures.json`` says of the overview, drawn beside the pair figures from whichever of their tables exist."""

SKIP_REASONS = {
    "scales": "no source learns a scale per layer (TLoRA's α)",
    "similarity": "no LoRA and TLoRA source to pair, as the paper does",
    "subspace": "no LoRA and TLoRA source to pair, as the paper does",
    "subspace_epochs": "no source has a trajectory (adapters, exports and snapshot files hold one state)",
    "similarity_pairs": "only one source",
    "intruder_counts": "no base model (W0): pass --base, or the base named in the runs must be local",
    "metrics": "no source recorded training metrics (adapters hold none)",
    "grad_norms": "no source recorded gradient norms (adapters hold none; train --no-grad-norms records none)",
    "ladder_over_seeds": "no LoRA cells to set the other cells against",
}


def _pair_figures(tables: Mapping[str, pd.DataFrame], out_dir: Path, skipped: list[dict], formats: tuple[str, ...],
                  workers=None) -> list[dict]:
    entries = draw_registered("FIGURES", tables, out_dir, skipped, formats, workers)
    paths = save(overview.overview(tables), out_dir, "overview", formats)
    shows, needs = OVERVIEW
    return [*entries, {"name": "overview", "files": [p.name for p in paths], "shows": shows, "tables": list(needs)}]


def render_tasks(tables: Mapping[str, pd.DataFrame], out_dir: str | Path, *, sources: Mapping | None = None,
                 formats: tuple[str, ...] = FORMATS) -> list[dict]:
    """Draw the figures of one study on several tasks (:func:`~tlora_analysis.analysis.across_tasks.across_tasks`'s
    tables) and write ``figures.json``."""
    out_dir, skipped = Path(out_dir), []
    with style():
        entries = draw_registered("TASK_FIGURES", tables, out_dir, skipped, formats)
    _manifest(out_dir, entries, skipped, sources, None)
    return entries


def _manifest(out_dir: Path, entries: list[dict], skipped: list[dict], sources: Mapping | None, settings: Mapping | None) -> None:
    """Write figures.json, and remove the figures an earlier run into this folder listed that this one did not draw
    (a figure now skipped must not linger beside the manifest that says so); nothing it did not write is touched."""
    _remove_stale(out_dir, {name for entry in entries for name in entry["files"]})
    manifest = {"figures": entries, "skipped": skipped, "sources": dict(sources or {}), "settings": dict(settings or {})}
    atomic_write_bytes(out_dir / "figures.json", (json.dumps(manifest, indent=2, default=str) + "\n").encode())


def _remove_stale(out_dir: Path, drawn: set[str]) -> None:
    try:
        earlier = json.loads((out_dir / "figures.json").read_text()).get("figures", [])
        files = {name for entry in earlier for name in entry.get("files", []) if isinstance(name, str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return
    for name in sorted(files - drawn):
        path = out_dir / name
        if Path(name).name == name and path.is_file() and not path.is_symlink():
            path.unlink()


def render_all(tables: Mapping[str, pd.DataFrame], out_dir: str | Path, *, sources: Mapping | None = None, settings: Mapping | None = None,
               formats: tuple[str, ...] = FORMATS, jobs: int = 1) -> list[dict]:
    """Draw every figure whose tables are present into ``out_dir`` (in ``formats``, PNG and PDF by default) and write ``figures.json``
    listing each file with what it shows, its sources and the analysis settings, and each figure the tables
    could not feed (``skipped``, with what it needed and why). ``jobs`` > 1 draws in that many worker processes."""
    out_dir, skipped = Path(out_dir), []
    with style(), drawing_workers(jobs) as workers:
        entries = _pair_figures(tables, out_dir, skipped, formats, workers)
    _manifest(out_dir, entries, skipped, sources, settings)
    return entries


def render_study(tables: Mapping[str, pd.DataFrame], out_dir: str | Path, *, sources: Mapping | None = None,
                 settings: Mapping | None = None, formats: tuple[str, ...] = FORMATS, jobs: int = 1) -> list[dict]:
    """Draw a study's figures (seed bands, controls, claims per seed) and, from its ``pair`` tables,
    every single-pair figure; write ``figures.json`` listing them all. ``jobs`` > 1 draws in worker processes."""
    out_dir, skipped = Path(out_dir), []
    with style(), drawing_workers(jobs) as workers:
        entries = draw_registered("STUDY_FIGURES", tables, out_dir, skipped, formats, workers)
        if "pair" in tables:
            entries += _pair_figures(tables["pair"], out_dir, skipped, formats, workers)
    _manifest(out_dir, entries, skipped, sources, settings)
    return entries
