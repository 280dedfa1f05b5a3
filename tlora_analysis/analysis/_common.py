"""What every analysis shares: row keys, input checks, and turning paths into runs."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from ..config import non_settings
from ..errors import InputError
from ..factored import FactoredDelta
from ..methods.spec import METHOD_SPECS

if TYPE_CHECKING:
    import torch


class UpdateSource(Protocol):
    """Everything an update source offers, so that no caller needs a ``hasattr`` fallback.

    Implemented by :class:`~tlora_analysis.store.Run`, a run limited to one snapshot,
    :class:`~tlora_analysis.sources.PeftAdapter` and
    :class:`~tlora_analysis.checkpoints.FullFineTune` (the last two hold one state, epoch 0).
    """

    name: str
    method: str
    path: Path
    meta: dict
    """run.json's fields (``model``, ``parameter_counts``, ``main_metric``, ...) or what a source knows of them."""
    layers: dict[str, dict]
    """Per adapted layer: at least ``shape`` and ``rank``."""
    rank: int
    notices: list[str]
    """One line per thing the reading left out or assumed (empty where it read everything)."""

    @property
    def epochs(self) -> list[int]: ...

    @property
    def metrics(self) -> dict[int, dict[str, float]]: ...

    def deltas(self, epoch: int) -> dict[str, FactoredDelta]: ...

    def scales(self, epoch: int) -> dict[str, float]:
        """Each layer's scalar scale (TLoRA's α, LoRA's lora_alpha / r); empty where a method has none."""
        ...

    def trainable(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """The trained matrices per layer by short name (``{"A": ..., "B": ...}``); empty where none are stored."""
        ...


_INTEGER = re.compile(r"^\d+$")


def module_and_layer(name: str) -> tuple[str, int]:
    """``"bert.encoder.layer.3.attention.self.query"`` -> ``("attention.self.query", 3)``.

    The layer is the last integer component (-1 if there is none); the module is the path after it,
    within the block, so that a block's several ``dense`` layers (``attention.output.dense``,
    ``intermediate.dense``, ``output.dense``) stay apart wherever tables are pivoted by (module, layer).
    A name without a layer index is its own module. Nothing here matches substrings of names.
    """
    parts = name.split(".")
    index = max((i for i, p in enumerate(parts) if _INTEGER.match(p)), default=None)
    if index is None or index == len(parts) - 1:
        return name, -1 if index is None else int(parts[index])
    return ".".join(parts[index + 1:]), int(parts[index])


def as_source(source) -> UpdateSource:
    """Accept a run/adapter object, or a path to a run directory, a snapshot file or a PEFT adapter directory."""
    if isinstance(source, (str, Path)):
        from ..sources import open_updates

        return open_updates(source)
    return source


def epochs_of(source: UpdateSource, epochs: Iterable[int] | None = None) -> list[int]:
    available = list(source.epochs)
    if not available:
        raise InputError(f"run {source.name!r} has no finished epochs to analyse")
    if epochs is None:
        return available
    chosen = list(epochs)
    missing = [e for e in chosen if e not in available]
    if missing:
        raise InputError(f"run {source.name!r} has no epoch {missing[0]} (finished: {available})")
    return chosen


def row_key(source: UpdateSource, name: str, epoch: int) -> dict:
    module, layer = module_and_layer(name)
    return {"run": source.name, "method": source.method, "module": module, "layer": layer, "epoch": epoch, "name": name}


def iter_deltas(source: UpdateSource, epochs: Iterable[int] | None = None) -> Iterator[tuple[dict, FactoredDelta]]:
    """``(row key, delta)`` for every adapted layer and chosen epoch, in model order."""
    for epoch in epochs_of(source, epochs):
        deltas = source.deltas(epoch)
        if not deltas:
            raise InputError(f"run {source.name!r} has no adapter layers at epoch {epoch}")
        for name, delta in deltas.items():
            yield row_key(source, name, epoch), delta


NOT_SETTINGS = non_settings()
"""Config fields that never change what a run learns (``option(setting=False)``), so they never become columns."""


def runs_with_settings(source) -> list[tuple[UpdateSource, dict]] | None:
    """``(run, settings)`` for a Study (its swept settings) or a list of runs (the config fields
    that differ between them); None for a single source. Runs without adapted layers are skipped."""
    from ..study.directory import Study

    if isinstance(source, Study):
        return [(run, {k: v for k, v in settings.items() if k != "method"}) for run, settings in source.finished(adapted_only=True)]
    if not isinstance(source, (list, tuple)):
        return None
    runs = [as_source(s) for s in source]
    configs = [r.meta.get("config") or {} for r in runs]
    keys = sorted({k for c in configs for k in c} - set(NOT_SETTINGS) - {"method"})
    varied = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    return [(r, {k: c.get(k) for k in varied}) for r, c in zip(runs, configs) if r.layers]


def with_settings(table: pd.DataFrame, settings: dict) -> pd.DataFrame:
    """A run's table with its settings as columns, never over a measured column of the same name (TLoRA's α)."""
    return table.assign(**{k: v for k, v in settings.items() if k not in table.columns})


def per_run(analysis):
    """Let a one-run analysis take a Study or a list of runs as well: its tables concatenated,
    each row carrying its run's varied settings (rank, lr, seed, ...) as columns for ``groupby``."""

    @functools.wraps(analysis)
    def wrapper(source, *args, **kwargs):
        from .cell_workers import prefill
        from .table_cache import cache_for

        def one(run):
            cache = cache_for(run)  # a study's cell: its table is stored beside the study and reused while nothing changed
            if cache is None:
                return analysis(run, *args, **kwargs)
            return cache.table(analysis.__qualname__, run, args, kwargs, lambda: analysis(run, *args, **kwargs))

        runs = runs_with_settings(source)
        if runs is None:
            return one(source)
        if not runs:
            raise InputError("no finished run with adapted layers to analyse")
        prefill(analysis, [run for run, _ in runs], args, kwargs)  # cells without a stored table: by workers, where asked
        return pd.concat([with_settings(one(run), settings) for run, settings in runs], ignore_index=True)

    return wrapper


def per_pair(analysis):
    """Store a two-run analysis's table beside the study when both runs are its cells, and reuse it while neither
    changed (:func:`~.table_cache.cached`): a study read again recomputes only the pairs a new cell enters."""

    @functools.wraps(analysis)
    def wrapper(run_a, run_b, *args, **kwargs):
        from .table_cache import cached

        return cached(analysis.__qualname__, (run_a, run_b), args, kwargs, lambda: analysis(run_a, run_b, *args, **kwargs))

    return wrapper


def learns_scale(method: str) -> bool:
    """Whether a method learns a scale per layer (TLoRA's α); a method no spec names learns none."""
    spec = METHOD_SPECS.get(method)
    return spec is not None and spec.learns_scale


def has_square_core(method: str) -> bool:
    """Whether a method trains an r x r core between frozen factors (TLoRA's B, LoRA-XS's R)."""
    spec = METHOD_SPECS.get(method)
    return spec is not None and spec.square_core


def fixed_sides(method: str) -> tuple[str, ...]:
    """The sides of a method's ΔW whose span training cannot move (see ``MethodSpec.fixed_sides``);
    none for a method no spec names, so no bound is claimed for it."""
    spec = METHOD_SPECS.get(method)
    return spec.fixed_sides if spec is not None else ()


def settings_without(settings: Mapping, *keys: str) -> dict:
    """A cell's settings less ``keys``: what two cells must share to be compared (seed controls, the
    LoRA partner of a cell, a rank pair)."""
    return {k: v for k, v in settings.items() if k not in keys}


def same_but_method(a: Mapping, b: Mapping, per_method: Iterable[str]) -> bool:
    """Whether two cells are methods compared at one seed: alike in every setting but the method and
    the settings each method takes its own value of (``per_method``, such as its learning rate). The one
    pairing rule of the method controls, the claims' LoRA/TLoRA pairs and the ladder's LoRA partners."""
    skip = ("method", *per_method)
    return a.get("seed") == b.get("seed") and settings_without(a, *skip) == settings_without(b, *skip)
