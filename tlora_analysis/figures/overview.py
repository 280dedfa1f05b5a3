"""One sheet with the key panel of each analysis side by side."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import pandas as pd

from ..analysis.claims import PAPER_METHOD
from ..states import state_name
from .style import method_color, method_label, module_color, modules_of, source_styles


def overview(tables: Mapping[str, pd.DataFrame]):
    """2 x 3 panels: mean norm over epochs, spectra at the last epoch, α by layer, B histogram,
    cosine per layer with baseline, entropy rank over epochs."""
    fig, axes = plt.subplots(2, 3, figsize=(12.5, 6.8))
    norms, spectra = tables["norms"], tables["spectra"]
    last = int(norms.groupby("method").epoch.max().min())
    styles = source_styles(norms)
    _per_source_curve(axes[0][0], norms, "frobenius", styles)
    axes[0][0].set(title="Mean ‖ΔW‖_F over layers", xlabel="epoch", ylabel="‖ΔW‖_F", ylim=(0, None))

    ax = axes[0][1]
    for label, group in spectra.groupby("run", sort=False):  # each source at its own last state
        group = group[group.epoch == group.epoch.max()]
        normalized = group.groupby("name").singular_value.transform(lambda s: s / s.max() if s.max() > 0 else s)
        stats = normalized.groupby(group["index"]).agg(["mean", "min", "max"])
        look = styles.get(label, {})
        ax.semilogy(stats.index, stats["mean"], ms=4, label=f"{label} ({state_name(group.epoch.iloc[0])})", **look)
        ax.fill_between(stats.index, stats["min"], stats["max"], color=look.get("color"), alpha=0.12)
    ax.set(title="Normalized spectra σᵢ/σ₁, each source's last state", xlabel="index i", ylabel="σᵢ / σ₁")
    ax.legend(fontsize=8)

    hist, stats = tables["weight_histograms"], tables["weight_stats"]
    has_b = bool(((hist.method == PAPER_METHOD) & (hist.matrix == "B")).any())
    paired_panels = [  # (axis, whether its tables are there, how to draw it, what it needs)
        (axes[0][2], "scales" in tables, lambda ax: _alpha_by_layer(ax, tables["scales"], last), "TLoRA α by layer: needs a TLoRA run"),
        (axes[1][0], has_b, lambda ax: _b_histogram(ax, hist, stats, last), "TLoRA B entries: needs a TLoRA run"),
        (axes[1][1], "similarity" in tables, lambda ax: _cosine_by_layer(ax, tables["similarity"], last),
         "cos(ΔW_LoRA, ΔW_TLoRA): needs a LoRA and a TLoRA run"),
    ]
    for ax, ready, draw, needs in paired_panels:
        if ready:
            draw(ax)
        else:
            _missing(ax, needs)

    ax = axes[1][2]
    ranks = tables["effective_rank"]
    _per_source_curve(ax, ranks[ranks.epoch != 0], "entropy_rank", styles)
    ax.set(title="Entropy effective rank (mean over layers)", xlabel="epoch", ylabel="effective rank", ylim=(0, None))
    methods = " vs ".join(method_label(m) for m in dict.fromkeys(norms.method))
    fig.suptitle(f"{methods}: adaptation dynamics at a glance", fontsize=13)
    return fig


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


def _missing(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.4", transform=ax.transAxes, wrap=True)
    ax.set_axis_off()


def _alpha_by_layer(ax, scales: pd.DataFrame, last: int) -> None:
    modules = modules_of(scales)
    for module, group in scales[scales.epoch == last].groupby("module"):
        ax.plot(group.layer, group.alpha, "o-", ms=4, color=module_color(module, modules), label=module)
    ax.set(title=f"TLoRA α by layer, {state_name(last)}", xlabel="layer", ylabel="α")
    ax.legend()


def _b_histogram(ax, hist: pd.DataFrame, stats: pd.DataFrame, last: int) -> None:
    h = hist[(hist.method == PAPER_METHOD) & (hist.matrix == "B") & (hist.epoch == last)]
    module = sorted(h.module.unique())[0]
    h = h[h.module == module]
    ax.bar(h.left, h.density, width=h.right - h.left, align="edge", color=method_color(PAPER_METHOD), alpha=0.6)
    ax.plot((h.left + h.right) / 2, h.normal_density, "k-", lw=1.2)
    s = stats[(stats.method == PAPER_METHOD) & (stats.matrix == "B") & (stats.epoch == last) & (stats.module == module)].iloc[0]
    ax.set(title=f"TLoRA B entries ({module}), {state_name(last)}", xlabel="entry value", ylabel="density")
    ax.text(0.02, 0.95, f"skew {s.skewness:.2f}\nex. kurt {s.excess_kurtosis:.2f}", transform=ax.transAxes, va="top", fontsize=8)


def _cosine_by_layer(ax, sim: pd.DataFrame, last: int) -> None:
    sim = sim[sim.epoch == last]
    for module, group in sim.groupby("module"):
        ax.plot(group.layer, group.cosine, "o-", ms=4, color=module_color(module, modules_of(sim)), label=f"cosine · {module}")
    ax.fill_between(sorted(sim.layer.unique()), -sim.baseline_abs_q95.max(), sim.baseline_abs_q95.max(), color="0.85", label="random baseline")
    ax.set(title=f"cos(ΔW_LoRA, ΔW_TLoRA), {state_name(last)}", xlabel="layer", ylabel="cosine")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=3, frameon=False)
