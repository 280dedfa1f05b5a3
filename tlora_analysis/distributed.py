"""One training run over several processes started by ``torchrun`` (or ``accelerate launch``):
PyTorch DDP, or FSDP2 (``fully_shard``) when ``--sharding fsdp`` asks for sharded parameters.

Each global batch of ``batch_size`` examples is split between the processes, every process
scales its mean loss by its share of the batch, and DDP (or FSDP's reduce-scatter) averages
the gradients, so the update equals the single-process one on the same global batch (up to
float rounding and the model's own dropout, whose masks differ). Only global rank 0 writes;
the others wait at a barrier after each snapshot. Under FSDP a process holds only a shard of
each parameter, so everything that reads parameters whole (a snapshot, the resume state, the
forward pass of an evaluation) is done by every process together. Without ``WORLD_SIZE`` > 1
in the environment everything here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .errors import InputError


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one run."""

    rank: int = 0
    world: int = 1
    started_here: bool = False
    sharding: str = "ddp"

    @property
    def writes(self) -> bool:
        """Only global rank 0 logs and writes files."""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """True under FSDP: each process holds a shard of every parameter, so collectives read them whole."""
        return self.world > 1 and self.sharding == "fsdp"

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train with: ``model`` itself in one process, DDP around it, or ``model``
        sharded in place by FSDP2. Build the optimizer after this: FSDP replaces the parameters."""
        if self.world == 1:
            return model
        if self.sharded:
            return shard(model)
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def share(self, order: list[int], batch_size: int, weights: list[int] | None = None) -> list[tuple[list[int], float]]:
        """This process's slice of each global batch of ``order``, with the factor that turns its mean
        loss into its share of the global mean (DDP then averages the gradients over processes).

        ``weights`` are what the loss averages over, per example: one each (the default), or a causal
        LM's predicted tokens, whose count differs between the slices of a batch.
        """
        out = []
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            mine = batch[self.rank::self.world]
            total, local = (sum(weights[i] for i in part) if weights else len(part) for part in (batch, mine))
            out.append((mine, local * self.world / total))
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


def _whole_number(text: str, name: str, low: int) -> int:
    if not text.strip().isdigit() or int(text) < low:
        raise InputError(f"{name}={text!r:.40}: expected a whole number of at least {low}")
    return int(text)


def torchrun_ranks() -> tuple[int, int]:
    """(WORLD_SIZE, RANK) from the environment torchrun sets, checked: (1, 0) outside torchrun."""
    world = _whole_number(os.environ.get("WORLD_SIZE", "1"), "WORLD_SIZE", 1)
    if world == 1:
        return 1, 0
    if "RANK" not in os.environ:
        raise InputError(f"WORLD_SIZE={world} but RANK is not set; start several processes with torchrun, not by hand")
    rank = _whole_number(os.environ["RANK"], "RANK", 0)
    if rank >= world:
        raise InputError(f"RANK={rank} with WORLD_SIZE={world}: a rank must be below the number of processes")
    return world, rank


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
                      "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                      "TORCHELASTIC_MAX_RESTARTS")
"""What torchrun sets for each process; a study's cells do not inherit them (each cell is one run of its own)."""


def start_processes(device: str, batch_size: int, train_examples: int, sharding: str = "ddp") -> Processes:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Inconsistent variables are refused at once (a rank that cannot exist would wait for its peers
    forever); a peer that never comes ends at ``TLORA_ANALYSIS_RENDEZVOUS_TIMEOUT_S`` (default 600 s)."""
    world, rank = torchrun_ranks()
    if world == 1:
        return Processes(sharding=sharding)
    if batch_size % world:
        raise InputError(f"--batch-size {batch_size} must be a multiple of the {world} processes, so each gets an equal share")
    if 0 < train_examples % batch_size < world:
        raise InputError(f"the last batch holds {train_examples % batch_size} examples, fewer than the {world} processes; "
                         "choose --max-train-samples or --batch-size so that every process gets at least one")
    started = not torch.distributed.is_initialized()
    if started:
        timeout = _whole_number(os.environ.get("TLORA_ANALYSIS_RENDEZVOUS_TIMEOUT_S", "600"), "TLORA_ANALYSIS_RENDEZVOUS_TIMEOUT_S", 1)
        try:
            torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                                 timeout=datetime.timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:  # torch's DistStoreError and friends
            raise InputError(f"rank {rank} of {world}: the other processes did not join within {timeout} s "
                             f"(TLORA_ANALYSIS_RENDEZVOUS_TIMEOUT_S; MASTER_ADDR/MASTER_PORT from torchrun): {str(err).splitlines()[0][:200]}") from err
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return Processes(torch.distributed.get_rank(), torch.distributed.get_world_size(), started, sharding)


def shard(model: nn.Module) -> nn.Module:
    """FSDP2 in place: one unit per transformer block (the classes transformers lists in the model's
    ``_no_split_modules``, as accelerate's transformer-based wrap policy does), and the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in list(model.modules())[1:]:
        if type(module).__name__ in blocks:
            fully_shard(module)
    return fully_shard(model)


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Inside, every parameter of ``model`` is whole on every process, so the model's adapter
    layers can be read as in one process. Under FSDP this gathers each unit's shards (every
    process must enter, as with FSDP1's ``summon_full_params``) and frees them on leaving;
    otherwise it does nothing."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for handle in [unit.unshard(async_op=True) for unit in units]:
        if handle is not None:
            handle.wait()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()


def whole_tensor(tensor: Tensor) -> Tensor:
    """A tensor's full value on every process: an FSDP shard (a DTensor) is gathered, a plain tensor returned.
    A collective under FSDP: every process must call it, for the same tensors in the same order."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def layout_like(value: Tensor, param: Tensor) -> Tensor:
    """``value`` (a full tensor) laid out as ``param`` is: sharded the same way under FSDP."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor) and value.shape == param.shape:
        return distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    return value.to(param.device)


def squared_grad_norms(groups: list[list[Tensor]]) -> Tensor:
    """Each group's squared gradient norm, over the whole gradient the optimizer is about to apply.

    Call it after DDP has averaged the gradients (after ``backward``): tensor hooks see only a
    process's local gradient. Under FSDP each process holds a shard of each gradient; the
    squares are summed over processes (every process must call it).
    """
    from torch.distributed.tensor import DTensor

    params = [(index, p.grad) for index, group in enumerate(groups) for p in group if p.grad is not None]
    device = params[0][1].device if params else "cpu"
    out = torch.zeros(len(groups), dtype=torch.float64, device=device)
    if not params:
        return out
    sharded = isinstance(params[0][1], DTensor)
    grads = [g.to_local() if sharded else g for _, g in params]
    norms = torch._foreach_norm([g.detach() for g in grads])
    out.index_add_(0, torch.tensor([i for i, _ in params], device=device), torch.stack(norms).double().square())
    if sharded:
        torch.distributed.all_reduce(out)
    return out
