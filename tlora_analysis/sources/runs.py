"""This toolkit's own formats: run folders (and exports, which are one-epoch runs), one snapshot file, and study folders."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import InputError
from ..store import RUN_FORMAT, RecordedRun, load_run, snapshot_name
from .formats import Sniff, SourceFormat, register_format

__all__ = ["SingleEpochRun", "open_snapshot"]


class SingleEpochRun:
    """A run limited to one of its epochs (what a single snapshot file stands for)."""

    def __init__(self, run: RecordedRun, epoch: int) -> None:
        run.record(epoch)  # raises if the epoch is not finished
        self._run, self._epoch = run, epoch
        self.name, self.method, self.meta, self.path = run.name, run.method, run.meta, run.path

    @property
    def epochs(self) -> list[int]:
        return [self._epoch]

    @property
    def metrics(self) -> dict:
        return {self._epoch: self._run.metrics[self._epoch]}

    @property
    def rank(self) -> int:
        return self._run.rank

    def __getattr__(self, attribute):  # deltas, scales, trainable, layers ... of the underlying run
        return getattr(self._run, attribute)


def open_snapshot(path: Path, base: str | None = None) -> SingleEpochRun:
    """``RUN/snapshots/epoch_NNN.safetensors`` as that epoch of its run, and only that epoch."""
    match = re.fullmatch(r"epoch_(\d+)", path.stem)
    if match is None or path.parent.name != "snapshots":
        raise InputError(f"{path}: a snapshot of a tlora-analysis run, read inside its run as RUN/snapshots/epoch_NNN.safetensors "
                         "beside RUN/run.json (which gives its layers, scales and seeds)")
    epoch = int(match[1])
    run_dir = path.parent.parent
    if not (run_dir / "run.json").exists():
        raise InputError(f"{path}: a snapshot is read with its run's run.json (for scales and seeds), not found at {run_dir / 'run.json'}")
    if path.resolve() != (run_dir / snapshot_name(epoch)).resolve():
        raise InputError(f"{path}: epoch {epoch}'s snapshot is {run_dir / snapshot_name(epoch)}")
    return SingleEpochRun(load_run(run_dir, base), epoch)


def _is_snapshot(sniff: Sniff) -> bool:
    in_place = sniff.path.parent.name == "snapshots" and re.fullmatch(r"epoch_\d+", sniff.path.stem) is not None
    return in_place or sniff.metadata.get("format") == RUN_FORMAT


def _refuse_study(path: Path, base: str | None = None):
    raise InputError(f"{path}: a study directory, not one source; give it alone to analyze, figures or report, or open it "
                     "with load_study (its cells are under runs/)")


register_format(SourceFormat("run folder", "run.json + snapshots/ (train, DeltaRecorder, an export)", "folder",
                             lambda s: "run.json" in s.names, lambda p, base: load_run(p, base), order=10))
register_format(SourceFormat("study folder", "study.json + runs/ (a study): read whole by analyze, figures and report", "folder",
                             lambda s: "study.json" in s.names, _refuse_study, order=10))
register_format(SourceFormat("snapshot file", "RUN/snapshots/epoch_NNN.safetensors, read as that epoch of RUN", "file",
                             _is_snapshot, open_snapshot, order=10))
