"""Figures beyond the paper: LoRA/TLoRA cosine, subspace similarity, effective rank, intruders, amplification."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..states import state_name
from .style import DIVERGING, label_states, layer_epoch_heatmap, module_color, module_look, modules_of, source_styles, state_positions


def cosine_similarity(similarity: pd.DataFrame):
    """Top: layer x epoch heat maps of cos(ΔW_LoRA, ΔW_TLoRA). Bottom: the last epoch per layer with the
    random-update baseline (95th percentile of |cos|) shaded, so "similar" has a scale."""
    data = similarity[similarity.epoch != 0]
    modules = modules_of(data)
    fig, axes = plt.subplots(2, len(modules), figsize=(3.9 * len(modules), 5.9), squeeze=False, layout="constrained")
    limit = max(float(data.cosine.abs().max()), float(data.baseline_abs_q95.max()), 1e-6)
    last = data.epoch.max()
    for c, module in enumerate(modules):
        grid = data[data.module == module].pivot(index="layer", columns="epoch", values="cosine")
        layer_epoch_heatmap(fig, axes[0][c], grid, cmap=DIVERGING, label="cosine", title=f"{module}: cos(ΔW_LoRA, ΔW_TLoRA)",
                            vmin=-limit, vmax=limit)
        ax = axes[1][c]
        row = data[(data.module == module) & (data.epoch == last)].sort_values("layer")
        ax.fill_between(row.layer, -row.baseline_abs_q95, row.baseline_abs_q95, color="0.85", label="random baseline (95% of |cos|)")
        ax.plot(row.layer, row.cosine, "o-", color="k", ms=4, label=f"cosine at the {state_name(last)}")
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("layer")
        ax.set_ylabel("cosine")
        ax.set_xticks(row.layer)
    handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=8)
    return fig


def pairwise_similarity(pairs: pd.DataFrame):
    """For every pair of sources: the mean cosine of their ΔW over layers at the last epochs they meet, per
    module (one bar each), with the random baseline (mean 95th percentile of |cos|) as a grey band."""
    data = pairs[pairs.epoch == pairs.groupby(["run_a", "run_b"]).epoch.transform("max")]
    data = data.assign(pair=[f"{a} vs {b}" + (" (same method)" if same else "") for a, b, same in zip(data.run_a, data.run_b, data.same_method)])
    labels = list(dict.fromkeys(data.pair))
    modules = modules_of(data)
    fig, ax = plt.subplots(figsize=(7.2, 1.2 + 0.45 * len(labels) * max(1, len(modules) / 2)))
    height = 0.8 / len(modules)
    y = np.arange(len(labels))
    for k, module in enumerate(modules):
        grouped = data[data.module == module].groupby("pair")
        mean, baseline = grouped.cosine.mean().reindex(labels), grouped.baseline_abs_q95.mean().reindex(labels)
        offset = y + k * height - 0.4 + height / 2
        ax.barh(offset, 2 * baseline.to_numpy(), height, left=-baseline.to_numpy(), color="0.88",
                label="random baseline (95% of |cos|)" if k == 0 else None)
        ax.barh(offset, mean.to_numpy(), height * 0.6, color=module_color(module, modules), label=f"mean cosine · {module}")
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="cosine of ΔW (mean over layers)", title="How alike each pair of sources' updates are (last epochs they share)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def subspace_similarity(subspace: pd.DataFrame, layers: list[int] | None = None):
    """φ(i, j) heat maps between LoRA's and TLoRA's top singular subspaces at the last epoch, with the
    random-subspace φ beside them for scale."""
    modules = modules_of(subspace)
    all_layers = sorted(subspace.layer.unique())
    layers = layers or sorted({all_layers[0], all_layers[len(all_layers) // 2], all_layers[-1]})
    panels = [(m, layer) for m in modules for layer in layers] + [(modules[0], None)]
    columns = min(4, len(panels))
    rows = int(np.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.9 * columns, 2.7 * rows), squeeze=False)
    vmax = float(np.nanmax(subspace[["phi", "phi_random"]].to_numpy())) or 1.0
    image = None
    for ax, (module, layer) in zip(axes.flat, panels):
        data = subspace[subspace.module == module]
        if layer is None:
            data = data[data.layer == data.layer.min()]
            values, title = "phi_random", "random subspaces"
        else:
            data, values, title = data[data.layer == layer], "phi", f"{module}, layer {layer}"
        grid = data.pivot(index="i", columns="j", values=values)
        image = ax.imshow(grid.to_numpy(), origin="lower", cmap="magma", vmin=0, vmax=vmax,
                          extent=(0.5, grid.shape[1] + 0.5, 0.5, grid.shape[0] + 0.5))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("j (TLoRA directions)")
        ax.set_ylabel("i (LoRA directions)")
        ax.grid(False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label="φ(i, j)", shrink=0.8)
    epoch = int(subspace.epoch.max())
    fig.suptitle(f"Subspace similarity of the top left singular vectors, LoRA vs TLoRA, {state_name(epoch)}")
    return fig


def subspace_drift(subspace_epochs: pd.DataFrame):
    """φ(k, k) between each epoch's top-k subspace and the last epoch's, averaged over layers: how early
    each method settles on its directions."""
    methods = sorted(subspace_epochs.run_a.unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(3.9 * len(methods), 2.9), squeeze=False, sharey=True)
    for ax, run in zip(axes[0], methods):
        data = subspace_epochs[subspace_epochs.run_a == run]
        for k in sorted({1, int(data.i.max()) // 2 or 1, int(data.i.max())}):
            mean = data[data.i == k].groupby("epoch")["phi"].mean()
            ax.plot(mean.index, mean.to_numpy(), "o-", ms=3, label=f"top {k}")
        ax.set_title(f"{run}: φ(epoch, last epoch)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("φ(k, k), mean over layers")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    return fig


def effective_rank(ranks: pd.DataFrame):
    """Stable rank and entropy effective rank over epochs, mean over layers with the min–max band; a one-state source
    (an adapter) stands at "final". Each low-rank source's rank bound is a dotted line of its colour; a dense
    update's "rank" is its layer's full rank min(d_out, d_in), which says nothing of it and would flatten the axis."""
    multi = ranks.groupby("run").epoch.transform("nunique") > 1
    data = ranks[~multi | (ranks.epoch != 0)]
    positions, styles, modules = state_positions(data.epoch), source_styles(data), sorted(data.module.unique())
    measures = [("stable_rank", "stable rank ‖ΔW‖²_F / ‖ΔW‖²₂"), ("entropy_rank", "entropy effective rank")]
    fig, axes = plt.subplots(1, 2, figsize=(7.8, 2.9), squeeze=False)
    for ax, (column, label) in zip(axes[0], measures):
        for (run, module), group in data.groupby(["run", "module"], sort=False):
            stats = group.groupby("epoch")[column].agg(["mean", "min", "max"])
            x = stats.index.map(positions)
            look = module_look(styles[run], module, modules)
            ax.plot(x, stats["mean"], ms=3, label=f"{run} · {module}", **look)
            ax.fill_between(x, stats["min"], stats["max"], color=look["color"], alpha=0.12)
        ax.set_xlabel("epoch")
        label_states(ax.xaxis, positions)
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
    top = _nominal_ranks(axes[0][1], data, styles)
    axes[0][1].set_ylim(0, max(top, float(data.entropy_rank.max())) * 1.12)
    axes[0][1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _nominal_ranks(ax, data: pd.DataFrame, styles: dict) -> float:
    """A dotted line at each low-rank source's rank bound, the inner size of its factors (r for LoRA and TLoRA, r² for
    LoHa's Hadamard product); sources of one bound share a line. Returns the highest bound drawn (0 for none)."""
    nominal = data.groupby("run")[["rank", "full_rank"]].max() if "full_rank" in data else data.groupby("run")[["rank"]].max()
    drawn = {}
    for run, row in nominal.iterrows():
        if row["rank"] < row.get("full_rank", np.inf):  # a dense update's "rank" is its layer's full width: no line
            drawn.setdefault(int(row["rank"]), []).append(run)
    for rank, runs in drawn.items():
        colour = styles[runs[0]]["color"] if len(runs) == 1 else "0.5"
        ax.axhline(rank, color=colour, lw=0.8, ls=":")
        ax.text(ax.get_xlim()[0], rank, f" rank ≤ {rank}" + (f" ({runs[0]})" if len(drawn) > 1 and len(runs) == 1 else ""),
                va="bottom", fontsize=7, color=colour)
    return float(max(drawn, default=0))


