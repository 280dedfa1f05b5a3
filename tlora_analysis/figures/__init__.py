"""Paper-style figures. Each is a pure function of analysis tables; :func:`render_all` draws them all."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ..store import atomic_write_bytes
from . import dynamics, geometry, overview
from .style import save, style

__all__ = ["render_all", "FIGURES", "dynamics", "geometry", "overview"]

# name -> (function, tables it needs, what it shows)
FIGURES = {
    "spectra": (dynamics.spectra_comparison, ("spectra",), "singular values of ΔW, LoRA vs TLoRA, at three layers"),
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
}


def render_all(tables: Mapping[str, pd.DataFrame], out_dir: str | Path, *, sources: Mapping | None = None, settings: Mapping | None = None) -> list[dict]:
    """Draw every figure whose tables are present into ``out_dir`` (PNG and PDF) and write ``figures.json``
    listing each file with what it shows, its source runs and the analysis settings."""
    out_dir = Path(out_dir)
    entries = []
    with style():
        for name, (draw, needs, description) in FIGURES.items():
            if all(key in tables for key in needs):
                paths = save(draw(*(tables[key] for key in needs)), out_dir, name)
                entries.append({"name": name, "files": [p.name for p in paths], "shows": description, "tables": list(needs)})
        paths = save(overview.overview(tables), out_dir, "overview")
        entries.append({"name": "overview", "files": [p.name for p in paths], "shows": "key panels side by side", "tables": ["several"]})
    manifest = {"figures": entries, "sources": dict(sources or {}), "settings": dict(settings or {})}
    atomic_write_bytes(out_dir / "figures.json", (json.dumps(manifest, indent=2, default=str) + "\n").encode())
    return entries
