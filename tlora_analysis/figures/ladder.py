"""Figures of the ladder (:mod:`tlora_analysis.analysis.ladder`): each method set against LoRA on
the same seed, with the bound its frozen subspaces put on that cosine.

Pure functions of ``ladder_over_seeds``: every point is a mean over seeds with its 95% bootstrap CI.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import NothingToDraw, ci_bars, log_axis, method_color, method_label

GROUP_KEYS = ("rank", "lr", "init", "scheduler", "alpha", "targets", "epochs")


def wide_over_seeds(over_seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per method and setting group; ``<quantity>`` (mean), ``<quantity>_low`` / ``_high`` (CI), ``n``."""
    keys = ["method", *[c for c in GROUP_KEYS if c in over_seeds.columns]]
    rows = []
    for group, part in over_seeds.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, group if isinstance(group, tuple) else (group,)))
        for q in part.itertuples():
            row.update({q.quantity: q.mean, f"{q.quantity}_low": q.ci_low, f"{q.quantity}_high": q.ci_high})
        row["n"] = int(part.n.max())
        rows.append(row)
    wide = pd.DataFrame(rows)
    varying = {m: [c for c in keys[1:] if rows[c].nunique(dropna=False) > 1] for m, rows in wide.groupby("method")}
    wide["label"] = [method_label(r.method) + "".join(f", {c} {getattr(r, c):g}" if isinstance(getattr(r, c), float)
                                                      else f", {c} {getattr(r, c)}" for c in varying[r.method]) for r in wide.itertuples()]
    return wide


def ci_error(row, quantity: str):
    return ci_bars(row[quantity], row.get(f"{quantity}_low", np.nan), row.get(f"{quantity}_high", np.nan))


def plot_ladder(over_seeds: pd.DataFrame):
    """Cosine with LoRA's ΔW against trainable numbers, one point per method with its seed CI; each
    method's reachable bound (a bar) and what random subspaces of its sizes give (a cross)."""
    wide = wide_over_seeds(over_seeds)
    wide = wide[wide.get("cosine", pd.Series(np.nan, index=wide.index)).notna()]
    if wide.empty:
        raise NothingToDraw("no cell has a LoRA partner to be set against")
    function = "function_cosine" in wide.columns and wide.function_cosine.notna().any()
    fig, axes = plt.subplots(1, 2 if function else 1, figsize=(14 if function else 9.5, 4.8), layout="constrained", squeeze=False)
    for ax, quantity, what in zip(axes[0], ("cosine", "function_cosine"), ("weight space: cos(ΔW, ΔW_LoRA)",
                                                                           "function space: cos(ΔW·x, ΔW_LoRA·x)")):
        for _, row in wide.iterrows():
            color, x = method_color(row.method), row.trainable_params
            ax.errorbar(x, row[quantity], yerr=ci_error(row, quantity), fmt="o", color=color, ms=7, capsize=4,
                        label=f"{row.label} (n = {row.n})")
            if quantity == "cosine" and not np.isnan(row.get("cosine_next_seed", np.nan)):
                ax.plot([x], [row.cosine_next_seed], marker="o", ms=7, mfc="none", color=color, linestyle="none")
            if quantity == "cosine" and row.get("reachable_random", 1.0) < 1.0:  # the method fixes a side
                ax.plot([x], [row.reachable_cosine], marker="_", ms=22, mew=2.5, color=color, linestyle="none")
                ax.plot([x], [row.reachable_random], marker="x", ms=7, mew=1.5, color=color, linestyle="none")
        log_axis(ax, "x")
        log_axis(ax, "y", "symlog", linthresh=1e-3, linscale=0.3)
        ax.set_ylim(-1e-3, 1.1)
        ax.set_xlabel("trainable numbers (adapter + head)")
        ax.set_ylabel(what)
        ax.axhline(0, color="0.6", lw=0.8)
    axes[0][0].plot([], [], marker="_", ms=14, mew=2.5, color="0.3", linestyle="none", label="reachable bound of the frozen subspaces")
    axes[0][0].plot([], [], marker="x", ms=7, color="0.3", linestyle="none", label="the same bound for random subspaces")
    axes[0][0].plot([], [], marker="o", ms=7, mfc="none", color="0.3", linestyle="none", label="cosine with LoRA of the next seed")
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=7, loc="outside right center")
    axes[0][0].set_title("LoRA: the next seed's LoRA; others: LoRA of the same seed", fontsize=9)
    fig.suptitle("how close each method's update comes to LoRA's (mean, 95% CI over seeds)")
    return fig


def plot_ranks(over_seeds: pd.DataFrame):
    """Against the rank: the observed cosine with LoRA and the reachable bound over r/d, beside random
    subspaces; the final metric; the norm ratio ‖ΔW‖ / ‖ΔW_LoRA‖."""
    if "rank" not in over_seeds.columns or over_seeds.groupby("method")["rank"].nunique().max() < 2:
        raise NothingToDraw("no method was run at two or more ranks")
    wide = wide_over_seeds(over_seeds).sort_values(["method", "rank"])
    fig, (bound, metric, ratio) = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for method, rows in wide.groupby("method", sort=False):
        color, label = method_color(method), method_label(method)
        if "cosine" in rows and rows.cosine.notna().any():
            against = "against LoRA of the next seed" if (rows.get("reachable_random", 1.0) >= 1.0).all() else "observed cosine"
            bound.plot(rows.rank_ratio, rows.cosine, "o-", color=color, label=f"{label}: {against}")
            if (rows.reachable_random < 1.0).any():
                bound.plot(rows.rank_ratio, rows.reachable_cosine, "s--", color=color, label=f"{label}: reachable bound")
                bound.plot(rows.rank_ratio, rows.reachable_random, ":", color=color, label=f"{label}: bound for random subspaces")
        metric.errorbar(rows["rank"], rows.final_metric, yerr=_errors(rows, "final_metric"), fmt="o-", color=color, capsize=3, label=label)
        if "norm_ratio" in rows:
            ratio.errorbar(rows["rank"], rows.norm_ratio, yerr=_errors(rows, "norm_ratio"), fmt="o-", color=color, capsize=3, label=label)
    bound.set(xscale="log", yscale="log", xlabel="r / √(d_out·d_in)", ylabel="cosine with LoRA's ΔW (same rank)",
              title="observed cosine and what the frozen subspaces allow")
    metric.set(xscale="log", xlabel="rank r", ylabel="final validation metric", title="metric (95% CI over seeds)")
    ratio.set(xscale="log", yscale="log", xlabel="rank r", ylabel="‖ΔW‖_F / ‖ΔW_LoRA‖_F", title="norm ratio (95% CI over seeds)")
    for ax in (metric, ratio):
        ax.set_xticks(sorted(wide["rank"].unique()), [str(int(r)) for r in sorted(wide["rank"].unique())])
        ax.minorticks_off()
    bound.xaxis.set_minor_formatter(plt.NullFormatter())  # the log axis's minor labels collide
    for ax in (bound, metric, ratio):
        ax.legend(fontsize=7)
    fig.suptitle("the rank study: LoRA's ΔW at each rank as the reference (mean over seeds)")
    return fig


def _errors(rows: pd.DataFrame, quantity: str):
    low, high = rows.get(f"{quantity}_low"), rows.get(f"{quantity}_high")
    return None if low is None else ci_bars(rows[quantity], low, high)
