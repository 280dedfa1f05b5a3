"""Reusing what ``figures`` wrote: a ``report`` written into the same folder reads its tables and figures
instead of computing them again, only where a checked manifest says they were made for these very sources.

``figures`` writes its tables with ``tables/manifest.json`` (each CSV's SHA-256) and records in
figures.json the sources' fingerprint (their files' names, sizes and times), their labels and the use of
the base model. A report reuses the folder only if every one of these matches and every table listed is
there with its hash; anything else (a damaged figures.json, a missing, empty or foreign table, tables of
an earlier run on other sources) means the tables are computed again. Labels are read back as text, so
a source labelled ``NA`` or ``nan`` stays itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .io import split_label

__all__ = ["fingerprint", "manifest_matches", "read_tables", "write_manifest", "TABLES_MANIFEST"]

TABLES_MANIFEST = "manifest.json"
TEXT_COLUMNS = ("run", "run_a", "run_b", "label", "group", "pair", "name", "method", "method_a", "method_b", "module")
"""Columns read back as text whatever they hold (a label ``NA`` is not a missing value)."""


def fingerprint(arguments: list[str]) -> str:
    """Name, size and modification time of every file of the sources as given: what a later ``report``
    checks before it reuses the tables ``figures`` wrote from them."""
    digest = hashlib.sha256()
    for argument in arguments:
        path = Path(split_label(argument)[1])
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file() and not _stored_table(file, path):
                stat = file.stat()
                digest.update(f"{argument}\0{file.relative_to(path.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _stored_table(file: Path, source: Path) -> bool:
    """A study's own stored tables (``STUDY/cache/tables``) are no part of its sources: ``figures`` writes them."""
    from .analysis.table_cache import CACHE_FOLDER

    return file.is_relative_to(source / CACHE_FOLDER)


def write_manifest(folder: Path, paths: list[Path]) -> None:
    """Record the tables just written (and only them) with their SHA-256, so that stale or damaged ones are never reused."""
    from .io import atomic_write_json

    entries = {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    atomic_write_json(folder / TABLES_MANIFEST, {"tables": entries})


def _checked_tables(folder: Path) -> dict[str, str] | None:
    """The manifest's tables if every one is there with its recorded hash; None otherwise."""
    try:
        entries = json.loads((folder / TABLES_MANIFEST).read_text()).get("tables")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entries, dict) or not entries:
        return None
    for name, digest in entries.items():
        path = folder / name
        if not isinstance(digest, str) or Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file() \
                or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return None
    return entries


def manifest_matches(folder: Path, args, study: dict | None = None, sources: dict | None = None) -> bool:
    """Whether ``figures`` wrote ``folder`` from these very sources: the same files (fingerprint), the same labels
    (``sources``: label -> path, for a set of sources), the same use of the base model, for a study the same spec,
    and its tables intact."""
    try:
        manifest = json.loads((folder / "figures.json").read_text())
    except (OSError, ValueError):
        return False
    settings = manifest.get("settings") if isinstance(manifest, dict) else None
    if not isinstance(settings, dict) or _checked_tables(folder / "tables") is None:
        return False
    if sources is not None and manifest.get("sources") != sources:
        return False
    return (settings.get("fingerprint") == fingerprint(args.runs) and (settings.get("base") is None) == bool(args.no_base)
            and settings.get("study") == study)


def read_tables(folder: Path) -> dict:
    """The tables the manifest lists (a subfolder holds a nested set, such as a study's pair), labels as text."""
    import pandas as pd

    tables: dict = {}
    for name in sorted(_checked_tables(folder) or {}):
        path, parts = folder / name, Path(name).parts
        header = pd.read_csv(path, nrows=0).columns
        table = pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={c: str for c in TEXT_COLUMNS if c in header})
        target = tables
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[Path(parts[-1]).stem] = table
    return tables
