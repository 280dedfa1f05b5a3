"""The run directory: what a recorded run is on disk (:mod:`.layout`), written so that nothing is lost
(:mod:`.writer`), and read back trusting nothing in it (:mod:`.run`, :mod:`.peft_run`)."""

from __future__ import annotations

from pathlib import Path

from .layout import (
    FROZEN_FILE,
    HEAD_PREFIX,
    LEGACY_METHOD_NAMES,
    RESUME_DIR,
    RUN_FORMAT,
    RUN_FORMAT_VERSION,
    RUN_JSON,
    epoch_file,
    read_resume_state,
    snapshot_name,
)
from .peft_run import PeftRun
from .run import RecordedRun, Run
from .writer import RunWriter

__all__ = ["RUN_FORMAT", "RUN_FORMAT_VERSION", "RUN_JSON", "FROZEN_FILE", "RESUME_DIR", "HEAD_PREFIX", "LEGACY_METHOD_NAMES", "Run",
           "PeftRun", "RecordedRun", "RunWriter", "load_run", "read_resume_state", "snapshot_name", "epoch_file"]


def load_run(path: str | Path, base: str | None = None) -> RecordedRun:
    """Open a run directory written by ``tlora-analysis train`` or a :class:`~tlora_analysis.recording.DeltaRecorder`:
    a :class:`PeftRun` where the recorded model was a peft model, a :class:`Run` otherwise. ``base`` gives a peft
    run's base model where run.json names one that may not be opened (a Hub name is never fetched unasked)."""
    return PeftRun(path, base) if "peft_config" in RecordedRun(path).meta else Run(path)
