"""Rebuilt ΔWs that cost a dense SVD per layer (a full fine-tune's, a peft type merged through peft), kept once made
while they fit in one memory budget shared by every open run.

Why first come, first kept, and never evicted: a study's tables are computed one table at a time over every cell, so
each state is asked for once per table, in the same order each time. Where more states are asked for than fit,
evicting the oldest (least recently used) would always have dropped the one asked for next and kept none; keeping
the first ones that fit answers that share of every later pass. A state that does not fit is rebuilt on each request,
as before. A run's states are forgotten when the run object is collected.
"""

from __future__ import annotations

import itertools
import weakref

from ..factored import FactoredDelta

__all__ = ["KEPT_DELTA_BYTES", "KeptDeltas", "KEPT", "owner_token"]

KEPT_DELTA_BYTES = 512 << 20
"""The shared budget: all of a small study's dense cells (MiniLM's 12 adapted layers hold ~42 MB of SVD factors a
state), a share of a large one's, never more than this beside the rest of a read."""

Deltas = dict[str, FactoredDelta]


class KeptDeltas:
    """``{(owner, epoch): deltas}`` within ``budget`` bytes of factors (see the module)."""

    def __init__(self, budget: int) -> None:
        self.budget, self.used = budget, 0
        self._items: dict[tuple[int, int], tuple[Deltas, int]] = {}

    def kept(self, owner: int, epoch: int) -> Deltas | None:
        """``owner``'s deltas of ``epoch`` if they were kept."""
        item = self._items.get((owner, epoch))
        return None if item is None else item[0]

    def keep(self, owner: int, epoch: int, deltas: Deltas) -> None:
        """Keep ``deltas`` as ``owner``'s ``epoch`` if they fit in what is left of the budget."""
        size = sum(t.numel() * t.element_size() for delta in deltas.values() for t in (delta.left, delta.core, delta.right))
        if (owner, epoch) not in self._items and self.used + size <= self.budget:
            self._items[(owner, epoch)] = (deltas, size)
            self.used += size

    def forget(self, owner: int) -> None:
        for key in [key for key in self._items if key[0] == owner]:
            self.used -= self._items.pop(key)[1]


KEPT = KeptDeltas(KEPT_DELTA_BYTES)
_owners = itertools.count()


def owner_token(run: object) -> int:
    """A new token under which ``run`` keeps its deltas in :data:`KEPT`, forgotten when ``run`` is collected."""
    token = next(_owners)
    weakref.finalize(run, KEPT.forget, token)
    return token
