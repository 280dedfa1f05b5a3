"""What a source's states are called: epochs of a trajectory (0 is before training), or the one saved state of an
adapter or a fine-tune, whose epoch is unknown."""

from __future__ import annotations

__all__ = ["FINAL_STATE", "state_name"]

FINAL_STATE = -1
"""The state key of a source that holds one saved state (an adapter, a fine-tune): not epoch 0, which means
"before training" (the zero update), but the state it was saved in, its epoch unknown; shown as "final"."""


def state_name(epoch: int) -> str:
    """How a state is named to a person: "final" for a one-state source, "epoch N" otherwise."""
    return "final" if int(epoch) == FINAL_STATE else f"epoch {int(epoch)}"
