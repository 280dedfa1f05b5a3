"""What a study's analysis leaves on disk: its tables as CSV, and results.json, the numbers the
README quotes (per group of cells the final metric with its CI, parameter counts, the ladder's
quantities, the learning rate a sweep chose, and every reading's verdict over seeds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_write_bytes

__all__ = ["write_tables", "study_results", "group_labels", "learning_rate_choice", "LOWER_IS_BETTER", "METHOD_FIELDS", "CLAIM_FIELDS"]

LOWER_IS_BETTER = ("perplexity", "eval_loss")
"""Metrics where a smaller value is the better one (a learning-rate sweep minimises them)."""
METHOD_FIELDS = ("method", "metric", "seeds", "per_seed", "mean", "adapter_params", "head_params", "frozen_random_params")
"""Every group's fields in results.json's ``methods`` (besides the swept settings that name it, and its CI over seeds)."""
CLAIM_FIELDS = ("finding", "reading", "headline", "threshold", "mean", "ci", "holds_in", "verdict")
"""Every reading's fields in results.json's ``claims`` (besides the LoRA and TLoRA groups it sets side by side)."""


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """Every table that has rows as ``NAME.csv`` (nested dicts of tables go to a subfolder of that name); an
    empty one (rank similarity in a study of one rank) is left out rather than written as a header alone."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        if isinstance(table, dict):
            paths += write_tables(table, out_dir / name)
            continue
        if table.empty:
            continue
        path = out_dir / f"{name}.csv"
        atomic_write_bytes(path, table.to_csv(index=False).encode())
        paths.append(path)
    return paths


def group_labels(table: pd.DataFrame, settings: list[str]) -> pd.Series:
    """A group's name: the method alone where it has one group, else the method and the settings that
    vary within it (``lora rank=4``)."""
    labels = []
    for _, row in table.iterrows():
        rows = table[table.method == row.method]
        varying = [c for c in settings if c in table.columns and rows[c].astype(str).nunique() > 1]
        labels.append(" ".join([str(row.method), *(f"{c}={row[c]:g}" if isinstance(row[c], float) else f"{c}={row[c]}" for c in varying)]))
    return pd.Series(labels, index=table.index)


def _round(value) -> float | int | None:
    """Four significant digits; whole numbers (parameter counts) exactly."""
    if pd.isna(value):
        return None
    return int(value) if float(value).is_integer() else float(f"{float(value):.4g}")


def _groups(tables: dict[str, pd.DataFrame], settings: list[str]) -> dict:
    runs = tables["runs"]
    done = runs[runs.status == "finished"].copy()
    done["group"] = group_labels(done, settings)
    over_seeds = tables.get("runs_over_seeds")
    groups = {}
    for label, rows in done.groupby("group", sort=False):
        fields = {"method": str(rows.method.iloc[0]), "metric": str(rows.metric.iloc[0]),
                  "seeds": sorted(int(s) for s in rows.seed) if "seed" in rows else [0],
                  "per_seed": [round(float(v), 4) for v in rows.final_metric], "mean": round(float(rows.final_metric.mean()), 4),
                  "adapter_params": int(rows.adapter_params.iloc[0]), "head_params": int(rows.head_params.iloc[0]),
                  "frozen_random_params": int(rows.frozen_random_params.iloc[0])}
        row = {"method": fields["method"], **{c: _plain(rows[c].iloc[0]) for c in settings if c in rows},
               **{f: fields[f] for f in METHOD_FIELDS}}
        if over_seeds is not None:
            mask = (over_seeds.quantity == "final_metric") & (over_seeds.method == row["method"])
            for c in settings:
                if c in over_seeds.columns:
                    mask &= over_seeds[c].astype(str) == str(rows[c].iloc[0])
            if mask.any():
                m = over_seeds[mask].iloc[0]
                row.update(ci_low=round(float(m.ci_low), 4), ci_high=round(float(m.ci_high), 4))
        groups[label] = row
    return groups


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def _ladder(tables: dict[str, pd.DataFrame], settings: list[str]) -> dict:
    over_seeds = tables.get("ladder_over_seeds")
    if over_seeds is None or over_seeds.empty:
        return {}
    keys = ["method", *[c for c in settings if c in over_seeds.columns]]
    wide = over_seeds[keys].drop_duplicates().reset_index(drop=True)
    wide["group"] = group_labels(wide, settings)
    out = {}
    for row in wide.itertuples():
        mask = pd.Series(True, index=over_seeds.index)
        for c in keys:
            mask &= over_seeds[c].astype(str) == str(getattr(row, c))
        out[row.group] = {q.quantity: {"mean": _round(q.mean), "ci": [_round(q.ci_low), _round(q.ci_high)], "n": int(q.n)}
                          for q in over_seeds[mask].itertuples()}
    return out


