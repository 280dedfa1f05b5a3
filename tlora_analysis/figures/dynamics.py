"""Figures of the paper's adaptation dynamics: spectra, norms, scales and weight histograms."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import layer_epoch_heatmap, method_color, method_label, modules_of, sequential_colors


def _pick_layers(table: pd.DataFrame, count: int = 3) -> list[int]:
    layers = sorted(table["layer"].unique())
    return sorted({layers[round(i)] for i in np.linspace(0, len(layers) - 1, min(count, len(layers)))})


def spectra_comparison(spectra: pd.DataFrame, layers: list[int] | None = None):
    """Singular values of ΔW at the last epoch, LoRA vs TLoRA, at a few layers (log scale)."""
    last = spectra.groupby("method")["epoch"].max().min()
    data = spectra[spectra.epoch == last]
    layers = layers or _pick_layers(data)
    modules = modules_of(data)
    fig, axes = plt.subplots(len(modules), len(layers), figsize=(3.2 * len(layers), 2.6 * len(modules)), squeeze=False, sharey=True)
    for r, module in enumerate(modules):
        for c, layer in enumerate(layers):
            ax = axes[r][c]
            for method, group in data[(data.module == module) & (data.layer == layer)].groupby("method"):
                ax.semilogy(group["index"], group.singular_value, "o-", color=method_color(method), label=method_label(method), ms=4)
            ax.set_title(f"{module}, layer {layer}")
            ax.set_xlabel("index i")
            if c == 0:
                ax.set_ylabel("singular value σᵢ of ΔW")
    axes[0][-1].legend(loc="upper right")
    fig.suptitle(f"Spectra of the updates at epoch {last}")
    return fig


def spectra_evolution(spectra: pd.DataFrame, layer: int | None = None):
    """How the spectrum of ΔW grows over epochs: one panel per method and module, colour = epoch."""
    data = spectra[spectra.epoch > 0]
    layer = _pick_layers(data, 1)[0] if layer is None else layer
    data = data[data.layer == layer]
    methods, modules = sorted(data.method.unique()), modules_of(data)
    epoch_colors, mappable = sequential_colors(data.epoch)
    fig, axes = plt.subplots(len(methods), len(modules), figsize=(3.6 * len(modules), 2.7 * len(methods)), squeeze=False, sharex=True)
    for r, method in enumerate(methods):
        for c, module in enumerate(modules):
            ax = axes[r][c]
            for epoch, group in data[(data.method == method) & (data.module == module)].groupby("epoch"):
                ax.semilogy(group["index"], group.singular_value, "o-", color=epoch_colors[epoch], ms=3)
            ax.set_title(f"{method_label(method)} · {module}, layer {layer}")
            ax.set_xlabel("index i")
            ax.set_ylabel("σᵢ of ΔW")
    fig.colorbar(mappable, ax=axes, label="epoch", shrink=0.8)
    return fig


def norms_over_epochs(norms: pd.DataFrame):
    """‖ΔW‖_F per layer over epochs (colour = layer), one panel per method and module, shared y scale per method."""
    methods, modules = sorted(norms.method.unique()), modules_of(norms)
    layer_colors, mappable = sequential_colors(norms.layer)
    fig, axes = plt.subplots(len(methods), len(modules), figsize=(3.6 * len(modules), 2.7 * len(methods)), squeeze=False, sharex=True)
    for r, method in enumerate(methods):
        for c, module in enumerate(modules):
            ax = axes[r][c]
            for layer, group in norms[(norms.method == method) & (norms.module == module)].groupby("layer"):
                ax.plot(group.epoch, group.frobenius, "o-", color=layer_colors[layer], ms=3)
            ax.set_title(f"{method_label(method)} · {module}")
            ax.set_xlabel("epoch")
            ax.set_ylabel("‖ΔW‖_F")
        top = norms[norms.method == method].frobenius.max() * 1.05
        for ax in axes[r]:
            ax.set_ylim(0, top if top > 0 else 1)
    fig.colorbar(mappable, ax=axes, label="layer", shrink=0.8)
    return fig


def norm_heatmaps(norms: pd.DataFrame):
    """Layer x epoch heat maps of ‖ΔW‖_F, one per method and module (each with its own colour bar)."""
    methods, modules = sorted(norms.method.unique()), modules_of(norms)
    fig, axes = plt.subplots(len(methods), len(modules), figsize=(3.6 * len(modules), 2.8 * len(methods)), squeeze=False)
    for r, method in enumerate(methods):
        for c, module in enumerate(modules):
            grid = norms[(norms.method == method) & (norms.module == module)].pivot(index="layer", columns="epoch", values="frobenius")
            layer_epoch_heatmap(fig, axes[r][c], grid, cmap="viridis", label="‖ΔW‖_F", title=f"{method_label(method)} · {module}")
    return fig


def scales_by_layer(scales: pd.DataFrame):
    """TLoRA's α per layer, one line per epoch (colour = epoch), one panel per module; CV in the title."""
    modules = modules_of(scales)
    epoch_colors, mappable = sequential_colors(scales.epoch)
    fig, axes = plt.subplots(1, len(modules), figsize=(3.8 * len(modules), 2.9), squeeze=False, sharey=True)
    last = scales.epoch.max()
    for c, module in enumerate(modules):
        ax = axes[0][c]
        data = scales[scales.module == module]
        for epoch, group in data.groupby("epoch"):
            ax.plot(group.layer, group.alpha, "o-", color=epoch_colors[epoch], ms=3)
        cv = data[data.epoch == last].alpha_cv_across_layers.iloc[0]
        ax.set_title(f"{module} · CV across layers {cv:.2f} (epoch {last})", fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("α (learned scale)")
        ax.set_xticks(sorted(data.layer.unique()))
    fig.colorbar(mappable, ax=axes, label="epoch", shrink=0.8)
    return fig


def weight_histograms(histograms: pd.DataFrame, stats: pd.DataFrame):
    """Pooled histograms of the trained matrices' entries with a fitted normal, first and last trained epoch."""
    trained = histograms[histograms.epoch > 0]
    first, last = trained.epoch.min(), trained.epoch.max()
    panels = trained[["method", "matrix", "module"]].drop_duplicates().sort_values(["method", "matrix", "module"]).to_records(index=False)
    fig, axes = plt.subplots(len(panels), 2, figsize=(7.6, 2.2 * len(panels)), squeeze=False)
    for r, (method, matrix, module) in enumerate(panels):
        for c, epoch in enumerate((first, last)):
            ax = axes[r][c]
            h = trained[(trained.method == method) & (trained.matrix == matrix) & (trained.module == module) & (trained.epoch == epoch)]
            ax.bar(h.left, h.density, width=h.right - h.left, align="edge", color=method_color(method), alpha=0.6, label="entries")
            ax.plot((h.left + h.right) / 2, h.normal_density, "k-", lw=1.2, label="normal fit")
            s = stats[(stats.method == method) & (stats.matrix == matrix) & (stats.module == module) & (stats.epoch == epoch)].iloc[0]
            ax.set_title(f"{method_label(method)} {matrix} · {module} · epoch {epoch}", fontsize=10)
            ax.text(0.02, 0.95, f"skew {s.skewness:.2f}\nex. kurt {s.excess_kurtosis:.2f}", transform=ax.transAxes, va="top", fontsize=8)
            ax.set_ylabel("density")
            if r == len(panels) - 1:
                ax.set_xlabel("entry value")
    axes[0][1].legend(loc="upper right", fontsize=8)
    return fig
