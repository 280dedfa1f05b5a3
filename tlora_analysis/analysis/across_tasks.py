"""One study's findings on several tasks, side by side: which transfer from a task to another and which do not.

Why from results files: each task's study already wrote its ``results.json`` (accuracy per method with a CI
over seeds, each claim reading's statistic, CI and verdict, and the ladder's per-method columns). Setting them
next to each other needs no update read again, so a comparison across tasks costs nothing and can be redone
from the committed files alone.

A reading *transfers* when its verdict is the same on every task where it was decided ("holds" or "does not
hold" in every seed); it *differs* when two tasks decided it differently; it is *undecided* where fewer than
two tasks decided it ("mixed" and "not computed" decide nothing). A ladder column is compared by its CIs: the tasks *agree* where their
95% CIs overlap, else they *differ*. The rule is stated here and in every table, never tuned.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from ..errors import InputError

__all__ = ["across_tasks", "DECIDED", "LADDER_COLUMNS"]

DECIDED = ("holds", "does not hold")
"""Verdicts that decide a reading (the study's own: :func:`~tlora_analysis.analysis.controls.summarize_claims`);
"mixed" (seeds disagree) and "not computed" do not."""

LADDER_COLUMNS = ("final_metric", "cosine", "norm_ratio", "entropy_rank", "amplification", "intruders")
"""The ladder's (and atlas's) columns compared across tasks: accuracy, cos with LoRA, norm ratio, effective rank,
amplification of W0's directions, intruder dimensions."""


def across_tasks(results: Mapping[str, Mapping]) -> dict[str, pd.DataFrame]:
    """Tables of several tasks' ``results.json`` (task label -> the parsed file): ``accuracy`` (task, method, mean
    and CI), ``claims`` (one row per reading and task) and ``transfer`` (one row per reading: each task's verdict
    and whether it transfers), and ``ladder`` (per method and column, each task's mean and CI, and whether they agree)."""
    if len(results) < 2:
        raise InputError(f"comparing tasks needs the results of at least two, got {len(results)}")
    for task, result in results.items():
        if not isinstance(result, Mapping) or not isinstance(result.get("methods"), Mapping):
            raise InputError(f"{task}: not a study's results.json (no 'methods' table); give the file figures wrote")
    tables = {"accuracy": _accuracy(results), "claims": _claims(results)}
    tables["transfer"] = _transfer(tables["claims"], list(results))
    tables["ladder"] = _ladder(results)
    return tables


def _accuracy(results: Mapping[str, Mapping]) -> pd.DataFrame:
    rows = [{"task": task, "method": method, "metric": group.get("metric"), "mean": group.get("mean"),
             "ci_low": group.get("ci_low"), "ci_high": group.get("ci_high"), "seeds": len(group.get("per_seed") or [])}
            for task, result in results.items() for method, group in result["methods"].items()]
    return pd.DataFrame(rows)


def _claims(results: Mapping[str, Mapping]) -> pd.DataFrame:
    rows = []
    for task, result in results.items():
        for claim in result.get("claims") or []:
            low, high = (claim.get("ci") or [None, None]) + [None] * (2 - len(claim.get("ci") or []))
            rows.append({"task": task, "finding": claim.get("finding"), "reading": claim.get("reading"),
                         "headline": bool(claim.get("headline")), "threshold": claim.get("threshold"),
                         "statistic": claim.get("mean"), "ci_low": low, "ci_high": high,
                         "holds_in": claim.get("holds_in"), "verdict": claim.get("verdict")})
    return pd.DataFrame(rows, columns=["task", "finding", "reading", "headline", "threshold", "statistic", "ci_low", "ci_high",
                                       "holds_in", "verdict"])


def _transfer(claims: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    rows = []
    for (finding, reading), group in claims.groupby(["finding", "reading"], sort=False):
        verdicts = dict(zip(group.task, group.verdict))
        decided = {v for v in verdicts.values() if v in DECIDED}
        counted = sum(v in DECIDED for v in verdicts.values())
        outcome = "undecided" if counted < 2 else ("transfers" if len(decided) == 1 else "differs")
        rows.append({"finding": finding, "reading": reading, "headline": bool(group.headline.iloc[0]),
                     **{f"verdict_{task}": verdicts.get(task, "absent") for task in tasks}, "outcome": outcome,
                     "rule": "transfers: one verdict on every task that decided it (holds or does not hold), at least two tasks"})
    return pd.DataFrame(rows)


def _ladder(results: Mapping[str, Mapping]) -> pd.DataFrame:
    tasks = [task for task, result in results.items() if isinstance(result.get("ladder"), Mapping)]
    methods = [m for m in results[tasks[0]]["ladder"] if all(m in results[t]["ladder"] for t in tasks)] if len(tasks) > 1 else []
    rows = []
    for method in methods:
        for column in LADDER_COLUMNS:
            entries = {task: results[task]["ladder"][method].get(column) for task in tasks}
            if not all(isinstance(e, Mapping) and e.get("mean") is not None for e in entries.values()):
                continue
            cis = [tuple(e.get("ci") or (e["mean"], e["mean"])) for e in entries.values()]
            overlap = max(low for low, _ in cis) <= min(high for _, high in cis)
            rows.append({"method": method, "column": column, **{f"mean_{t}": e["mean"] for t, e in entries.items()},
                         **{f"ci_{t}": list(e.get("ci") or []) for t, e in entries.items()},
                         "outcome": "agree" if overlap else "differ", "rule": "agree: the tasks' 95% CIs over seeds overlap"})
    return pd.DataFrame(rows)
