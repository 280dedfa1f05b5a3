"""W0 read one tensor at a time from a directory of (sharded) safetensors, with W0's SVD cached on disk.

A 7B–70B base model does not fit the analysis machine's memory as a whole, and the W0
analyses (amplification, intruder dimensions) need one layer's weight at a time.
:class:`SafetensorsWeights` is a read-only mapping from module names to W0 that opens the
shard holding each tensor (``safe_open``) when it is asked for and keeps nothing.

Intruder dimensions need W0's full SVD, an O(d³) computation per layer (seconds at 4096²).
:meth:`SafetensorsWeights.svd` stores each layer's singular vectors and values under
``$TLORA_ANALYSIS_CACHE`` (default ``~/.cache/tlora-analysis``), keyed by the shard file's
path, size and modification time and the tensor's name, so a second analysis of the same
base reads them instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from .errors import InputError
from .io import MAX_JSON_BYTES, inside, read_json
from .tensors import atomic_save_tensors

INDEX = "model.safetensors.index.json"
CONV1D_MODEL_TYPES = {"gpt2"}  # checkpoints whose linear weights are stored transposed (Conv1D)
CONV1D_NAMES = ("c_attn", "c_proj", "c_fc")


def cache_dir() -> Path:
    return Path(os.environ.get("TLORA_ANALYSIS_CACHE") or Path.home() / ".cache" / "tlora-analysis")


def is_sharded(path: str | Path) -> bool:
    """A local directory holding a safetensors index (``model.safetensors.index.json``)."""
    return (Path(path) / INDEX).is_file()


class SafetensorsWeights(Mapping):
    """``{module name: W0}`` read lazily from a directory of safetensors shards and its index.

    Module names are matched to checkpoint keys by their longest common suffix
    (``base_model.model.model.layers.0.self_attn.q_proj`` finds
    ``model.layers.0.self_attn.q_proj.weight``). GPT-2 checkpoints store Conv1D weights
    transposed; they are returned in ``nn.Linear`` orientation.
    """

    def __init__(self, directory: str | Path, names: list[str]) -> None:
        from .io import refuse_pickled_files

        self.directory = Path(directory)
        refuse_pickled_files(self.directory, only_if_no=".safetensors")
        index = read_json(self.directory / INDEX, "safetensors index")
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{self.directory / INDEX}: 'weight_map' should map tensor names to shard file names")
        config_path = self.directory / "config.json"
        config = read_json(config_path, "config.json") if config_path.is_file() and config_path.stat().st_size < MAX_JSON_BYTES else {}
        self._transposed = config.get("model_type") in CONV1D_MODEL_TYPES
        self._keys: dict[str, tuple[str, str]] = {}
        for name in names:
            parts = name.split(".")
            key = next((k for k in (".".join(parts[i:]) + ".weight" for i in range(len(parts))) if k in weight_map), None)
            if key is None:
                raise InputError(f"{self.directory}: no tensor for module {name!r} in {INDEX} (is it the adapter's base model?)")
            self._keys[name] = (key, weight_map[key])

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def _shard(self, name: str) -> tuple[str, Path]:
        key, shard = self._keys[name]
        return key, inside(self.directory, self.directory / shard, "the safetensors shard")

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        if name not in self._keys:
            raise KeyError(name)
        key, path = self._shard(name)
        try:
            with safe_open(str(path), "pt") as handle:
                tensor = handle.get_tensor(key)
        except (SafetensorError, OSError) as err:
            raise InputError(f"{path}: cannot read tensor {key!r} ({err})") from err
        if tensor.ndim != 2 or not tensor.is_floating_point():
            raise InputError(f"{path}: tensor {key!r} is {tensor.dtype} {tuple(tensor.shape)}, not a 2-D floating-point weight")
        conv1d = self._transposed and key.rsplit(".", 2)[-2] in CONV1D_NAMES
        return tensor.T.contiguous() if conv1d else tensor

    def svd(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """W0's left singular vectors U and singular values S (float64), from the disk cache when present."""
        from safetensors.torch import load_file

        key, path = self._shard(name)
        stat = path.stat()
        digest = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, key]).encode()).hexdigest()[:32]
        cached = cache_dir() / "w0_svd" / f"{digest}.safetensors"
        if cached.is_file():
            try:
                tensors = load_file(str(cached))
                return tensors["U"].double(), tensors["S"].double()
            except Exception:  # a damaged cache entry is recomputed, never trusted
                cached.unlink(missing_ok=True)
        u, s = _svd(self[name])
        atomic_save_tensors(cached, {"U": u.float(), "S": s})
        return u, s


def _svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return u, s


def w0_svd(base_weights: Mapping[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """U and S of W0 for one module: cached on disk for a :class:`SafetensorsWeights`, computed otherwise."""
    if isinstance(base_weights, SafetensorsWeights):
        return base_weights.svd(name)
    return _svd(base_weights[name])


def weight_shapes(folder: str | Path) -> dict[str, tuple[int, int]] | None:
    """(d_out, d_in) of every 2-D ``*.weight`` in a local model folder's safetensors, read from the
    headers alone, keyed by module name with every leading prefix dropped as well
    (``bert.encoder.layer.0.attention.self.query`` and ``encoder.layer.0...`` both appear), so
    that peft's module names find them. None if the folder holds no safetensors."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if is_sharded(folder):
        weight_map = read_json(folder / INDEX, "safetensors index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise InputError(f"{folder / INDEX}: 'weight_map' should map tensor names to shard file names")
        files = sorted({inside(folder, folder / f, "the safetensors shard") for f in weight_map.values()})
    elif (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    else:
        return None
    config_path = folder / "config.json"
    config = read_json(config_path, "config.json") if config_path.is_file() else {}
    transposed = config.get("model_type") in CONV1D_MODEL_TYPES
    shapes: dict[str, tuple[int, int]] = {}
    for path in files:
        try:
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    if key.endswith(".weight") and len(shape) == 2:
                        parts = key[: -len(".weight")].split(".")
                        flip = transposed and parts[-1] in CONV1D_NAMES
                        for i in range(len(parts)):
                            shapes.setdefault(".".join(parts[i:]), (shape[1], shape[0]) if flip else (shape[0], shape[1]))
        except (SafetensorError, OSError) as err:
            raise InputError(f"{path}: cannot read its safetensors header ({err})") from err
    return shapes
