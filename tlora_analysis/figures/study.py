"""Figures of a study: every line is a mean over seeds with its 95% bootstrap band, one colour per method.

Each function is a pure function of :func:`~tlora_analysis.analysis.compare.compare_study`
tables. Groups are a cell's settings without its seed; where a method has several groups
(two learning rates, three ranks), they differ by line style and are named in the legend.
"""

from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from ..analysis.claims import FINDINGS, PAPER_METHOD
from ..analysis.seed_statistics import aggregate
from ..states import state_name
from .atlas import plot_atlas, plot_atlas_table
from .ladder import plot_ladder, plot_ranks
from .style import NothingToDraw, ci_bars, log_axis, method_color, method_label

STYLES = ["-", "--", ":", "-."]
SETTING_COLUMNS = ("rank", "lr", "alpha", "init", "scheduler", "epochs", "batch_size", "max_train_samples", "targets", "task", "model")


def _settings(table: pd.DataFrame) -> list[str]:
    """The setting columns of a table: named like a setting and constant within each run (TLoRA's
    learned α, a quantity, varies within a run; the α setting does not)."""
    columns = [c for c in SETTING_COLUMNS if c in table.columns]
    if "run" not in table.columns:
        return columns
    return [c for c in columns if table.groupby("run")[c].nunique(dropna=False).max() <= 1]


def _grouped(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``group`` (method plus the settings that vary within it) and ``style`` (its line style)."""
    settings = _settings(table)
    labels, styles = [], {}
    for method, rows in table.groupby("method", sort=False):
        varying = [c for c in settings if rows[c].astype(str).nunique() > 1]
        for index, row in rows.iterrows():
            label = method_label(method) + "".join(f", {c} {row[c]:g}" if isinstance(row[c], float) else f", {c} {row[c]}" for c in varying)
            labels.append((index, label))
            styles.setdefault(method, {}).setdefault(label, STYLES[len(styles.get(method, {})) % len(STYLES)])
    group = pd.Series(dict(labels))
    out = table.assign(group=group)
    return out.assign(style=[styles[m][g] for m, g in zip(out.method, out.group)])


def _facet_key(table: pd.DataFrame) -> str | None:
    """The setting that splits the figure into panels: the one (rank, lr, ...) with the most values within one method."""
    best, most = None, 1
    for column in _settings(table):
        within = int(table.groupby("method")[column].nunique().max())
        if within > most:
            best, most = column, within
    return best


def _facets(table: pd.DataFrame, rows: str | None = None, width: float = 4.6, height: float = 3.7):
    """A figure with one column per value of the facet setting (and one row per value of ``rows``);
    yields (axes, the rows of the table to draw there, panel title). A method with one value of the
    facet setting (LoRA at its one learning rate) is drawn in every column as the reference."""
    key = _facet_key(table)
    columns = sorted(table[key].unique()) if key else [None]
    row_values = sorted(table[rows].unique()) if rows else [None]
    fig, axes = plt.subplots(len(row_values), len(columns), figsize=(width * len(columns), height * len(row_values)),
                             squeeze=False, layout="constrained")
    single = {m for m, n in table.groupby("method")[key].nunique().items() if n == 1} if key else set()
    panels = []
    for i, row_value in enumerate(row_values):
        for j, value in enumerate(columns):
            part = table if row_value is None else table[table[rows] == row_value]
            if key:
                part = part[(part[key] == value) | part.method.isin(single)]
            parts = [] if row_value is None else [str(row_value)]
            if key:
                parts.append(f"{key} = {value:g}" if isinstance(value, float) else f"{key} = {value}")
            title = " · ".join(parts)
            panels.append((axes[i][j], part, title))
    return fig, panels


def _one_seed_if_unswept(table: pd.DataFrame) -> pd.DataFrame:
    """A study that does not sweep ``seed`` has one sample per group: n = 1, and no interval."""
    return table if "seed" in table.columns else table.assign(seed=0)


def _band(ax, table: pd.DataFrame, x: str, y: str) -> None:
    """One mean line with its seed CI band per group."""
    table = _one_seed_if_unswept(_grouped(table))
    agg = aggregate(table[["group", "method", "style", x, "seed", y]], by=["group", "method", "style", x], values=[y])
    for (group, method, style), rows in agg.groupby(["group", "method", "style"], sort=False):
        rows = rows.sort_values(x)
        color = method_color(method)
        n = int(rows.n.max())
        ax.plot(rows[x], rows["mean"], style, color=color, marker="o", ms=3, label=f"{group} (n = {n})")
        ax.fill_between(rows[x], rows.ci_low, rows.ci_high, color=color, alpha=0.18, lw=0)


def plot_accuracy_vs_parameters(runs: pd.DataFrame):
    """Final metric against trainable parameters (adapter + head), each method's groups as points with
    their seed CI: the paper's results table drawn as a plot."""
    done = _one_seed_if_unswept(_grouped(runs[runs.status == "finished"].copy()))
    metric = str(done.metric.iloc[0])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    agg = aggregate(done[["group", "method", "trainable_params", "seed", "final_metric"]], by=["group", "method", "trainable_params"],
                    values=["final_metric"])
    for row in agg.itertuples():
        color = method_color(row.method)
        seeds = done[done.group == row.group]
        ax.scatter(seeds.trainable_params, seeds.final_metric, color=color, alpha=0.35, s=14)
        err = ci_bars(row.mean, row.ci_low, row.ci_high)
        ax.errorbar(row.trainable_params, row.mean, yerr=err, fmt="o", color=color, ms=7, capsize=4, label=f"{row.group} (n = {row.n})")
    log_axis(ax, "x")
    ax.set_xlabel("trainable parameters (adapter + head)")
    ax.set_ylabel(f"final validation {metric}")
    ax.set_title(f"{metric} vs trainable parameters: mean and 95% CI over seeds")
    ax.legend(fontsize=8)
    return fig


def plot_metric_over_epochs(metrics: pd.DataFrame, metric: str | None = None):
    """The validation metric per epoch, mean and seed band per group."""
    metric = metric or next(c for c in ("accuracy", "matthews_correlation", "pearson", "perplexity", "f1") if c in metrics.columns)
    fig, panels = _facets(metrics, width=5.6)
    for ax, part, title in panels:
        _band(ax, part, "epoch", metric)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric}")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"validation {metric} over epochs (mean, 95% CI over seeds)")
    return fig


