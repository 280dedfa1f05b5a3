"""One state of a saved update, read: its layers, their ΔW, scales and trained matrices, and what was not read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from ..factored import FactoredDelta

__all__ = ["Reading", "layer_record"]


def layer_record(delta_shape: tuple[int, int], rank: int, form: str = "factored", **extra) -> dict:
    """A layer's entry in a source's ``layers``: its (d_out, d_in), the nominal rank of its update and
    whether ΔW is held ``factored`` or ``dense``."""
    return {"shape": [int(delta_shape[0]), int(delta_shape[1])], "rank": int(rank), "form": form, **extra}


@dataclass
class Reading:
    """What a reader makes of one state.

    ``compute`` builds the deltas on first use (a dense reading costs a merge and an SVD per layer);
    ``used`` names the tensor keys the reading consumed, so that a caller can say which were not read;
    ``notices`` are one-line statements of what the reading left out or assumed.
    """

    layers: dict[str, dict]
    compute: Callable[[], dict[str, FactoredDelta]]
    scales: dict[str, float] = field(default_factory=dict)
    trainable: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    notices: list[str] = field(default_factory=list)
    frozen: set[str] = field(default_factory=set)
    """The used keys that hold frozen numbers (VeRA's and RandLoRA's random projections), counted apart."""
    sizes: dict[str, int] = field(default_factory=dict)
    """Numbers per used key, for :attr:`update_counts` (the reader sets it from the tensors it read)."""
    named: set[str] = field(default_factory=set)
    """Keys not read that one of the reader's own notices already names (LoRA's bias updates, conv kernels), left out of the general one."""
    _deltas: dict[str, FactoredDelta] | None = None

    @property
    def update_counts(self) -> tuple[int, int]:
        """(trained, frozen random) numbers that define the updates, counted from the file's tensors."""
        trained = sum(n for k, n in self.sizes.items() if k in self.used and k not in self.frozen)
        return trained, sum(n for k, n in self.sizes.items() if k in self.frozen)

    def deltas(self) -> dict[str, FactoredDelta]:
        if self._deltas is None:
            self._deltas = self.compute()
        return self._deltas
