"""W0 read one tensor at a time from a directory of (sharded) safetensors, with W0's SVD cached on disk.

A 7B–70B base model does not fit the analysis machine's memory as a whole, and the W0
analyses (amplification, intruder dimensions) need one layer's weight at a time.
:class:`SafetensorsWeights` is a read-only mapping from module names to W0 that opens the
shard holding each tensor (``safe_open``) when it is asked for and keeps at most :data:`KEPT_BYTES` of them.

Intruder dimensions need W0's full SVD, an O(d³) computation per layer (seconds at 4096²).
:meth:`SafetensorsWeights.svd` stores each layer's singular vectors and values under
``$TLORA_ANALYSIS_CACHE`` (default ``~/.cache/tlora-analysis``), keyed by a digest of the
tensor's bytes, shape and dtype, so a second analysis of the same weights reads them instead
of recomputing, and a shard replaced by other weights (even with the same size and mtime)
never meets a stale entry. An entry is used only after O(d²) checks against W0 itself (shape,
dtype, finite, sorted non-negative S, Σσ² = ‖W0‖_F², ‖W0ᵀu_i‖ = σ_i); one that fails is
recomputed, and a cache that cannot be written is skipped: it is only an optimisation.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import torch

from .errors import InputError
from .io import MAX_JSON_BYTES, inside, read_json, regular_file
from .tensors import atomic_save_tensors

INDEX = "model.safetensors.index.json"
CONV1D_MODEL_TYPES = {"gpt2"}  # checkpoints whose linear weights are stored transposed (Conv1D)
CONV1D_NAMES = ("c_attn", "c_proj", "c_fc")


def cache_dir() -> Path:
    return Path(os.environ.get("TLORA_ANALYSIS_CACHE") or Path.home() / ".cache" / "tlora-analysis")


def has_safetensors(path: str | Path) -> bool:
    """A local directory holding a model's safetensors: one ``model.safetensors`` or a sharded index."""
    return is_sharded(path) or (Path(path) / "model.safetensors").is_file()


def is_sharded(path: str | Path) -> bool:
    """A local directory holding a safetensors index (``model.safetensors.index.json``)."""
    return (Path(path) / INDEX).is_file()


