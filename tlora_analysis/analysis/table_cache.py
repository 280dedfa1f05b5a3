"""Per-cell analysis tables of a study, stored beside it and reused only when every input is the same.

Every per-run table (norms, spectra, effective rank, scales, weight distributions, amplification, intruder
dimensions, ...) is a pure function of one cell's files, the base's W0 and the analysis code. A study read
again (``figures`` after ``figures``, ``report`` after ``figures``, a study with one new cell) should cost
nothing for the cells it has seen. So each table is stored under ``STUDY/cache/tables/`` in a file named
by the SHA-256 of:

- the analysis's name and its arguments (epochs, thresholds, ...), and the name the run's rows carry (its label);
- the bytes of the cell's ``run.json`` and every snapshot file (one byte changed: another key), and for a peft
  model's run the path, size and modification time of its base model's files; a table of several
  cells (a pair's cosines, a cell's row of the ladder against its LoRA partner, the controls over every pair) is
  keyed by all of them, in order, so a new or changed cell recomputes only the tables it enters;
- the content digest of every W0 the analysis was given (another base: another key);
- the bytes of this package's source files (any code change: every key changes).

A table is read back only if its sidecar's SHA-256 of the table file matches the file: a damaged or
edited entry is recomputed and replaced, never trusted. Entries are written to a temporary file and moved
into place (table first, sidecar last), so a killed command leaves no entry that reads as whole, and two
commands on one study write the same bytes under the same name. The folder can be deleted at any time;
a study on a read-only disk is simply read without it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

__all__ = ["TableCache", "CACHE_FOLDER", "cache_for", "cached", "shared_cache", "code_version", "file_digest"]

CACHE_FOLDER = Path("cache") / "tables"
"""Where a study keeps its cells' tables, relative to the study folder."""
CHUNK = 1 << 20


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 of every source file of this package: a table made by other code is never reused."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(f"{path.relative_to(root)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read a chunk at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _native(run):
    """The recorded run itself (ours or a peft model's), under whatever label an analysis gave it (a label only
    renames its rows), or None."""
    from ..sources.labels import Labelled
    from ..store.run import RecordedRun

    run = run.source if isinstance(run, Labelled) else run
    return run if isinstance(run, RecordedRun) else None


def run_digest(run) -> str | None:
    """SHA-256 of a native run's ``run.json`` and snapshot files (kept on the run: read once per command);
    None for any other source, whose tables are then computed as before."""
    run = _native(run)
    if run is None:
        return None
    if getattr(run, "_content_digest", None) is None:
        base = run.base_files() if hasattr(run, "base_files") else []  # a peft run's ΔW may depend on its base
        if base is None:
            return None
        files = [run.path / "run.json", *sorted((run.path / "snapshots").glob("*"))]
        digest = hashlib.sha256(json.dumps(base).encode())
        for path in files:
            if path.is_file():
                digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
        run._content_digest = digest.hexdigest()
    return run._content_digest


def weights_identity(weights: Mapping) -> str:
    """The content digests of every W0 in a base-weights mapping, as one digest (computed once per mapping)."""
    from ..base_weights import content_digest

    known = getattr(weights, "_identity", None)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for name in sorted(weights):
        value = weights.digest(name) if hasattr(weights, "digest") else content_digest(weights[name])
        digest.update(f"{name}\0{value}\n".encode())
    try:
        weights._identity = digest.hexdigest()
    except AttributeError:  # a plain dict: computed again next time
        return digest.hexdigest()
    return weights._identity


def _holds_weights(value: Mapping) -> bool:
    """Whether a mapping argument is a base's W0 (keyed by its content) rather than settings (keyed by their text)."""
    import torch

    return hasattr(value, "digest") or isinstance(next(iter(value.values()), None), torch.Tensor)


def _argument_text(value) -> str:
    if isinstance(value, Mapping) and value and _holds_weights(value):
        return f"W0:{weights_identity(value)}"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k!r}:{_argument_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple, range)):
        return "[" + ",".join(_argument_text(v) for v in value) + "]"
    return repr(value)


def study_folder(run) -> Path | None:
    """The study a native run is a cell of (``STUDY/runs/CELL``), or None."""
    run = _native(run)
    if run is None:
        return None
    folder = Path(run.path).resolve().parent.parent
    return folder if (folder / "study.json").is_file() and Path(run.path).resolve().parent.name == "runs" else None