def plot_norms_over_epochs(norms: pd.DataFrame):
    """Mean ‖ΔW‖_F over layers per epoch, one panel per module, log scale (the methods differ by orders of magnitude)."""
    per_run = norms[norms.epoch != 0].groupby(["run", "module", "epoch"], as_index=False).agg(
        frobenius=("frobenius", "mean"), **{c: (c, "first") for c in norms.columns if c in (*SETTING_COLUMNS, "method", "seed")})
    fig, panels = _facets(per_run, rows="module")
    for ax, part, title in panels:
        _band(ax, part, "epoch", "frobenius")
        log_axis(ax, "y")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean ‖ΔW‖_F over layers")
        ax.set_title(title)
    panels[0][0].legend(fontsize=7)
    return fig


def plot_spectra(spectra: pd.DataFrame):
    """Normalized singular values σ_i/Σσ at the last epoch, averaged over layers per run, mean and seed band."""
    last = spectra[spectra.epoch == spectra.epoch.max()].copy()
    last["share"] = last.singular_value / last.groupby(["run", "name"]).singular_value.transform("sum")
    per_run = last.groupby(["run", "index"], as_index=False).agg(
        share=("share", "mean"), **{c: (c, "first") for c in last.columns if c in (*SETTING_COLUMNS, "method", "seed")})
    fig, panels = _facets(per_run, width=5.6)
    for ax, part, title in panels:
        _band(ax, part, "index", "share")
        ax.set_xlabel("index i")
        ax.set_ylabel("σ_i / Σσ (mean over layers)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"normalized spectra of ΔW at the {state_name(last.epoch.max())} (mean, 95% CI over seeds)")
    return fig


def plot_scales(scales: pd.DataFrame):
    """TLoRA's α per layer at the last epoch, one panel per module, mean and seed band per group."""
    last = scales[scales.epoch == scales.epoch.max()]
    fig, panels = _facets(last, rows="module")
    for ax, part, title in panels:
        _band(ax, part, "layer", "alpha")
        ax.set_xlabel("layer")
        ax.set_ylabel("α")
        ax.set_title(title)
    panels[0][0].legend(fontsize=7)
    fig.suptitle(f"TLoRA's α per layer at the {state_name(last.epoch.max())} (mean, 95% CI over seeds)")
    return fig


def plot_similarity_controls(controls: pd.DataFrame):
    """Mean cosine of ΔW and top-r subspace φ for each kind of pair: two seeds of one method beside
    two methods at one seed. Dots are pairs, bars their mean; dashed lines are chance."""
    per_pair = controls.groupby(["kind", "method_a", "method_b", "run_a", "run_b"], as_index=False).agg(
        cosine=("cosine", "mean"), phi=("phi", "mean"), baseline=("baseline_abs_q95", "mean"), phi_random=("phi_random", "mean"))
    per_pair["pair"] = [f"{method_label(a)}–{method_label(b)}" for a, b in zip(per_pair.method_a, per_pair.method_b)]
    per_pair["label"] = per_pair.pair + "\n(" + per_pair.kind.str.replace(", ", "\n") + ")"
    labels = list(dict.fromkeys(per_pair.sort_values(["kind", "pair"], ascending=[False, True]).label))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    for ax, column, chance, title in ((axes[0], "cosine", "baseline", "cosine of ΔW"), (axes[1], "phi", "phi_random", "φ of top-r subspaces")):
        for x, label in enumerate(labels):
            rows = per_pair[per_pair.label == label]
            color = "0.35" if rows.kind.iloc[0].startswith("same") else method_color(rows.method_b.iloc[0])
            ax.bar(x, rows[column].mean(), color=color, alpha=0.5, width=0.6)
            ax.scatter(np.full(len(rows), x), rows[column], color=color, s=14, zorder=3)
            ax.hlines(rows[chance].mean(), x - 0.35, x + 0.35, colors="k", linestyles="dashed", lw=1)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_ylabel(f"mean {title} over layers")
        ax.set_title(f"{title}: controls (dashed: chance)")
    return fig


def plot_claims_over_seeds(claims_per_seed: pd.DataFrame):
    """Each finding's headline statistic per seed (dots) and its mean, against the threshold (grey line)."""
    from ..analysis.claims import READINGS

    headline = {r.finding: r for r in READINGS if r.headline}
    data = claims_per_seed[claims_per_seed.headline]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4), layout="constrained")
    for ax, (finding, reading) in zip(axes.flat, sorted(headline.items())):
        rows = data[data.finding == finding]
        groups = list(dict.fromkeys(rows.tlora_group))
        for x, group in enumerate(groups):
            values = rows[rows.tlora_group == group].value.to_numpy(dtype=float)
            ax.scatter(np.full(len(values), x), values, color=method_color(PAPER_METHOD), s=16, alpha=0.6)
            ax.hlines(np.nanmean(values) if len(values) else np.nan, x - 0.3, x + 0.3, colors="k")
        for t in reading.limits:
            ax.axhline(t, color="0.6", ls="--", lw=1)
        ax.set_xticks(range(len(groups)), [g.replace("method=tlora", "").strip() or "TLoRA" for g in groups], fontsize=7)
        ax.set_title(textwrap.fill(f"{finding}. {FINDINGS[finding]}", 48), fontsize=9)
        ax.set_ylabel(textwrap.fill(reading.name, 40), fontsize=7)  # wrapped: a long reading stays within its panel
        if finding == 5:
            log_axis(ax, "y")
    return fig


