"""Figures of the paper's adaptation dynamics: spectra, norms, scales and weight histograms."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from ..states import state_name
from .style import (
    label_states,
    layer_epoch_heatmap,
    method_color,
    modules_of,
    sequential_colors,
    source_styles,
    source_title,
    sources_of,
    state_positions,
    trajectories,
)


def _pick_layers(table: pd.DataFrame, count: int = 3) -> list[int]:
    layers = sorted(table["layer"].unique())
    return sorted({layers[round(i)] for i in np.linspace(0, len(layers) - 1, min(count, len(layers)))})


def _last_epochs(table: pd.DataFrame) -> pd.DataFrame:
    """Each source's rows at its own last epoch (runs of different lengths each end where they end)."""
    return table[table.epoch == table.groupby("run").epoch.transform("max")]


def spectra_comparison(spectra: pd.DataFrame, layers: list[int] | None = None):
    """Singular values of ΔW at each source's last epoch, at a few layers (log scale), every source in every panel."""
    data = _last_epochs(spectra)
    layers = layers or _pick_layers(data)
    modules, styles = modules_of(data), source_styles(data)
    fig, axes = plt.subplots(len(modules), len(layers), figsize=(3.2 * len(layers), 2.6 * len(modules)), squeeze=False, sharey=True)
    for r, module in enumerate(modules):
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            for label, group in data[(data.module == module) & (data.layer == layer)].groupby("run", sort=False):
                ax.semilogy(group["index"], group.singular_value, ms=4, label=f"{label} ({state_name(group.epoch.iloc[0])})", **styles[label])
            ax.set_title(f"{module}, layer {layer}")
            ax.set_xlabel("index i")
            if c == 0:
                ax.set_ylabel("singular value σᵢ of ΔW")
    axes[0][-1].legend(loc="upper right", fontsize=7)
    fig.suptitle("Spectra of the updates at each source's last epoch")
    return fig


def spectra_evolution(spectra: pd.DataFrame, layer: int | None = None):
    """How the spectrum of ΔW grows over epochs: one panel per source and module, colour = epoch."""
    data = trajectories(spectra)
    layer = _pick_layers(data, 1)[0] if layer is None else layer
    data = data[data.layer == layer]
    sources, modules = sources_of(data), modules_of(data)
    epoch_colors, mappable = sequential_colors(data.epoch)
    fig, axes = plt.subplots(len(sources), len(modules), figsize=(3.6 * len(modules), 2.7 * len(sources)), squeeze=False, sharex=True)
    for r, (label, method) in enumerate(sources):
        for c, module in enumerate(modules):
            ax = axes[r][c]
            for epoch, group in data[(data.run == label) & (data.module == module)].groupby("epoch"):
                ax.semilogy(group["index"], group.singular_value, "o-", color=epoch_colors[epoch], ms=3)
            ax.set_title(f"{source_title(label, method)} · {module}, layer {layer}", fontsize=9)
            ax.set_xlabel("index i")
            ax.set_ylabel("σᵢ of ΔW")
    fig.colorbar(mappable, ax=axes, label="epoch", shrink=0.8)
    return fig


def norms_over_epochs(norms: pd.DataFrame):
    """‖ΔW‖_F per layer over epochs (colour = layer), one panel per source and module, shared y scale per source."""
    sources, modules = sources_of(norms), modules_of(norms)
    layer_colors, mappable = sequential_colors(norms.layer)
    positions = state_positions(norms.epoch)
    fig, axes = plt.subplots(len(sources), len(modules), figsize=(3.6 * len(modules), 2.7 * len(sources)), squeeze=False, sharex=True)
    for r, (label, method) in enumerate(sources):
        for c, module in enumerate(modules):
            ax = axes[r][c]
            for layer, group in norms[(norms.run == label) & (norms.module == module)].groupby("layer"):
                ax.plot(group.epoch.map(positions), group.frobenius, "o-", color=layer_colors[layer], ms=3)
            ax.set_title(f"{source_title(label, method)} · {module}", fontsize=9)
            ax.set_xlabel("epoch")
            label_states(ax.xaxis, positions)
            ax.set_ylabel("‖ΔW‖_F")
        top = norms[norms.run == label].frobenius.max() * 1.05
        for ax in axes[r]:
            ax.set_ylim(0, top if top > 0 else 1)
    fig.colorbar(mappable, ax=axes, label="layer", shrink=0.8)
    return fig


def norm_heatmaps(norms: pd.DataFrame):
    """Layer x epoch heat maps of ‖ΔW‖_F, one per source and module (each with its own colour bar)."""
    sources, modules = sources_of(norms), modules_of(norms)
    fig, axes = plt.subplots(len(sources), len(modules), figsize=(3.6 * len(modules), 2.8 * len(sources)), squeeze=False)
    for r, (label, method) in enumerate(sources):
        for c, module in enumerate(modules):
            grid = norms[(norms.run == label) & (norms.module == module)].pivot(index="layer", columns="epoch", values="frobenius")
            if grid.empty:  # a source that adapts a subset of the modules
                axes[r][c].set_axis_off()
                axes[r][c].set_title(f"{source_title(label, method)}: no {module}", fontsize=9)
                continue
            layer_epoch_heatmap(fig, axes[r][c], grid, cmap="viridis", label="‖ΔW‖_F", title=f"{source_title(label, method)} · {module}")
    return fig


