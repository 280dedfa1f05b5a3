"""Writing a run directory so that nothing is lost.

Every file is written to a temporary name and renamed into place, and ``run.json`` lists an epoch only
after its snapshot is complete, so a run killed at any moment leaves every listed epoch readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..io import atomic_write_json, inside, read_json
from ..lock import RunLock
from ..tensors import atomic_save_tensors
from .layout import FROZEN_FILE, RESUME_DIR, RUN_FORMAT, RUN_FORMAT_VERSION, RUN_JSON, epoch_file, snapshot_name

__all__ = ["RunWriter"]


class RunWriter:
    """Creates a run directory and appends epochs to it; used by :class:`~tlora_analysis.recording.DeltaRecorder`."""

    def __init__(self, run_dir: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(run_dir)
        self.lock = RunLock.acquire(self.path)
        try:
            for name in (RUN_JSON, "snapshots", RESUME_DIR, FROZEN_FILE, "tensorboard"):
                if (self.path / name).is_symlink():
                    raise InputError(f"{self.path / name}: is a symbolic link; a run writes only inside its own directory")
            json_path = self.path / RUN_JSON
            if json_path.exists():
                self.meta = read_json(json_path, "run.json")
            else:
                self.meta = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **header, "epochs": []}
                atomic_write_json(json_path, self.meta)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the run directory's lock (files already written stay); safe to call twice."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def finished_epochs(self) -> list[int]:
        return [record["epoch"] for record in self.meta["epochs"]]

    def update(self, **fields: Any) -> None:
        self.meta.update(fields)
        atomic_write_json(self.path / RUN_JSON, self.meta)

    def save_frozen(self, tensors: Mapping[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.path / FROZEN_FILE, tensors, {"format": RUN_FORMAT})
        self.update(frozen_file=FROZEN_FILE)

    def write_epoch(self, epoch: int, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
        """Write the snapshot first, then list it in run.json: a crash in between loses nothing listed."""
        name = snapshot_name(epoch)
        atomic_save_tensors(self.path / name, tensors, {"format": RUN_FORMAT, "epoch": str(epoch)})
        epochs = [r for r in self.meta["epochs"] if r["epoch"] != epoch]
        epochs.append({"epoch": epoch, "snapshot": name, **record})
        self.update(epochs=sorted(epochs, key=lambda r: r["epoch"]))

    def save_resume_state(self, epoch: int, tensors: Mapping[str, torch.Tensor], step: int) -> None:
        """The trainer's state after ``epoch`` (parameters and optimizer state, whole), for ``train --resume``.
        The previous epoch's file stays: until run.json lists this epoch, resume starts from that one."""
        folder = inside(self.path, self.path / RESUME_DIR, "the resume folder")
        atomic_save_tensors(folder / epoch_file(epoch), tensors, {"epoch": str(epoch), "step": str(step)})
        for old in folder.glob("epoch_*.safetensors"):
            number = old.stem.split("_", 1)[1]
            if number.isdigit() and int(number) < epoch - 1 and not old.is_symlink():
                old.unlink()

    def update_epoch(self, epoch: int, **fields: Any) -> None:
        """Add fields (e.g. evaluation metrics that arrive after the snapshot) to an epoch's record."""
        for record in self.meta["epochs"]:
            if record["epoch"] == epoch:
                for key, value in fields.items():
                    record[key] = {**record.get(key, {}), **value} if isinstance(value, dict) else value
        self.update()