def plot_verdict_map(claims: pd.DataFrame):
    """Readings (rows) x TLoRA settings (columns): the share of seeds in which each reading holds,
    annotated "k/n"; grey where a reading could not be computed."""
    groups = list(dict.fromkeys(claims.tlora_group))
    readings = list(dict.fromkeys(zip(claims.finding, claims.reading)))
    grid = np.full((len(readings), len(groups)), np.nan)
    labels = [["" for _ in groups] for _ in readings]
    for r in claims.itertuples():
        i, j = readings.index((r.finding, r.reading)), groups.index(r.tlora_group)
        if r.holds_in != "—":
            k, n = map(int, r.holds_in.split("/"))
            grid[i, j] = k / n if n else np.nan
        labels[i][j] = r.holds_in
    fig, ax = plt.subplots(figsize=(7.5 + 1.3 * len(groups), 0.42 * len(readings) + 1.6), layout="constrained")
    cmap = plt.get_cmap("RdYlGn").with_extremes(bad="0.88")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(len(readings)):
        for j in range(len(groups)):
            dark = not np.isnan(grid[i, j]) and (grid[i, j] < 0.25 or grid[i, j] > 0.8)
            ax.text(j, i, labels[i][j], ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(groups)), [g.replace("method=tlora", "").strip() or "TLoRA" for g in groups], fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(readings)), [textwrap.fill(f"{f}. {name}", 64) for f, name in readings], fontsize=7)  # wrapped, never cut
    ax.grid(False)
    ax.set_title("share of seeds in which each reading holds")
    fig.colorbar(image, ax=ax, label="holds in k/n seeds", shrink=0.6)
    return fig


