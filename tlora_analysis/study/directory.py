"""A study directory: ``study.json`` (the spec and each cell's status) over ordinary run directories
``DIR/runs/<cell>``. Reading one needs neither the training loop nor the executors."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import InputError
from .spec import MAX_CELLS, parse_spec

__all__ = ["Study", "load_study", "STUDY_FORMAT", "STUDY_FORMAT_VERSION", "STUDY_JSON"]

STUDY_FORMAT = "tlora-analysis-study"
STUDY_FORMAT_VERSION = 1
STUDY_JSON = "study.json"


class Study:
    """A study directory: its spec, its cells and their runs.

    ``runs`` is a DataFrame with one row per cell: its swept settings, status, final
    metric and parameter counts. :meth:`run` opens one cell's :class:`~tlora_analysis.store.Run`.
    """

    def __init__(self, path: str | Path) -> None:
        from ..io import read_json

        self.path = Path(path)
        meta = read_json(self.path / STUDY_JSON, "study.json")
        where = str(self.path / STUDY_JSON)
        if meta.get("format") != STUDY_FORMAT:
            raise InputError(f"{where}: 'format' should be {STUDY_FORMAT!r}, got {meta.get('format')!r}")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > STUDY_FORMAT_VERSION:
            raise InputError(f"{where}: format_version {version!r} is not one this tlora-analysis reads (up to {STUDY_FORMAT_VERSION})")
        if not isinstance(meta.get("spec"), dict):
            raise InputError(f"{where}: 'spec' should be the study's spec as a JSON object, got {type(meta.get('spec')).__name__}")
        cells = meta.get("cells", {})
        if not isinstance(cells, dict) or not all(isinstance(c, dict) for c in cells.values()):
            raise InputError(f"{where}: 'cells' should map cell names to JSON objects")
        self.meta = meta
        self.spec = parse_spec(meta["spec"], where, max_cells=max(MAX_CELLS, len(cells)))
        self.cells: dict[str, dict[str, Any]] = self.spec.cells(where)
        self._runs: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}, {len(self.cells)} cells)"

    @property
    def swept(self) -> list[str]:
        """The settings that vary between cells (always including ``method`` and, if swept, ``seed``)."""
        return ["method", *self.spec.named]

    def settings(self, name: str) -> dict[str, Any]:
        """A cell's value of every swept setting, e.g. ``{"method": "tlora", "lr": 0.03, "seed": 1}``; a
        per-method setting that this cell's method does not sweep shows the value it trained with."""
        if name not in self.cells:
            raise InputError(f"{self.path}: no cell named {name!r} (cells: {', '.join(self.cells)})")
        config = asdict(self.spec.config(self.cells[name]))
        return {key: config[key] for key in self.swept}

    def run_dir(self, name: str) -> Path:
        return self.path / "runs" / name

    def status(self, name: str) -> str:
        """finished, damaged (finished, but a reader refuses a file of it: retrained), interrupted (resumable),
        failed (see study.json for the log) or pending."""
        from ..io import read_json

        run_json = self.run_dir(name) / "run.json"
        recorded = self.meta.get("cells", {}).get(name, {})
        if run_json.is_file():
            if read_json(run_json, "run.json").get("status") == "finished":
                return "finished" if readable(self.run_dir(name)) else "damaged"
            return "failed" if recorded.get("status") == "failed" else "interrupted"
        return "failed" if recorded.get("status") == "failed" else "pending"

    def run(self, name: str):
        """The :class:`~tlora_analysis.store.Run` of one cell (loaded once)."""
        from ..store import load_run

        if name not in self._runs:
            self.settings(name)
            if self.run_dir(name).is_symlink():
                raise InputError(f"{self.run_dir(name)}: is a symbolic link; a study's cells are read only inside the study")
            self._runs[name] = load_run(self.run_dir(name))
        return self._runs[name]

    def finished(self, adapted_only: bool = False) -> list[tuple[Any, dict[str, Any]]]:
        """``(run, settings)`` for every finished cell, in grid order; ``adapted_only`` skips head-only runs."""
        out = []
        for name in self.cells:
            if self.status(name) != "finished":
                continue
            run = self.run(name)
            if adapted_only and not run.layers:
                continue
            out.append((run, self.settings(name)))
        return out

    @property
    def runs(self):
        """One row per cell: swept settings, status, final metric, parameter counts and path."""
        import pandas as pd

        rows = []
        for name in self.cells:
            status = self.status(name)
            row = {"run": name, **self.settings(name), "status": status, "path": str(self.run_dir(name))}
            if status == "finished":
                run = self.run(name)
                metric = run.meta.get("main_metric")
                row.update(metric=metric, final_metric=run.metrics[run.epochs[-1]].get(metric), epochs=run.epochs[-1])
                counts = run.meta.get("parameter_counts", {})
                row.update(adapter_params=counts.get("adapter_trainable"), head_params=counts.get("other_trainable"),
                           frozen_random_params=counts.get("frozen_random"),
                           trainable_params=(counts.get("adapter_trainable") or 0) + (counts.get("other_trainable") or 0))
            elif status == "failed":
                row["log"] = str(self.path / self.meta.get("cells", {}).get(name, {}).get("log", ""))
            rows.append(row)
        return pd.DataFrame(rows)


def load_study(path: str | Path) -> Study:
    """Open a study directory written by :func:`run_study`."""
    path = Path(path)
    if not (path / STUDY_JSON).is_file():
        raise InputError(f"{path}: not a study directory (no {STUDY_JSON})")
    return Study(path)


def readable(run_dir: Path) -> bool:
    """Whether every file of a finished run passes the checks a reader applies (run.json, every snapshot)."""
    from ..errors import InputError
    from ..store import load_run

    try:
        run = load_run(run_dir)
        for epoch in run.epochs:
            run.snapshot_tensors(epoch)
    except (InputError, OSError):
        return False
    return True
