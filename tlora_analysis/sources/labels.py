"""A set of sources under readable, unique labels: the ``run`` column of every table."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import InputError
from ..io import split_label
from .formats import open_updates

__all__ = ["open_sources", "labelled_paths", "Labelled", "LABEL_SETTINGS"]

LABEL_SETTINGS = ("seed", "rank", "lr", "alpha", "init", "epochs", "targets")
"""The settings that may name a source in its label, when they differ between the sources."""


def open_sources(sources, base: str | None = None) -> list:
    """Open a set of sources and give each a unique, readable label (its ``name``, the ``run`` column of every table).

    ``sources`` is a list (paths or opened sources) or a mapping ``label -> source``. Unlabelled
    sources are named by their method and what differs between sources of one method (``lora-s0``, ``lora-s1``,
    ``tlora-r4``; a LoRA and a TLoRA run at their own rates are ``lora`` and ``tlora``), else by their directory. The same path twice, or one label for two sources,
    is refused in one line.
    """
    if isinstance(sources, (str, Path)) or hasattr(sources, "deltas"):
        sources = [sources]  # one source (a path is not a sequence of characters)
    elif not isinstance(sources, Mapping):
        sources = list(sources)
    given = list(sources.keys()) if isinstance(sources, Mapping) else [None] * len(sources)
    items = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    if not items:
        raise InputError("no source given: name at least one run, snapshot, adapter or export")
    given = [item.name if label is None and isinstance(item, Labelled) else label for label, item in zip(given, items)]
    seen: set = set()
    for item in items:  # a path by where it leads; an opened source by identity (two snapshot files share a run)
        key = Path(item).resolve() if isinstance(item, (str, Path)) else id(item.source if isinstance(item, Labelled) else item)
        if key in seen:
            raise InputError(f"{item if isinstance(item, (str, Path)) else item.path}: given twice; give each source once")
        seen.add(key)
    labels = [g for g in given if g is not None]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None or any(not isinstance(label, str) or not label.strip() for label in labels):
        raise InputError(f"label {twice!r} names two sources; give each source its own label" if twice is not None
                         else "a source label must be a non-empty string")
    opened = [open_updates(item, base) if isinstance(item, (str, Path)) else item for item in items]
    return [Labelled(source, label if label is not None else auto) for source, label, auto in zip(opened, given, _auto_labels(opened, set(labels)))]


class Labelled:
    """A source under the label one analysis gives it; everything else is the source's own (it is not changed)."""

    def __init__(self, source, label: str) -> None:
        self.source = source.source if isinstance(source, Labelled) else source
        self.name = label

    def __getattr__(self, attribute):
        return getattr(self.source, attribute)

    def __repr__(self) -> str:
        return f"Labelled({self.name!r}, {self.source!r})"


def _auto_labels(sources: list, taken: set[str]) -> list[str]:
    from ..study.spec import SHORT, format_value

    configs = [s.meta.get("config") if isinstance(s.meta.get("config"), dict) else {} for s in sources]
    methods = {s.method for s in sources}  # a setting each method holds one value of (its own rate) tells no source apart,
    varied = [k for k in LABEL_SETTINGS     # nor one that only some sources hold (an adapter has no seed or epochs)
              if any(len({repr(c[k]) for s, c in zip(sources, configs) if s.method == m and c.get(k) is not None}) > 1
                     for m in methods)]
    labels = ["-".join([s.method, *(f"{SHORT.get(k, k)}{format_value(c[k])}" for k in varied if c.get(k) is not None)])
              for s, c in zip(sources, configs)]
    if len(set(labels)) < len(labels) or set(labels) & taken:  # the settings do not tell them apart: their directories do
        labels = [Path(s.path).name for s in sources]
    counts: dict[str, int] = {}
    unique = []
    for label in labels:  # two directories of one name (a/run, b/run): number them
        counts[label] = counts.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 and label not in taken else f"{label}-{counts[label]}")
    return unique


def labelled_paths(arguments: list[str]) -> dict[str, str] | list[str]:
    """``NAME=PATH`` arguments as a mapping label -> path (an existing path with '=' in it stays a path)."""
    named = [split_label(a) for a in arguments]
    if all(label is None for label, _ in named):
        return arguments
    if any(label is None for label, _ in named):
        raise InputError("label every source (NAME=PATH) or none; mixed: " + ", ".join(a for a in arguments if "=" not in a))
    return {label: path for label, path in named} if len({label for label, _ in named}) == len(named) else \
        _refuse_twice([label for label, _ in named])


def _refuse_twice(labels: list[str]):
    twice = next(label for label in labels if labels.count(label) > 1)
    raise InputError(f"label {twice!r} names two sources; give each source its own label")