def plot_learning_rates(runs_over_seeds: pd.DataFrame, runs: pd.DataFrame):
    """A learning-rate sweep: each group's (method's, or method and rank's) final metric against lr (mean
    and 95% CI over seeds), the chosen rate ringed."""
    from ..results import learning_rate_choice

    metric = str(runs.metric.dropna().iloc[0])
    choice = learning_rate_choice(runs_over_seeds, metric)
    if choice.empty:
        raise NothingToDraw("no method was run at two or more learning rates")
    fig, ax = plt.subplots(figsize=(7.2, 4.6), layout="constrained")
    for (group, rows), (color, marker) in zip(choice.groupby("group", sort=False), _group_styles(choice)):
        label = method_label(rows.method.iloc[0]) + group.removeprefix(str(rows.method.iloc[0]))
        ax.errorbar(rows.lr, rows["mean"], yerr=ci_bars(rows["mean"], rows.ci_low, rows.ci_high), fmt=f"{marker}-", color=color, capsize=3,
                    label=label)
        best = rows[rows.chosen]
        ax.scatter(best.lr, best["mean"], s=160, facecolors="none", edgecolors=color, linewidths=1.8)
    log_axis(ax, "x")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final validation {metric}")
    ax.set_title("learning-rate sweep: mean and 95% CI over seeds; ringed: the best mean")
    ax.legend(fontsize=8)
    return fig


def _group_styles(choice: pd.DataFrame) -> list[tuple]:
    """(colour, marker) per group: the method's colour where it is one group; where it is several (one
    per rank), shades of it from light to dark, each with its own marker."""
    groups = choice.drop_duplicates("group")
    styles = []
    for method, group in zip(groups.method, groups.group):
        names = list(groups[groups.method == method].group)
        base, index = np.array(to_rgb(method_color(method))), names.index(group)
        shade = 0.0 if len(names) == 1 else 0.7 * (1 - index / (len(names) - 1))
        styles.append((tuple(base + (1 - base) * shade), "osD^vP"[index % 6]))
    return styles


STUDY_FIGURES = {
    "study_accuracy_vs_parameters": (plot_accuracy_vs_parameters, ("runs",), "final metric vs trainable parameters, mean and CI over seeds"),
    "study_metric": (plot_metric_over_epochs, ("metrics",), "validation metric per epoch with seed bands"),
    "study_norms": (plot_norms_over_epochs, ("norms",), "mean ‖ΔW‖_F per epoch with seed bands"),
    "study_spectra": (plot_spectra, ("spectra",), "normalized singular values with seed bands"),
    "study_scales": (plot_scales, ("scales",), "TLoRA's α per layer with seed bands"),
    "study_controls": (plot_similarity_controls, ("controls",), "cosine and φ: same method across seeds vs methods at one seed"),
    "study_verdict_map": (plot_verdict_map, ("claims",), "every reading's verdict over seeds, for each TLoRA setting"),
    "study_claims": (plot_claims_over_seeds, ("claims_per_seed",), "each finding's headline statistic per seed against its threshold"),
    "study_learning_rates": (plot_learning_rates, ("runs_over_seeds", "runs"), "final metric vs learning rate per method, the best ringed"),
    "study_ladder": (plot_ladder, ("ladder_over_seeds",), "cosine with LoRA's ΔW vs trainable numbers, with each method's reachable bound"),
    "study_ranks": (plot_ranks, ("ladder_over_seeds",), "cosine and reachable bound vs r/d, metric and norm ratio vs rank"),
    "study_atlas": (plot_atlas, ("ladder_over_seeds",), "every method: cosine with LoRA's ΔW vs norm ratio, sized by trainable numbers"),
    "study_atlas_table": (plot_atlas_table, ("ladder_over_seeds",), "every method's numbers against LoRA, mean [95% CI] over seeds"),
}
