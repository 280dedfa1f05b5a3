"""The atlas: many methods' updates placed side by side against LoRA's, from ``ladder_over_seeds``.

Two axes the ladder showed to matter (how aligned with LoRA's update, how large beside it), each point
sized by the method's trainable numbers; and a table of every per-method number with its seed CI.
Pure functions of the table: every number is a mean over seeds with its 95% bootstrap CI.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .ladder import ci_error, wide_over_seeds
from .style import NothingToDraw, log_axis, method_color

MIN_METHODS = 3
"""An atlas places at least this many methods; fewer are a pair, drawn by the ladder and the overview."""

TABLE_COLUMNS = (("final_metric", "accuracy", 3), ("trainable_params", "trainable", 0), ("cosine", "cos with LoRA", 3),
                 ("cosine_next_seed", "cos, next seed", 3), ("norm_ratio", "‖ΔW‖ / ‖ΔW_LoRA‖", 2), ("stable_rank", "stable rank", 2),
                 ("entropy_rank", "effective rank", 1), ("amplification", "amplification", 1), ("intruders", "intruders / layer", 2),
                 ("function_cosine", "function cos", 3))
"""(quantity, column title, decimals) of the atlas table, in order; a quantity the study lacks is left out."""


def _atlas_rows(over_seeds: pd.DataFrame) -> pd.DataFrame:
    wide = wide_over_seeds(over_seeds)
    wide = wide[wide.get("cosine", pd.Series(np.nan, index=wide.index)).notna()]
    if wide.label.nunique() < MIN_METHODS:
        raise NothingToDraw(f"fewer than {MIN_METHODS} methods with a LoRA partner")
    return wide.reset_index(drop=True)


def plot_atlas(over_seeds: pd.DataFrame):
    """cos(ΔW, ΔW_LoRA) against ‖ΔW‖_F / ‖ΔW_LoRA‖_F, one point per method (CIs both ways), sized by its trainable numbers."""
    wide = _atlas_rows(over_seeds)
    fig, ax = plt.subplots(figsize=(10, 6.2), layout="constrained")
    sizes = 25 + 35 * np.log10(wide.trainable_params.clip(lower=1))
    for (_, row), size in zip(wide.iterrows(), sizes):
        color = method_color(row.method)
        ax.errorbar(row.norm_ratio, row.cosine, xerr=ci_error(row, "norm_ratio"), yerr=ci_error(row, "cosine"), fmt="none",
                    ecolor=color, elinewidth=1, capsize=3)
        ax.scatter(row.norm_ratio, row.cosine, s=size, color=color, alpha=0.85, edgecolors="black", linewidths=0.5,
                   label=f"{row.label} ({row.trainable_params:,.0f} trainable)")
        ax.annotate(row.label, (row.norm_ratio, row.cosine), xytext=(6, 4), textcoords="offset points", fontsize=8)
    log_axis(ax, "x")
    log_axis(ax, "y", "symlog", linthresh=1e-2, linscale=0.5)
    ax.axvline(1, color="0.6", lw=0.8)
    ax.set_xlabel("‖ΔW‖_F / ‖ΔW_LoRA‖_F (same seed; LoRA: next seed)")
    ax.set_ylabel("cos(ΔW, ΔW_LoRA)")
    fig.legend(fontsize=7, loc="outside right center", title="area: log trainable numbers", title_fontsize=8)
    fig.suptitle("the atlas: how aligned with LoRA's update, and how large beside it (mean, 95% CI over seeds)")
    return fig


def atlas_table(over_seeds: pd.DataFrame) -> pd.DataFrame:
    """One row per method: each of :data:`TABLE_COLUMNS` as "mean [low, high]" text, for the table figure and the report."""
    wide = _atlas_rows(over_seeds)
    columns = [(q, title, digits) for q, title, digits in TABLE_COLUMNS if q in wide.columns and wide[q].notna().any()]
    table = pd.DataFrame({"method": wide.label})
    for quantity, title, digits in columns:
        table[title] = [_cell(row, quantity, digits) for _, row in wide.iterrows()]
    return table


def _cell(row, quantity: str, digits: int) -> str:
    mean, low, high = row.get(quantity, np.nan), row.get(f"{quantity}_low", np.nan), row.get(f"{quantity}_high", np.nan)
    if pd.isna(mean):
        return "—"
    if digits == 0:
        return f"{mean:,.0f}"
    return f"{mean:.{digits}f}" + ("" if pd.isna(low) else f" [{low:.{digits}f}, {high:.{digits}f}]")


def plot_atlas_table(over_seeds: pd.DataFrame):
    """The atlas's numbers as a table: one row per method, mean [95% CI] over seeds."""
    table = atlas_table(over_seeds)
    fig, ax = plt.subplots(figsize=(2.1 * len(table.columns), 0.42 * len(table) + 1.2), layout="constrained")
    ax.axis("off")
    cells = ax.table(cellText=table.to_numpy(), colLabels=list(table.columns), loc="center", cellLoc="center")
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)
    cells.scale(1, 1.4)
    for (row, _), cell in cells.get_celld().items():
        if row == 0:
            cell.set_text_props(weight="bold")
    fig.suptitle("every method against LoRA's update (mean [95% CI] over seeds; per layer, then over layers)")
    return fig
