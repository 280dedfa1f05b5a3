"""Reusing what ``figures`` wrote: a ``report`` written into the same folder reads its tables and figures
instead of computing them again, when the sources are the very same files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["fingerprint", "manifest_matches", "read_tables"]


def fingerprint(arguments: list[str]) -> str:
    """Name, size and modification time of every file of the sources as given: what a later ``report``
    checks before it reuses the tables ``figures`` wrote from them."""
    digest = hashlib.sha256()
    for argument in arguments:
        path = Path(argument.partition("=")[2] if "=" in argument and not Path(argument).exists() else argument)
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                stat = file.stat()
                digest.update(f"{argument}\0{file.relative_to(path.parent)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def manifest_matches(folder: Path, args, study: dict | None = None) -> bool:
    """Whether ``figures`` wrote ``folder`` from these very sources: the same files (fingerprint), the same
    use of the base model, and for a study the same spec."""
    if not (folder / "figures.json").is_file() or not (folder / "tables").is_dir():
        return False
    settings = json.loads((folder / "figures.json").read_text()).get("settings", {})
    return (settings.get("fingerprint") == fingerprint(args.runs) and (settings.get("base") is None) == bool(args.no_base)
            and settings.get("study") == study)


def read_tables(folder: Path) -> dict:
    """The tables ``figures`` wrote (a subfolder holds a nested set, such as a study's pair)."""
    import pandas as pd

    tables: dict = {p.stem: pd.read_csv(p) for p in sorted(folder.glob("*.csv"))}
    tables.update({p.name: read_tables(p) for p in sorted(folder.iterdir()) if p.is_dir()})
    return tables