def scales_by_layer(scales: pd.DataFrame):
    """The learned scale (TLoRA's α) per layer, one line per epoch (colour = epoch), one panel per source and module;
    CV across layers at the source's last epoch in the title."""
    sources, modules = sources_of(scales), modules_of(scales)
    epoch_colors, mappable = sequential_colors(scales.epoch)
    fig, axes = plt.subplots(len(sources), len(modules), figsize=(3.8 * len(modules), 2.9 * len(sources)), squeeze=False, sharey=True)
    for r, (label, method) in enumerate(sources):
        for c, module in enumerate(modules):
            ax = axes[r][c]
            data = scales[(scales.run == label) & (scales.module == module)]
            for epoch, group in data.groupby("epoch"):
                ax.plot(group.layer, group.alpha, "o-", color=epoch_colors[epoch], ms=3)
            last = data.epoch.max()
            cv = data[data.epoch == last].alpha_cv_across_layers.iloc[0]
            ax.set_title(f"{source_title(label, method)} · {module}\nCV across layers {cv:.2f} ({state_name(last)})", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("α (learned scale)")
            ax.set_xticks(sorted(data.layer.unique()))
    fig.colorbar(mappable, ax=axes, label="epoch", shrink=0.8)
    return fig


def weight_histograms(histograms: pd.DataFrame, stats: pd.DataFrame):
    """Pooled histograms of the trained matrices' entries with a fitted normal, at each source's first and last
    trained epoch, or once at its one state (the right panel left empty)."""
    trained = histograms[(histograms.epoch != 0) | (histograms.groupby("run").epoch.transform("max") == 0)]
    panels = trained[["run", "method", "matrix", "module"]].drop_duplicates().to_records(index=False)
    fig, axes = plt.subplots(len(panels), 2, figsize=(7.6, 2.4 * len(panels)), squeeze=False, layout="constrained")
    for r, (label, method, matrix, module) in enumerate(panels):
        mine = trained[(trained.run == label) & (trained.matrix == matrix) & (trained.module == module)]
        states = sorted({mine.epoch.min(), mine.epoch.max()})  # a one-state source (an adapter) is drawn once
        if len(states) == 1:
            axes[r][1].set_axis_off()
        for c, epoch in enumerate(states):
            ax = axes[r][c]
            h = mine[mine.epoch == epoch]
            ax.bar(h.left, h.density, width=h.right - h.left, align="edge", color=method_color(method), alpha=0.6, label="entries")
            ax.plot((h.left + h.right) / 2, h.normal_density, "k-", lw=1.2, label="normal fit")
            s = stats[(stats.run == label) & (stats.matrix == matrix) & (stats.module == module) & (stats.epoch == epoch)].iloc[0]
            ax.set_title(f"{source_title(label, method)} {matrix} · {module} · {state_name(epoch)}", fontsize=9)
            ax.text(0.02, 0.95, f"skew {s.skewness:.2f}\nex. kurt {s.excess_kurtosis:.2f}", transform=ax.transAxes, va="top", fontsize=8)
            ax.set_ylabel("density")
            ax.xaxis.set_major_locator(MaxNLocator(4))
            if r == len(panels) - 1 or len(states) == 1:
                ax.set_xlabel("entry value")
    axes[0][0].legend(loc="upper right", fontsize=8)
    return fig


def learning_curves(metrics: pd.DataFrame):
    """Every recorded metric over epochs (train loss, evaluation loss, the task's metric), one line per source."""
    columns = [c for c in metrics.columns if c not in ("run", "method", "epoch", "seed") and pd.api.types.is_numeric_dtype(metrics[c])
               and metrics[c].notna().any() and not c.endswith("_s")]
    styles = source_styles(metrics)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns), 2.8), squeeze=False)
    for ax, column in zip(axes[0], columns):
        for label, group in metrics.dropna(subset=[column]).groupby("run", sort=False):
            ax.plot(group.epoch, group[column], ms=3, label=label, **styles[label])
        ax.set(title=column.replace("_", " "), xlabel="epoch")
    axes[0][-1].legend(fontsize=7)
    return fig


def gradient_norms(grad_norms: pd.DataFrame):
    """RMS over each epoch's steps of every layer's gradient norm, mean over layers (band: min–max), per module."""
    modules, styles = modules_of(grad_norms), source_styles(grad_norms)
    fig, axes = plt.subplots(1, len(modules), figsize=(3.8 * len(modules), 2.9), squeeze=False, sharey=True)
    for ax, module in zip(axes[0], modules):
        for label, group in grad_norms[grad_norms.module == module].groupby("run", sort=False):
            stats = group.groupby("epoch").grad_norm_rms.agg(["mean", "min", "max"])
            ax.semilogy(stats.index, stats["mean"], ms=3, label=label, **styles[label])
            ax.fill_between(stats.index, stats["min"], stats["max"], color=styles[label]["color"], alpha=0.12)
        ax.set(title=module, xlabel="epoch", ylabel="gradient-norm RMS over steps")
    axes[0][-1].legend(fontsize=7)
    return fig