AGGREGATE_COLUMNS = ("lr", "quantity", "mean", "std", "n", "ci_low", "ci_high")


def learning_rate_choice(runs_over_seeds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per group swept over lr (the method, and any other swept setting such as the rank), each learning
    rate's mean final metric over seeds (with CI and n), and ``chosen`` marking the best mean (the smallest
    for :data:`LOWER_IS_BETTER` metrics); of tied rates the smallest is chosen. ``group`` names the group;
    a group run at one rate (LoRA beside a sweep of TLoRA) is no sweep and is left out, so a table without
    an ``lr`` column gives no rows."""
    if "lr" not in runs_over_seeds.columns:
        return pd.DataFrame(columns=["group", "method", "lr", "mean", "ci_low", "ci_high", "n", "chosen"])
    rows = runs_over_seeds[runs_over_seeds.quantity == "final_metric"]
    keys = [c for c in rows.columns if c not in AGGREGATE_COLUMNS]
    rows = rows[[*keys, "lr", "mean", "ci_low", "ci_high", "n"]].sort_values([*keys, "lr"]).reset_index(drop=True)
    rows.insert(0, "group", group_labels(rows, keys))
    rows = rows[rows.groupby("group").lr.transform("nunique") > 1].reset_index(drop=True)
    means = rows.groupby("group", sort=False)["mean"]
    best = means.idxmin() if metric in LOWER_IS_BETTER else means.idxmax()  # the first, i.e. smallest, of tied rates
    return rows.assign(chosen=rows.index.isin(best.to_numpy()))


def _claim(r) -> dict:
    fields = {"finding": int(r.finding), "reading": r.reading, "headline": bool(r.headline), "threshold": r.threshold,
              "mean": _round(r.mean), "ci": [_round(r.ci_low), _round(r.ci_high)], "holds_in": r.holds_in, "verdict": r.verdict}
    return {f: fields[f] for f in CLAIM_FIELDS}


def study_results(tables: dict[str, pd.DataFrame], settings: list[str] | None = None) -> dict:
    """results.json of a study: ``methods`` (per group of cells), ``claims`` (per reading and LoRA/TLoRA groups), ``ladder``
    (per group, where LoRA cells set a reference) and ``learning_rates`` (where lr is swept within a
    method). ``settings``: the swept settings besides method and seed that name groups."""
    runs = tables["runs"]
    settings = [c for c in (settings or []) if c not in ("method", "seed")]
    results = {"methods": _groups(tables, settings)}
    claims = tables.get("claims")
    groups = [c for c in ("lora_group", "tlora_group") if claims is not None and c in claims.columns]
    results["claims"] = [] if claims is None else [{**{c: getattr(r, c) for c in groups}, **_claim(r)} for r in claims.itertuples()]
    ladder = _ladder(tables, settings)
    if ladder:
        results["ladder"] = ladder
    over_seeds = tables.get("runs_over_seeds")
    if over_seeds is not None:
        metric = str(runs.metric.dropna().iloc[0])
        choice = learning_rate_choice(over_seeds, metric)
        if len(choice):
            results["learning_rates"] = {
                group: {"metric": metric, "chosen": float(rows[rows.chosen].lr.iloc[0]),
                        "per_lr": [{"lr": float(r.lr), "mean": _round(r.mean), "ci": [_round(r.ci_low), _round(r.ci_high)], "n": int(r.n)}
                                   for r in rows.itertuples()]}
                for group, rows in choice.groupby("group", sort=False)}
    return results