def _weight_map(directory: Path) -> dict[str, str]:
    """Tensor name -> file: the index of a sharded folder, or every key of a single ``model.safetensors``."""
    if not is_sharded(directory):
        from .tensors import read_header

        single = directory / "model.safetensors"
        if not single.is_file():
            raise InputError(f"{directory}: no model.safetensors (or sharded model.safetensors.index.json)")
        return dict.fromkeys(read_header(single)[0], single.name)
    weight_map = read_json(directory / INDEX, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{directory / INDEX}: 'weight_map' should map tensor names to shard file names")
    return weight_map


def match_key(name: str, keys: Collection[str], where: str, suffix: str = ".weight") -> str | None:
    """The key among ``keys`` that holds module ``name``'s weight, or None.

    An adapter names a module as the model it was made on does, and a checkpoint as the class it was saved
    from: ``base_model.model.bert.encoder.layer.0.attention.self.query`` (a classifier's adapter) finds
    ``encoder.layer.0.attention.self.query.weight`` (a bare encoder's file) by the name's longest suffix, and
    ``encoder.layer.0.attention.self.query`` (a bare encoder's adapter, the sentence-transformers way) finds
    ``bert.encoder.layer.0.attention.self.query.weight`` (a classifier's file) as the one key ending in it.
    Two keys ending in the name are refused rather than one picked."""
    parts = name.split(".")
    key = next((k for k in (".".join(parts[i:]) + suffix for i in range(len(parts))) if k in keys), None)
    if key is not None:
        return key
    ending = f".{name}{suffix}"
    found = sorted(k for k in keys if k.endswith(ending))
    if len(found) > 1:
        raise InputError(f"{where}: module {name!r} could be {found[0]!r} or {found[1]!r} ({len(found)} keys end in its name); "
                         "name the base whose module names the adapter uses")
    return found[0] if found else None


class SafetensorsWeights(Mapping):
    """``{module name: W0}`` read lazily from a directory of safetensors shards and its index (or one ``model.safetensors``).

    Module names are matched to checkpoint keys by :func:`match_key` (``base_model.model.model.layers.0.self_attn.q_proj``
    finds ``model.layers.0.self_attn.q_proj.weight``; a bare encoder's ``encoder.layer.0.attention.self.query`` finds a
    classifier's ``bert.encoder.layer.0.attention.self.query.weight``). GPT-2 checkpoints store Conv1D weights
    transposed; they are returned in ``nn.Linear`` orientation.
    """

    def __init__(self, directory: str | Path, names: list[str], shapes: Mapping[str, tuple[int, int]] | None = None) -> None:
        """``shapes``: the (d_out, d_in) each module's W0 must have (the adapter's), checked from the
        shard's header before a tensor is read."""
        from .io import refuse_pickled_files

        self.directory, self._expected = Path(directory), dict(shapes or {})
        self._kept = _Kept(KEPT_BYTES)
        refuse_pickled_files(self.directory, only_if_no=".safetensors")
        weight_map = _weight_map(self.directory)
        config_path = self.directory / "config.json"
        config = read_json(config_path, "config.json") if config_path.is_file() and config_path.stat().st_size < MAX_JSON_BYTES else {}
        self._transposed = config.get("model_type") in CONV1D_MODEL_TYPES
        self._keys: dict[str, tuple[str, str]] = {}
        for name in names:
            key = match_key(name, weight_map, f"{self.directory}'s safetensors")
            if key is None:
                raise InputError(f"{self.directory}: no tensor for module {name!r} in its safetensors (is it the adapter's base model?)")
            self._keys[name] = (key, weight_map[key])
        for shard in sorted({file for _, file in self._keys.values()}):  # a FIFO or device would hang a read: refused at once
            regular_file(inside(self.directory, self.directory / shard, "the safetensors shard"), "safetensors shard")

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the tensor
        return name in self._keys

    def __getstate__(self) -> dict:
        """Sent to a cell worker (:mod:`~tlora_analysis.analysis.cell_workers`) as names and files, without the
        tensors kept here: the worker reads what it needs itself."""
        return {**self.__dict__, "_kept": _Kept(KEPT_BYTES)}

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def _shard(self, name: str) -> tuple[str, Path]:
        key, shard = self._keys[name]
        return key, inside(self.directory, self.directory / shard, "the safetensors shard")

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._keys:
            raise KeyError(name)
        return self._kept.get(("w0", name), lambda: self._read(name))

    def _read(self, name: str) -> torch.Tensor:
        from safetensors import SafetensorError, safe_open

        key, path = self._shard(name)
        conv1d = self._transposed and key.rsplit(".", 2)[-2] in CONV1D_NAMES
        try:
            with safe_open(str(path), "pt") as handle:
                header = handle.get_slice(key)
                shape, dtype = tuple(header.get_shape()), header.get_dtype()
                if len(shape) != 2 or dtype not in FLOAT_DTYPES:
                    raise InputError(f"{path}: tensor {key!r} is {dtype} {shape}, not a 2-D floating-point weight")
                expected = self._expected.get(name)
                if expected is not None and (shape[::-1] if conv1d else shape) != tuple(expected):
                    raise InputError(f"{path}: tensor {key!r} has shape {shape}, the adapter's module {name!r} {tuple(expected)} "
                                     "(is it the adapter's base model?)")
                tensor = handle.get_tensor(key).clone()  # its own memory: a view would hold the whole file mapped while kept
        except (SafetensorError, OSError, RuntimeError) as err:  # RuntimeError: safetensors cannot map the file
            raise InputError(f"{path}: cannot read tensor {key!r} ({err})") from err
        if not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{path}: tensor {key!r} holds NaN or infinite values")
        return tensor.T.contiguous() if conv1d else tensor

    def svd(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """W0's left singular vectors U and singular values S (float64), from the disk cache when an
        entry for these exact weights is there and passes the checks against them."""
        return self._kept.get(("svd", name), lambda: self._svd_from_disk(name))

    def digest(self, name: str) -> str:
        """:func:`content_digest` of one W0, computed once: the key of its SVD on disk and of tables made with it."""
        return self._kept.get(("digest", name), lambda: content_digest(self[name]))

    def _svd_from_disk(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self[name]
        cached = cache_dir() / "w0_svd" / f"{self.digest(name)}.safetensors"
        entry = _read_entry(cached, weight)
        if entry is not None:
            return entry
        u, s = _svd(weight)
        try:
            atomic_save_tensors(cached, {"U": u.float(), "S": s})
        except OSError:  # an unwritable cache: compute without it
            pass
        return u, s


KEPT_BYTES = 1 << 30
"""Memory for W0s and their SVDs kept once read: a small base (all of MiniLM's adapted layers) is read from disk
once per command, while a 70B base still streams, the least recently used layer leaving first."""


class _Kept:
    """A least-recently-used store of tensors (or tuples of them, or strings) bounded by their bytes."""

    def __init__(self, budget: int) -> None:
        from collections import OrderedDict

        self.budget, self.used, self._items = budget, 0, OrderedDict()

    def get(self, key, make):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key][0]
        value = make()
        size = sum(t.numel() * t.element_size() for t in (value if isinstance(value, tuple) else (value,)) if isinstance(t, torch.Tensor))
        if size <= self.budget:
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.budget:
                self.used -= self._items.popitem(last=False)[1][1]
        return value


FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
"""safetensors header dtypes of a weight the analyses accept."""


def content_digest(tensor: torch.Tensor) -> str:
    """A digest of a tensor's dtype, shape and bytes: the W0-SVD cache key."""
    digest = hashlib.sha256(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:40]


def _read_entry(path: Path, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A cache entry's (U, S) if it is readable and consistent with ``weight``; None otherwise."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path)) if path.is_file() else {}
    except Exception:  # unreadable or damaged: recomputed, never trusted
        return None
    u, s = tensors.get("U"), tensors.get("S")
    k = min(weight.shape)
    if (u is None or s is None or not u.is_floating_point() or not s.is_floating_point() or tuple(u.shape) != (weight.shape[0], k)
            or tuple(s.shape) != (k,) or not bool(torch.isfinite(u).all() and torch.isfinite(s).all())):
        return None
    u, s, w = u.to(torch.float64, copy=True), s.to(torch.float64, copy=True), weight.double()  # copies: no view keeps the file mapped
    if bool((s < 0).any()) or bool((s[1:] > s[:-1] * (1 + 1e-6) + 1e-12).any()):
        return None
    tolerance = 1e-3 * float(s[0]) + 1e-12
    if abs(float(s.pow(2).sum()) - float(w.pow(2).sum())) > 1e-3 * float(w.pow(2).sum()) + 1e-12:
        return None
    probes = sorted({0, k // 2, k - 1})
    if any(abs(float((w.T @ u[:, i]).norm()) - float(s[i])) > tolerance for i in probes):
        return None
    return u, s


def _svd(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u, s, _ = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return u, s


class LoadedWeights(dict):
    """``{module name: W0}`` of a model loaded whole: each module's SVD is computed on first use and kept,
    so that every run and pair of a study shares it (U is W0's size: memory at most doubles)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._svds: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def svd(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in self._svds:
            self._svds[name] = _svd(self[name])
        return self._svds[name]


def w0_svd(base_weights: Mapping[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """U and S of W0 for one module: cached on disk for a :class:`SafetensorsWeights`, kept in memory for
    :class:`LoadedWeights`, computed afresh for any other mapping."""
    if isinstance(base_weights, (SafetensorsWeights, LoadedWeights)):
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
        for file in files:
            regular_file(file, "safetensors shard")
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