def intruders(counts: pd.DataFrame, amplification: pd.DataFrame):
    """Left: intruder dimensions among the top-k singular vectors of W0 + ΔW per layer at the last epoch.
    Right: amplification factor ‖ΔW‖_F / ‖UᵀW0V‖_F per layer (LoRA paper §7.3)."""
    data = counts[counts.epoch == counts.groupby("run").epoch.transform("max")]
    labels = sorted(data[["module", "layer"]].drop_duplicates().itertuples(index=False))
    fig, axes = plt.subplots(1, 2, figsize=(max(8.4, 4.4 + 0.1 * len(labels)), 3.0), squeeze=False,
                             gridspec_kw={"width_ratios": [max(1.0, len(labels) / 24), 1.0]})
    x = np.arange(len(labels))
    styles, sources = source_styles(data), list(dict.fromkeys(data.run))
    width = 0.8 / len(sources)
    for k, run in enumerate(sources):
        values = [data[(data.run == run) & (data.module == m) & (data.layer == layer)].intruders.sum() for m, layer in labels]
        axes[0][0].bar(x + k * width - 0.4 + width / 2, values, width, color=styles[run]["color"], alpha=1 - 0.5 * (k % 2), label=run)
    letters = _module_letters(sorted({m for m, _ in labels}))
    ticks, step = [f"{letters[m]}{layer}" for m, layer in labels], max(1, -(-len(labels) // 48))  # ≤ 48 labels, upright
    axes[0][0].set_xticks(x[::step], ticks[::step], fontsize=7, rotation=90 if len(ticks[::step]) > 12 else 0)
    axes[0][0].set_xlabel("module (" + ", ".join(f"{v} = {k}" for k, v in letters.items()) + ") and layer", fontsize=8)
    axes[0][0].set_ylabel(f"intruder dimensions (of top {int(data.k.max())})")
    axes[0][0].set_ylim(0, max(1, float(data.intruders.max() if len(data) else 0)) * 1.15)
    axes[0][0].set_title("Intruder dimensions, last epoch")
    axes[0][0].legend(fontsize=8)
    amp = amplification[amplification.epoch == amplification.groupby("run").epoch.transform("max")]
    modules = sorted(amp.module.unique())
    for (run, module), group in amp.groupby(["run", "module"], sort=False):
        look = module_look(styles.get(run, {}), module, modules)
        axes[0][1].semilogy(group.layer, group.amplification, ms=3, label=f"{run} · {module}", **look)
    axes[0][1].set_xlabel("layer")
    axes[0][1].set_ylabel("amplification ‖ΔW‖_F / ‖UᵀW₀V‖_F")
    axes[0][1].set_title("Amplification, last epoch")
    axes[0][1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _module_letters(modules: list[str]) -> dict[str, str]:
    """The shortest prefix of each module's own name (its last dotted parts, as few as tell the modules apart) that
    tells it from the others: q/v for attention.self.query and attention.self.value, q_/k_/v_/o_ for q_proj ..."""
    names = _own_names(modules)
    for length in range(1, max(map(len, names.values()), default=1) + 1):
        letters = {m: names[m][:length] for m in modules}
        if len(set(letters.values())) == len(modules):
            return letters
    return names


def _own_names(modules: list[str]) -> dict[str, str]:
    """Each module's last dotted parts, as few as tell the modules apart (the whole names where none do)."""
    for parts in range(1, max((m.count(".") + 1 for m in modules), default=1) + 1):
        names = {m: ".".join(m.split(".")[-parts:]) for m in modules}
        if len(set(names.values())) == len(modules):
            return names
    return {m: m for m in modules}
