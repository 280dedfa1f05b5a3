"""Each registered figure drawn and saved, in this process or by worker processes (``jobs``): a figure is a pure
function of its tables, so a worker given those tables draws the same file this process would, and a study's
two dozen figures in two formats, most of a warm ``figures``, divide among the cores."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

__all__ = ["draw_registered", "drawing_workers"]


@contextlib.contextmanager
def drawing_workers(jobs: int):
    """The worker processes of one render call (None for ``jobs`` 1), started once for all its registries."""
    if jobs <= 1:
        yield None
        return
    from ..processes import spawn_pool

    with spawn_pool(jobs) as pool:
        yield pool


def draw_registered(registry: str, tables: Mapping[str, pd.DataFrame], out_dir: Path, skipped: list[dict],
                    formats: tuple[str, ...], workers=None) -> list[dict]:
    """Draw each figure of ``registry`` (a registry's name in :mod:`tlora_analysis.figures`) whose tables are there,
    by ``workers`` (:func:`drawing_workers`) where given; for the others, add to ``skipped`` what was missing and
    why, in the registry's order."""
    from . import SKIP_REASONS

    planned, outcomes = {}, {}
    for name, (_, needs, _) in _registry(registry).items():
        missing = [key for key in needs if key not in tables or not len(tables[key])]
        if missing:
            outcomes[name] = ("skipped", {"name": name, "needs": missing, "reason": SKIP_REASONS.get(missing[0], f"no {missing[0]} table")})
        else:
            planned[name] = {key: tables[key] for key in needs}
    if workers is not None and len(planned) > 1:
        futures = {name: workers.submit(_draw_one, registry, name, needed, out_dir, formats) for name, needed in planned.items()}
        outcomes.update({name: future.result() for name, future in futures.items()})
    else:
        outcomes.update({name: _draw_one(registry, name, needed, out_dir, formats) for name, needed in planned.items()})
    entries = []
    for name in _registry(registry):
        kind, record = outcomes[name]
        (entries if kind == "entry" else skipped).append(record)
    return entries


def _draw_one(registry: str, name: str, tables: Mapping[str, pd.DataFrame], out_dir: Path, formats: tuple[str, ...]) -> tuple[str, dict]:
    from .style import NothingToDraw, save, style

    draw, needs, description = _registry(registry)[name]
    with style():
        try:
            figure = draw(*(tables[key] for key in needs))
        except NothingToDraw as reason:
            return "skipped", {"name": name, "needs": list(needs), "reason": str(reason)}
        paths = save(figure, out_dir, name, formats)
    return "entry", {"name": name, "files": [p.name for p in paths], "shows": description, "tables": list(needs)}


def _registry(name: str) -> Mapping:
    from importlib import import_module

    return getattr(import_module(__package__), name)  # the registries live in the package's __init__
