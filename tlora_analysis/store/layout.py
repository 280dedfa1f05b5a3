"""The run directory's layout: its file names, and the checks of what run.json says before anything is read.

::

    RUN_DIR/
      run.json                       method, rank, model, task, config, versions, per-layer
                                     shapes/seeds/checksums, and one record per finished epoch
      snapshots/epoch_000.safetensors  the trainable tensors at that epoch (an adapter's factors, or a
                                     peft model's adapter state, keyed as peft saves it)
      frozen.safetensors             only if a method's frozen matrices cannot be rebuilt from seeds (LoRA-XS's come from W0)
      resume/epoch_NNN.safetensors   the trainer's state for ``train --resume`` (latest only)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, require
from ..io import inside
from ..methods import method_class
from ..tensors import MAX_DIM, MAX_FROZEN_ELEMENTS, _is_int, read_tensors

__all__ = ["RUN_FORMAT", "RUN_FORMAT_VERSION", "RUN_JSON", "FROZEN_FILE", "RESUME_DIR", "LEGACY_METHOD_NAMES", "HEAD_PREFIX",
           "epoch_file", "snapshot_name", "check_layer", "check_shape_and_rank", "read_resume_state"]

RUN_FORMAT = "tlora-analysis-run"
RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
FROZEN_FILE = "frozen.safetensors"
RESUME_DIR = "resume"
LEGACY_METHOD_NAMES = {"none": "head"}
"""Method names earlier versions recorded: head-only runs before 0.3 said "none"."""
HEAD_PREFIX = "trainable."  # snapshot keys of trainable parameters outside the adapters


def epoch_file(epoch: int) -> str:
    return f"epoch_{epoch:03d}.safetensors"


def snapshot_name(epoch: int) -> str:
    return f"snapshots/{epoch_file(epoch)}"


def check_shape_and_rank(layer: Any, where: str) -> None:
    """A layer record's ``shape`` [d_out, d_in] (whole numbers from 1 to MAX_DIM) and ``rank`` (1 to min(shape))."""
    if not isinstance(layer, dict):
        raise InputError(f"{where}: should be a JSON object")
    shape = require(layer, "shape", where, list)
    if len(shape) != 2 or not all(_is_int(d) and 1 <= d <= MAX_DIM for d in shape):
        raise InputError(f"{where}: 'shape' should be [d_out, d_in] with whole numbers from 1 to {MAX_DIM}, got {shape!r:.80}")
    rank = require(layer, "rank", where, int)
    if isinstance(rank, bool) or not 1 <= rank <= min(shape):
        raise InputError(f"{where}: 'rank' should be between 1 and min(shape) = {min(shape)}, got {rank!r}")


def check_layer(layer: Any, method: str, where: str) -> None:
    """A run.json layer record of one of this toolkit's methods, checked before anything is allocated from it
    (the method's own fields by its class's :meth:`~tlora_analysis.methods.AdapterLayer.check_record`)."""
    check_shape_and_rank(layer, where)
    shape, rank = layer["shape"], layer["rank"]
    seed = require(layer, "seed", where, int)
    if not 0 <= seed < 2**63:
        raise InputError(f"{where}: 'seed' should be a whole number from 0 to 2^63 - 1, got {seed}")
    layer_class = method_class(method, where)
    frozen = sum(math.prod(shape) for shape in layer_class.frozen_shapes(layer).values())
    if frozen > MAX_FROZEN_ELEMENTS:
        raise InputError(f"{where}: frozen matrices of rank {rank} for shape {shape} would hold {frozen:,} numbers, "
                         f"more than the limit of {MAX_FROZEN_ELEMENTS:,}")
    checksums = layer.get("frozen_sha256", {})
    if not isinstance(checksums, dict) or not all(isinstance(v, str) for v in checksums.values()):
        raise InputError(f"{where}: 'frozen_sha256' should map matrix names to SHA-256 strings")
    layer_class.check_record(layer, where)


def read_resume_state(run_dir: str | Path, epoch: int) -> tuple[dict[str, torch.Tensor], int | None]:
    """The trainer's state saved after ``epoch`` and the global step it was saved at (None if unrecorded)."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    path = inside(run_dir, run_dir / RESUME_DIR / epoch_file(epoch), "the resume state")
    tensors = read_tensors(path)
    with safe_open(str(path), "pt") as handle:
        step_text = (handle.metadata() or {}).get("step", "")
    return tensors, int(step_text) if step_text.lstrip("-").isdigit() else None
