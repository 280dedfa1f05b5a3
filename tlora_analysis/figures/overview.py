"""One sheet with the key panel of each analysis side by side."""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd

from ..analysis.claims import PAPER_METHOD
from ..states import state_name
from .style import log_axis, method_color, method_label, module_color, modules_of, source_styles


def overview(tables: Mapping[str, pd.DataFrame]):
    """The key panel of each analysis the sources feed, side by side: mean norm over epochs, spectra at each source's
    last state, TLoRA's α by layer and B histogram (where a TLoRA source is given), the LoRA-TLoRA cosine per layer
    (where both are), entropy rank over epochs. A panel the sources cannot feed is left out, never drawn as a note."""
    norms = tables["norms"]
    styles = source_styles(norms)
    hist = tables["weight_histograms"]
    panels = [
        (True, lambda ax: _norm_panel(ax, norms, styles)),
        (True, lambda ax: _spectra_panel(ax, tables["spectra"], styles)),
        ("scales" in tables and len(tables["scales"]) > 0, lambda ax: _alpha_by_layer(ax, tables["scales"])),
        (bool(((hist.method == PAPER_METHOD) & (hist.matrix == "B")).any()), lambda ax: _b_histogram(ax, hist, tables["weight_stats"])),
        ("similarity" in tables and len(tables["similarity"]) > 0, lambda ax: _cosine_by_layer(ax, tables["similarity"])),
        (True, lambda ax: _rank_panel(ax, tables["effective_rank"], styles)),
    ]
    drawn = [draw for ready, draw in panels if ready]
    rows = math.ceil(len(drawn) / 3)
    fig, axes = plt.subplots(rows, 3, figsize=(12.5, 3.4 * rows + 0.6), squeeze=False)
    for ax, draw in zip(axes.flat, drawn):
        draw(ax)
    for ax in list(axes.flat)[len(drawn):]:
        ax.remove()
    methods = " vs ".join(method_label(m) for m in dict.fromkeys(norms.method))
    fig.suptitle(f"{methods}: adaptation dynamics at a glance", fontsize=13)
    return fig


def _norm_panel(ax, norms: pd.DataFrame, styles: dict) -> None:
    _per_source_curve(ax, norms, "frobenius", styles)
    ax.set(title="Mean ‖ΔW‖_F over layers", xlabel="epoch", ylabel="‖ΔW‖_F", ylim=(0, None))


def _spectra_panel(ax, spectra: pd.DataFrame, styles: dict) -> None:
    for label, group in spectra.groupby("run", sort=False):  # each source at its own last state
        group = group[group.epoch == group.epoch.max()]
        normalized = group.groupby("name").singular_value.transform(lambda s: s / s.max() if s.max() > 0 else s)
        stats = normalized.groupby(group["index"]).agg(["mean", "min", "max"])
        look = styles.get(label, {})
        ax.plot(stats.index, stats["mean"], ms=4, label=f"{label} ({state_name(group.epoch.iloc[0])})", **look)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=look.get("color"), alpha=0.12)
    log_axis(ax, "y")
    ax.set(title="Normalized spectra σᵢ/σ₁, each source's last state", xlabel="index i", ylabel="σᵢ / σ₁")
    ax.legend(fontsize=8)


def _rank_panel(ax, ranks: pd.DataFrame, styles: dict) -> None:
    _per_source_curve(ax, ranks[ranks.epoch != 0], "entropy_rank", styles)
    ax.set(title="Entropy effective rank (mean over layers)", xlabel="epoch", ylabel="effective rank", ylim=(0, None))


def _per_source_curve(ax, table: pd.DataFrame, column: str, styles: dict) -> None:
    """One line per source (two seeds of one method stay two lines): a trajectory over its epochs, a one-state source
    (an adapter) as a dashed level marked with its label, since it has no epoch to stand at."""
    for label, group in table.groupby("run", sort=False):
        mean = group.groupby("epoch")[column].mean()
        look = styles.get(label, {})
        if len(mean) > 1:
            ax.plot(mean.index, mean.to_numpy(), ms=4, label=label, **look)
        else:
            ax.axhline(float(mean.iloc[0]), color=look.get("color"), linestyle="--", lw=1.2, label=f"{label} ({state_name(mean.index[0])})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _first_source_at_its_last_state(table: pd.DataFrame) -> tuple[str, int, pd.DataFrame]:
    """The first source of a table (in its order), its own last state, and its rows there: each source's "last" is its
    own, never one state taken over sources of other lengths."""
    label = table.run.iloc[0]
    rows = table[table.run == label]
    last = int(rows.epoch.max())
    return label, last, rows[rows.epoch == last]


def _alpha_by_layer(ax, scales: pd.DataFrame) -> None:
    modules = modules_of(scales)
    label, last, rows = _first_source_at_its_last_state(scales)
    for module, group in rows.groupby("module"):
        ax.plot(group.layer, group.alpha, "o-", ms=4, color=module_color(module, modules), label=module)
    ax.set(title=f"TLoRA α by layer: {label}, {state_name(last)}", xlabel="layer", ylabel="α")
    ax.legend()


def _b_histogram(ax, hist: pd.DataFrame, stats: pd.DataFrame) -> None:
    label, last, h = _first_source_at_its_last_state(hist[(hist.method == PAPER_METHOD) & (hist.matrix == "B")])
    module = sorted(h.module.unique())[0]
    h = h[h.module == module]
    ax.bar(h.left, h.density, width=h.right - h.left, align="edge", color=method_color(PAPER_METHOD), alpha=0.6)
    ax.plot((h.left + h.right) / 2, h.normal_density, "k-", lw=1.2)
    s = stats[(stats.run == label) & (stats.matrix == "B") & (stats.epoch == last) & (stats.module == module)].iloc[0]
    ax.set(title=f"TLoRA B entries: {label} ({module}), {state_name(last)}", xlabel="entry value", ylabel="density")
    ax.text(0.02, 0.95, f"skew {s.skewness:.2f}\nex. kurt {s.excess_kurtosis:.2f}", transform=ax.transAxes, va="top", fontsize=8)


def _cosine_by_layer(ax, sim: pd.DataFrame) -> None:
    """The first LoRA-TLoRA pair at its last shared state (the figure cosine_similarity draws every pair)."""
    sim = sim[(sim.run_a == sim.run_a.iloc[0]) & (sim.run_b == sim.run_b.iloc[0])]
    last = int(sim.epoch.max())
    sim = sim[sim.epoch == last]
    for module, group in sim.groupby("module"):
        ax.plot(group.layer, group.cosine, "o-", ms=4, color=module_color(module, modules_of(sim)), label=f"cosine · {module}")
    ax.fill_between(sorted(sim.layer.unique()), -sim.baseline_abs_q95.max(), sim.baseline_abs_q95.max(), color="0.85", label="random baseline")
    ax.set(title=f"cos(ΔW_LoRA, ΔW_TLoRA), {state_name(last)}", xlabel="layer", ylabel="cosine")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, frameon=False)