@functools.lru_cache(maxsize=64)
def _cache_of(folder: Path) -> TableCache:
    return TableCache(folder / CACHE_FOLDER)


def cache_for(run) -> TableCache | None:
    """The stored tables of the study ``run`` belongs to (one object per study folder), or None: a run outside a
    study, an adapter or any other source is computed as before."""
    folder = study_folder(run)
    return _cache_of(folder) if folder is not None else None


def shared_cache(runs) -> TableCache | None:
    """The stored tables of the one study every run in ``runs`` is a cell of, or None (an adapter, a path, two studies)."""
    caches = {}
    for run in runs:
        cache = cache_for(run)
        caches[id(cache)] = cache
    return next(iter(caches.values()), None) if len(caches) == 1 else None


def cached(analysis: str, runs: tuple, args: tuple, kwargs: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """``compute()``'s table of several runs, stored and reused while none of them changed, where all are cells of
    one study; computed as before otherwise."""
    cache = shared_cache(runs)
    return compute() if cache is None else cache.table(analysis, tuple(runs), args, kwargs, compute)


class TableCache:
    """A study's stored per-cell tables (see the module's description)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.hits = self.misses = 0

    def key(self, analysis: str, runs, args: tuple, kwargs: dict) -> str | None:
        """The entry's name for one run or a tuple of runs (see the module), or None where one is no study's cell."""
        runs = runs if isinstance(runs, tuple) else (runs,)
        contents = [run_digest(run) for run in runs]
        if None in contents:
            return None
        arguments = [_argument_text(a) for a in args] + [f"{k}={_argument_text(v)}" for k, v in sorted(kwargs.items())]
        if any(" at 0x" in text for text in arguments):  # an object known only by its address (a generator): not keyed
            return None
        names = [run.name for run in runs]  # rows carry the runs' labels
        text = json.dumps([code_version(), analysis, contents, names, arguments])
        return hashlib.sha256(text.encode()).hexdigest()

    def stored(self, analysis: str, run, args: tuple, kwargs: dict) -> bool:
        """Whether a whole entry for these inputs is stored (its sidecar written last; its digest is checked on reading)."""
        key = self.key(analysis, run, args, kwargs)
        return key is not None and (self.folder / analysis / f"{key}.json").is_file()

    def table(self, analysis: str, runs, args: tuple, kwargs: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        stored = self.read(analysis, runs, args, kwargs)
        if stored is not None:
            return stored
        table = compute()
        self.write(analysis, runs, args, kwargs, table)
        return table

    def read(self, analysis: str, runs, args: tuple, kwargs: dict) -> pd.DataFrame | None:
        """The stored table for these inputs, or None (counted as a miss): for an analysis that computes the tables
        it lacks together (the controls share each run's singular vectors among its pairs) and then writes each."""
        key = self.key(analysis, runs, args, kwargs)
        stored = self._read(self.folder / analysis / f"{key}.parquet") if key is not None else None
        if stored is None:
            self.misses += 1
        else:
            self.hits += 1
        return stored

    def write(self, analysis: str, runs, args: tuple, kwargs: dict, table: pd.DataFrame) -> None:
        key = self.key(analysis, runs, args, kwargs)
        if key is not None:
            self._write(self.folder / analysis / f"{key}.parquet", table)

    @staticmethod
    def _read(path: Path) -> pd.DataFrame | None:
        sidecar = path.with_suffix(".json")
        try:
            expected = json.loads(sidecar.read_text()).get("sha256")
            if expected != file_digest(path):
                return None
            return pd.read_parquet(path)
        except (OSError, ValueError, AttributeError, ImportError):  # missing, damaged or foreign: recomputed
            return None

    @staticmethod
    def _write(path: Path, table: pd.DataFrame) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
            os.close(handle)
            try:
                table.to_parquet(temporary, index=False)
                digest = file_digest(Path(temporary))
                os.replace(temporary, path)
            finally:
                if os.path.exists(temporary):
                    os.unlink(temporary)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".part")
            with os.fdopen(handle, "w") as out:
                json.dump({"sha256": digest}, out)
            os.replace(temporary, path.with_suffix(".json"))
        except (OSError, ValueError, TypeError, ImportError):  # an unwritable folder or a table parquet cannot hold: not stored
            return
