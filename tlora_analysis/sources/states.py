"""What a source that holds one saved state (an adapter, an export, a fine-tune) shares with every other."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError
from ..states import FINAL_STATE, state_name  # noqa: F401 - re-exported

__all__ = ["SingleState", "ReadingState", "FINAL_STATE", "state_name"]

class SingleState:
    """A source that holds one state, not a training history: its one state is :data:`FINAL_STATE`.

    Subclasses set ``path``, ``name``, ``method``, ``meta``, ``layers``, ``rank`` and implement ``deltas``;
    ``notices`` name what the reading left out, one line each.
    """

    path: Path
    notices: list[str] = []

    @property
    def epochs(self) -> list[int]:
        return [FINAL_STATE]

    @property
    def metrics(self) -> dict:
        return {FINAL_STATE: {}}

    def _check(self, epoch: int) -> None:
        if epoch != FINAL_STATE:
            raise InputError(f"{self.path}: holds one saved state (its final one), not epoch {epoch}")

    def scales(self, epoch: int = FINAL_STATE) -> dict[str, float]:
        self._check(epoch)
        return {}

    def trainable(self, epoch: int = FINAL_STATE) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return {}


class ReadingState(SingleState):
    """One state read into a :class:`~tlora_analysis.peft_types.reading.Reading` (peft adapters, single files)."""

    def __init__(self, path: Path, method: str, reading, meta: dict, rank: int = 0) -> None:
        self.path, self.name, self.method, self.meta, self.rank = Path(path), Path(path).name, method, meta, rank
        self._reading = reading
        self.layers = reading.layers
        self.notices = list(reading.notices)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, method={self.method!r}, layers={len(self.layers)})"

    @property
    def update_counts(self) -> tuple[int, int]:
        """(trained, frozen random) numbers that define the updates, counted from the file's tensors."""
        return self._reading.update_counts

    def deltas(self, epoch: int = FINAL_STATE):
        self._check(epoch)
        return self._reading.deltas()

    def scales(self, epoch: int = FINAL_STATE) -> dict[str, float]:
        self._check(epoch)
        return dict(self._reading.scales)

    def trainable(self, epoch: int = FINAL_STATE) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return dict(self._reading.trainable)
