"""Reading, checking and saving tensors: safetensors only, with every shape and value checked before use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .errors import InputError
from .io import atomic_write_bytes, parse_json, regular_file

__all__ = ["atomic_save_tensors", "safetensors_bytes", "read_tensors", "read_header", "take_tensor", "check_values", "MAX_DIM", "MAX_FROZEN_ELEMENTS",
           "MAX_ABS_VALUE", "MAX_HEADER_BYTES"]


def atomic_save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
           torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
           **{getattr(torch, n): c for n, c in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")) if hasattr(torch, n)}}


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors file of ``tensors``, byte for byte the same for the same tensors and metadata: tensors in
    name order, metadata keys sorted (the format's own writer orders metadata differently from run to run)."""
    import json
    import struct

    header: dict = {"__metadata__": {k: str(metadata[k]) for k in sorted(metadata)}} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _DTYPES:
            return save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=dict(metadata or {}))
        data = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or raise :class:`InputError` if it is missing, truncated or corrupt.

    Memory stays bounded by the file's size: safetensors checks that every tensor the
    header declares lies inside the file before it allocates anything.
    Float8 tensors are upcast to float32 on reading: every analysis and check works in float32 or wider.
    """
    path = Path(path)
    regular_file(path, "safetensors file")
    try:
        tensors = load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError, OSError, ValueError... on bad bytes
        raise InputError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err
    return {k: v.float() if v.dtype in FLOAT8_DTYPES else v for k, v in tensors.items()}


FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
                      if hasattr(torch, name))
MAX_HEADER_BYTES = 100 << 20
"""Largest safetensors header read to recognise a file (a 405B model's shard headers are a few MB)."""


def read_header(path: str | Path) -> tuple[dict[str, dict], dict[str, str]]:
    """A safetensors file's tensor entries (``{"dtype", "shape"}`` by name) and metadata, from its header
    alone: recognising a file costs one small read, whatever its size."""
    import struct

    path = Path(path)
    regular_file(path, "safetensors file")
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        size = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 2 <= size <= min(MAX_HEADER_BYTES, path.stat().st_size - 8):
            raise InputError(f"{path}: not a safetensors file (its header length {size} does not fit the file)")
        header = parse_json(handle.read(size), f"{path}: not a safetensors file (its header)", "safetensors header")
    if not isinstance(header, dict):
        raise InputError(f"{path}: not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    return {k: v for k, v in header.items() if isinstance(v, dict)}, metadata if isinstance(metadata, dict) else {}


MAX_DIM = 1 << 20
"""Largest d_out or d_in a run may declare (Llama-3-405B's widest matrix is 53,248)."""
MAX_FROZEN_ELEMENTS = 1 << 26
"""Largest number of values in one layer's rebuilt frozen matrices (256 MiB in float32)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def take_tensor(tensors: Mapping[str, torch.Tensor], key: str, shape: tuple[int, ...], path: Path, where: str) -> torch.Tensor:
    """``tensors[key]`` from the file at ``path``, checked: present, of ``shape``, and :func:`check_values`."""
    if key not in tensors:
        raise InputError(f"{path}: missing tensor {key!r}")
    tensor = tensors[key]
    if tuple(tensor.shape) != shape:
        raise InputError(f"{path}: tensor {key!r} has shape {tuple(tensor.shape)}, run.json implies {shape}")
    check_values(tensor, where)
    return tensor


MAX_ABS_VALUE = 1e15
"""Largest magnitude accepted in a stored adapter tensor: far beyond any trained adapter,
and far enough below float64's range that squared norms of products cannot overflow."""


def check_values(tensor: torch.Tensor, where: str) -> None:
    """A tensor read from a file must be real floating point, finite and of plausible magnitude."""
    if not tensor.is_floating_point():
        raise InputError(f"{where}: has dtype {tensor.dtype}; adapter tensors are real floating point")
    if not bool(torch.isfinite(tensor).all()):
        kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
        raise InputError(f"{where}: holds {kind} values")
    if tensor.numel() and float(tensor.abs().max()) > MAX_ABS_VALUE:
        raise InputError(f"{where}: holds values of magnitude above {MAX_ABS_VALUE:g}, which no trained adapter reaches")


# --------------------------------------------------------------------------- locking
