"""Parameter norms over epochs and TLoRA's scale α across layers (TLoRA paper findings 2, 3 and 5)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from ..errors import InputError
from ..factored import cosine_similarity, inner
from ..methods.spec import METHOD_SPECS
from ._common import UpdateSource, as_source, epochs_of, learns_scale, per_run, row_key


@per_run
def norms(run: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """Frobenius and spectral norms of ΔW and Frobenius norms of the trainable matrices, per layer and epoch.

    ``delta_step`` is ‖ΔW_e − ΔW_{e−1}‖_F (how far the update moved in an epoch, computed
    factored as √(‖a‖² + ‖b‖² − 2⟨a, b⟩)), ``frobenius_change`` the change of the norm itself and
    ``cosine_to_last`` cos(ΔW_e, ΔW_last) with the run's last recorded epoch (its trajectory's
    pattern). The paper's findings 2 (stable norms across epochs) and 5 (LoRA and TLoRA norms
    close) read off this table.
    """
    run = as_source(run)
    rows, previous = [], {}
    final = run.deltas(run.epochs[-1]) if run.epochs else {}
    for epoch in epochs_of(run, epochs):
        trainable = run.trainable(epoch)
        for name, delta in run.deltas(epoch).items():
            row = {**row_key(run, name, epoch), "frobenius": delta.frobenius_norm(), "spectral": delta.spectral_norm()}
            for matrix, tensor in trainable.get(name, {}).items():
                row[f"{matrix}_frobenius"] = float(tensor.double().norm())
            before = previous.get(name)
            if before is None:
                row["delta_step"] = row["frobenius_change"] = math.nan
            else:
                squared = row["frobenius"] ** 2 + before.frobenius_norm() ** 2 - 2 * inner(delta, before)
                row["delta_step"] = math.sqrt(max(squared, 0.0))
                row["frobenius_change"] = row["frobenius"] - before.frobenius_norm()
            last = final.get(name)
            row["cosine_to_last"] = cosine_similarity(delta, last) if last is not None else math.nan
            previous[name] = delta
            rows.append(row)
    return pd.DataFrame(rows)


@per_run
def scales(run: UpdateSource, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """TLoRA's learned α per layer and epoch, with its mean, standard deviation and coefficient
    of variation across the layers of each (module, epoch) — the paper's finding 3."""
    run = as_source(run)
    if not learns_scale(run.method):
        learned = ", ".join(n for n, s in METHOD_SPECS.items() if s.learns_scale)
        raise InputError(f"run {run.name!r} is {run.method}: only methods that learn a scale per layer ({learned}) have one")
    rows = [
        {**row_key(run, name, epoch), "alpha": alpha}
        for epoch in epochs_of(run, epochs)
        for name, alpha in run.scales(epoch).items()
    ]
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(["module", "epoch"])["alpha"]
    frame["alpha_mean_across_layers"] = grouped.transform("mean")
    frame["alpha_std_across_layers"] = grouped.transform(lambda a: a.std(ddof=0))
    frame["alpha_cv_across_layers"] = frame["alpha_std_across_layers"] / frame["alpha_mean_across_layers"].abs()
    return frame


def scale_variation(scales_table: pd.DataFrame) -> pd.DataFrame:
    """One row per (module, epoch) of a :func:`scales` table: mean, std and CV of α across layers."""
    columns = ["run", "method", "module", "epoch", "alpha_mean_across_layers", "alpha_std_across_layers", "alpha_cv_across_layers"]
    return scales_table[columns].drop_duplicates(["run", "module", "epoch"]).reset_index(drop=True)
