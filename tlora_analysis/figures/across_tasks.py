"""Figures of one study on several tasks: accuracy per method with CIs, and each claim reading's verdict per task."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .style import ci_bars, method_color, method_label

__all__ = ["TASK_FIGURES"]

VERDICT_COLOURS = {"holds": "#009E73", "does not hold": "#D55E00", "mixed": "#E69F00", "not computed": "#DDDDDD", "absent": "#FFFFFF"}


def accuracy_by_task(accuracy: pd.DataFrame):
    """Each method's mean validation metric on each task, with its CI over seeds: where methods differ, and where
    a task saturates (every method near 1)."""
    tasks, methods = list(dict.fromkeys(accuracy.task)), list(dict.fromkeys(accuracy.method))
    fig, ax = plt.subplots(figsize=(min(14.0, 2.0 + 0.55 * len(methods) * len(tasks)), 3.8))
    width = 0.8 / len(tasks)
    for k, task in enumerate(tasks):
        rows = accuracy[accuracy.task == task].set_index("method").reindex(methods)
        x = np.arange(len(methods)) + (k - (len(tasks) - 1) / 2) * width
        ax.bar(x, rows["mean"], width, color=[method_color(m) for m in methods], alpha=1.0 - 0.45 * k, edgecolor="black",
               hatch=["", "//", "..", "xx"][k % 4], label=task)
        bars = ci_bars(rows["mean"], rows.ci_low, rows.ci_high)
        ax.errorbar(x, rows["mean"], yerr=None if bars is None else np.nan_to_num(bars), fmt="none", ecolor="black", capsize=3, lw=1)
    many = len(methods) > 6
    ax.set_xticks(np.arange(len(methods)), [method_label(m) for m in methods], rotation=40 if many else 0, ha="right" if many else "center")
    ax.set(ylabel="validation metric", ylim=(0, 1.05), title="Accuracy per task (bars: mean over seeds; whiskers: 95% CI)")
    ax.legend(title="task", fontsize=8)
    return fig


def verdicts_by_task(transfer: pd.DataFrame):
    """Each claim reading's verdict on each task (colour), and whether it transfers (the row's right-hand label)."""
    tasks = [c.removeprefix("verdict_") for c in transfer.columns if c.startswith("verdict_")]
    fig, ax = plt.subplots(figsize=(4.5 + 1.6 * len(tasks), 0.32 * len(transfer) + 1.4))
    rows = transfer.to_dict("records")  # task labels such as wordnet-lexname are no attribute names
    for i, row in enumerate(rows):
        for j, task in enumerate(tasks):
            verdict = row[f"verdict_{task}"]
            ax.add_patch(plt.Rectangle((j, i), 1, 1, color=VERDICT_COLOURS.get(verdict, "#FFFFFF"), ec="white"))
            ax.text(j + 0.5, i + 0.5, verdict, ha="center", va="center", fontsize=7)
        ax.text(len(tasks) + 0.1, i + 0.5, row["outcome"], va="center", fontsize=7, weight="bold" if row["outcome"] == "differs" else None)
    labels = [f"{row['finding']}. {_short(row['reading'])}" + (" *" if row["headline"] else "") for row in rows]
    ax.set_yticks(np.arange(len(transfer)) + 0.5, labels, fontsize=7)
    ax.set_xticks(np.arange(len(tasks)) + 0.5, tasks)
    ax.set(xlim=(0, len(tasks) + 0.9), ylim=(len(transfer), 0), title="Each reading's verdict per task (* headline reading)")
    ax.grid(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_visible(False)
    return fig


def _short(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


TASK_FIGURES = {
    "tasks_accuracy": (accuracy_by_task, ("accuracy",), "each method's validation metric per task, with 95% CIs over seeds"),
    "tasks_verdicts": (verdicts_by_task, ("transfer",), "each claim reading's verdict per task, and whether it transfers"),
}
"""name -> (function, tables it needs, what it shows), as :data:`~tlora_analysis.figures.FIGURES`."""
