"""Each registered figure drawn and saved, in this process or by worker processes (``jobs``): a figure is a pure
function of its tables, so a worker given those tables draws the same file this process would, and a study's
two dozen figures in two formats, most of a warm ``figures``, divide among the cores.

For the same reason a figure already in the output folder is kept, not drawn again, when the ``figures.json``
there says it was drawn from the same inputs (the SHA-256 of its tables' contents, the formats, this package's
source and matplotlib's version: ``inputs_sha256``) and each of its files still has the SHA-256 recorded beside
it (``file_sha256``). A file edited, a table changed or the code changed: drawn again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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

    planned, outcomes, earlier, inputs = {}, {}, _earlier_entries(out_dir), {}
    for name, (_, needs, _) in _registry(registry).items():
        missing = [key for key in needs if key not in tables or not len(tables[key])]
        if missing:
            outcomes[name] = ("skipped", {"name": name, "needs": missing, "reason": SKIP_REASONS.get(missing[0], f"no {missing[0]} table")})
            continue
        inputs[name] = inputs_digest(registry, name, {key: tables[key] for key in needs}, formats)
        if inputs[name] is not None and _still_drawn(earlier.get(name), inputs[name], out_dir):
            outcomes[name] = ("entry", earlier[name])
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
        if kind == "entry" and name in planned and inputs[name] is not None:
            record = {**record, "inputs_sha256": inputs[name], "file_sha256": {f: _file_sha256(out_dir / f) for f in record["files"]}}
        (entries if kind == "entry" else skipped).append(record)
    return entries


def inputs_digest(registry: str, name: str, tables: Mapping[str, pd.DataFrame], formats: tuple[str, ...]) -> str | None:
    """SHA-256 of everything a figure is drawn from, or None where a table holds values pandas cannot hash."""
    import matplotlib

    from ..analysis.table_cache import code_version

    digest = hashlib.sha256(json.dumps([code_version(), matplotlib.__version__, registry, name, list(formats)]).encode())
    try:
        for key, table in tables.items():
            digest.update(json.dumps([key, [str(c) for c in table.columns], [str(t) for t in table.dtypes]]).encode())
            digest.update(pd.util.hash_pandas_object(table, index=True).to_numpy().tobytes())
    except (TypeError, ValueError):
        return None
    return digest.hexdigest()


def _earlier_entries(out_dir: Path) -> dict[str, dict]:
    """The entries of the figures.json already in ``out_dir``, by figure name (none where there is none readable)."""
    try:
        entries = json.loads((out_dir / "figures.json").read_text()).get("figures", [])
        return {e["name"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def _still_drawn(entry: dict | None, inputs: str, out_dir: Path) -> bool:
    """Whether an earlier entry was drawn from ``inputs`` and every file it lists is the one it drew."""
    if entry is None or entry.get("inputs_sha256") != inputs or not isinstance(entry.get("file_sha256"), dict):
        return False
    files = entry["file_sha256"]
    if not files or list(files) != entry.get("files"):
        return False
    return all(isinstance(f, str) and Path(f).name == f and not (out_dir / f).is_symlink() and _file_sha256(out_dir / f) == d
               for f, d in files.items())


def _file_sha256(path: Path) -> str | None:
    from ..analysis.table_cache import file_digest

    try:
        return file_digest(path) if path.is_file() else None
    except OSError:
        return None


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
