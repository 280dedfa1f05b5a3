"""One training run over several processes started by ``torchrun`` (or ``accelerate launch``): PyTorch DDP.

Each global batch of ``batch_size`` examples is split between the processes, every process
scales its mean loss by its share of the batch, and DDP averages the gradients, so the
update equals the single-process one on the same global batch (up to float rounding and
the model's own dropout, whose masks differ). Only global rank 0 evaluates and writes; the
others wait at a barrier after each snapshot. Without ``WORLD_SIZE`` > 1 in the environment
everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .errors import InputError


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run."""

    rank: int = 0
    world: int = 1
    started_here: bool = False

    @property
    def writes(self) -> bool:
        """Only global rank 0 evaluates, logs and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train with: DDP around ``model`` when there are several processes."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def share(self, order: list[int], batch_size: int) -> list[tuple[list[int], float]]:
        """This process's slice of each global batch of ``order``, with the factor that turns its mean
        loss into its share of the global mean (DDP then averages the gradients over processes)."""
        out = []
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            mine = batch[self.rank::self.world]
            out.append((mine, len(mine) * self.world / len(batch)))
        return out

    def mean(self, value: float) -> float:
        """The mean of ``value`` over processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(tensor)
        return float(tensor) / self.world

    def close(self) -> None:
        if self.started_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def processes(device: str, batch_size: int, train_examples: int) -> Processes:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes()
    if batch_size % world:
        raise InputError(f"--batch-size {batch_size} must be a multiple of the {world} processes, so each gets an equal share")
    if 0 < train_examples % batch_size < world:
        raise InputError(f"the last batch holds {train_examples % batch_size} examples, fewer than the {world} processes; "
                         "choose --max-train-samples or --batch-size so that every process gets at least one")
    started = not torch.distributed.is_initialized()
    if started:
        torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Processes(torch.distributed.get_rank(), torch.distributed.get_world_size(), started)
