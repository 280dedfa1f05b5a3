"""One line per run: what a reader wants before the details."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ._common import UpdateSource, as_source, learns_scale, per_run
from .norms import norms, scales
from .spectra import effective_rank


@per_run
def summary(run: UpdateSource) -> pd.DataFrame:
    """Final metric, trainable parameters, and at the last epoch: mean ‖ΔW‖_F, mean stable and entropy
    rank, and (TLoRA) the coefficient of variation of α across layers."""
    run = as_source(run)
    last = run.epochs[-1]
    meta = run.meta
    counts = meta.get("parameter_counts", {})
    main = meta.get("main_metric", "accuracy")
    metrics = run.metrics.get(last, {})
    ranks = effective_rank(run, [last])
    row = {
        "run": run.name,
        "method": run.method,
        "rank": run.rank,
        "epochs": last,
        "metric": main,
        "final_metric": metrics.get(main, math.nan),
        "adapter_trainable_params": counts.get("adapter_trainable", math.nan),
        "other_trainable_params": counts.get("other_trainable", math.nan),
        "frozen_random_params": counts.get("frozen_random", math.nan),
        "mean_delta_frobenius": float(norms(run, [last])["frobenius"].mean()),
        "mean_stable_rank": float(np.nanmean(ranks["stable_rank"])) if ranks["stable_rank"].notna().any() else math.nan,
        "mean_entropy_rank": float(np.nanmean(ranks["entropy_rank"])) if ranks["entropy_rank"].notna().any() else math.nan,
        "alpha_cv_across_layers": float(scales(run, [last])["alpha_cv_across_layers"].mean()) if learns_scale(run.method) else math.nan,
    }
    return pd.DataFrame([row])


def comparison_summary(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per source, one row per pair) from :func:`~tlora_analysis.analysis.compare_runs`'s tables: what
    ``tlora-analysis compare`` prints. A pair's cosine is the mean over the layers both sources adapt, at the
    states that met (``epoch_a``, ``epoch_b``); its norm ratio is the ratio of the two sources' mean ‖ΔW‖_F there."""
    per_source = tables["summary"][["run", "method", "epochs", "mean_delta_frobenius", "mean_entropy_rank"]].rename(
        columns={"epochs": "last_epoch"})
    pairs = tables.get("similarity_pairs")
    if pairs is None or not len(pairs):
        return per_source.reset_index(drop=True), pd.DataFrame()
    norms_at = tables["norms"].groupby(["run", "epoch"])["frobenius"].mean()
    rows = []
    for (run_a, run_b), group in pairs.groupby(["run_a", "run_b"], sort=False):
        epoch_a, epoch_b = int(group.epoch_a.iloc[-1]), int(group.epoch_b.iloc[-1])
        last = group[(group.epoch_a == epoch_a) & (group.epoch_b == epoch_b)]
        norm_a, norm_b = norms_at.get((run_a, epoch_a), math.nan), norms_at.get((run_b, epoch_b), math.nan)
        rows.append({"run_a": run_a, "run_b": run_b, "epoch_a": epoch_a, "epoch_b": epoch_b, "layers": len(last),
                     "mean_cosine": float(last.cosine.mean()), "norm_ratio_a_to_b": norm_a / norm_b if norm_b else math.nan})
    return per_source.reset_index(drop=True), pd.DataFrame(rows)


def source_settings(sources) -> pd.DataFrame:
    """One column per source, one row per setting, each value as its source holds it (an integer stays an integer)
    and "—" where the source does not say; why: the report's settings table, for any mix of runs and adapters."""
    from ..methods.spec import METHOD_SPECS
    from ..sources.formats import origin

    columns = {}
    for source in sources:
        meta = source.meta
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        peft_config = meta.get("peft_config") if isinstance(meta.get("peft_config"), dict) else {}
        ranks = sorted({layer["rank"] for layer in source.layers.values() if isinstance(layer.get("rank"), int)})
        targets = config.get("targets") or meta.get("targets") or peft_config.get("target_modules") \
            or sorted({name.rsplit(".", 1)[-1] for name in source.layers})
        spec = METHOD_SPECS.get(source.method)
        values = {"method": spec.label if spec else source.method, "task": meta.get("task") or config.get("task"),
                  "model": meta.get("model") or peft_config.get("base_model_name_or_path"),
                  "rank": ", ".join(map(str, ranks)) or None, "targets": ", ".join(targets) if isinstance(targets, list) else targets,
                  "trained numbers": _trained_numbers(source), "seed": config.get("seed", meta.get("seed")), "lr": config.get("lr"),
                  "epochs": config.get("epochs") if config else "one saved state",
                  **{name: config.get(name, _layers_agree(source, name)) for name in (spec.options if spec else {})},
                  "path": origin(source)}
        columns[source.name] = {key: _shown(value) for key, value in values.items()}
    return pd.DataFrame(columns).fillna("—")


def _layers_agree(source, name: str):
    """A setting every layer record holds the same value of (TLoRA's init, recorded per layer), else None."""
    values = {repr(layer.get(name)) for layer in source.layers.values()}
    return next(iter(source.layers.values())).get(name) if len(values) == 1 and source.layers else None


def _trained_numbers(source) -> int | None:
    """The adapter's trained numbers: as its run counted them, else the numel of the trained tensors at its last state."""
    counts = source.meta.get("parameter_counts")
    if isinstance(counts, dict) and isinstance(counts.get("adapter_trainable"), int):
        return counts["adapter_trainable"]
    try:
        trained = source.trainable(source.epochs[-1])
    except (AttributeError, IndexError, NotImplementedError):
        return None
    return sum(int(t.numel()) for layer in trained.values() for t in layer.values()) or None


def _shown(value) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
