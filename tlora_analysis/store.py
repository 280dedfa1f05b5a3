"""The run directory: what a recorded run is on disk, written so that nothing is lost.

::

    RUN_DIR/
      run.json                       method, rank, model, task, config, versions, per-layer
                                     shapes/seeds/checksums, and one record per finished epoch
      snapshots/epoch_000.safetensors  trainable tensors of every adapter layer at that epoch
      frozen.safetensors             only if TLoRA's frozen matrices cannot be rebuilt from seeds
      resume/epoch_NNN.safetensors   the trainer's state for ``train --resume`` (latest only)

Snapshots hold factors, never dense ΔW. Every file is written to a temporary name and
renamed into place, and ``run.json`` lists an epoch only after its snapshot is complete,
so a run killed at any moment leaves every listed epoch readable. Only JSON and
safetensors are ever read: nothing here can execute code from a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load_file, save

from .adapters import tensor_sha256, tlora_frozen_matrices
from .errors import InputError
from .factored import FactoredDelta

__all__ = [
    "RUN_FORMAT",
    "RUN_FORMAT_VERSION",
    "HEAD_PREFIX",
    "Run",
    "RunWriter",
    "load_run",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_tensors",
    "read_json",
    "read_tensors",
    "snapshot_name",
]

RUN_FORMAT = "tlora-analysis-run"
RUN_FORMAT_VERSION = 1
RUN_JSON = "run.json"
FROZEN_FILE = "frozen.safetensors"
HEAD_PREFIX = "trainable."  # snapshot keys of trainable parameters outside the adapters


def snapshot_name(epoch: int) -> str:
    return f"snapshots/epoch_{epoch:03d}.safetensors"


# --------------------------------------------------------------------------- atomic I/O
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, save(contiguous, metadata=dict(metadata or {})))


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """Parse a JSON object, or raise :class:`InputError` naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, or raise :class:`InputError` if it is missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such safetensors file")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError, OSError, ValueError... on bad bytes
        raise InputError(f"{path}: not a readable safetensors file ({type(err).__name__}: {err})") from err


def require(mapping: Mapping, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``mapping[key]``, or an :class:`InputError` that names where it was missing or mistyped."""
    if key not in mapping:
        raise InputError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if kind is not None and not isinstance(value, kind):
        raise InputError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value


def check_finite(tensor: torch.Tensor, where: str) -> None:
    if not bool(torch.isfinite(tensor).all()):
        kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
        raise InputError(f"{where}: holds {kind} values")


# --------------------------------------------------------------------------- writing
class RunWriter:
    """Creates a run directory and appends epochs to it; used by :class:`~tlora_analysis.recording.DeltaRecorder`."""

    def __init__(self, run_dir: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(run_dir)
        json_path = self.path / RUN_JSON
        if json_path.exists():
            self.meta = read_json(json_path, "run.json")
        else:
            self.meta = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **header, "epochs": []}
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_json(json_path, self.meta)

    @property
    def finished_epochs(self) -> list[int]:
        return [record["epoch"] for record in self.meta["epochs"]]

    def update(self, **fields: Any) -> None:
        self.meta.update(fields)
        atomic_write_json(self.path / RUN_JSON, self.meta)

    def save_frozen(self, tensors: Mapping[str, torch.Tensor]) -> None:
        atomic_save_tensors(self.path / FROZEN_FILE, tensors, {"format": RUN_FORMAT})
        self.update(frozen_file=FROZEN_FILE)

    def write_epoch(self, epoch: int, tensors: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> None:
        """Write the snapshot first, then list it in run.json: a crash in between loses nothing listed."""
        name = snapshot_name(epoch)
        atomic_save_tensors(self.path / name, tensors, {"format": RUN_FORMAT, "epoch": str(epoch)})
        epochs = [r for r in self.meta["epochs"] if r["epoch"] != epoch]
        epochs.append({"epoch": epoch, "snapshot": name, **record})
        self.update(epochs=sorted(epochs, key=lambda r: r["epoch"]))

    def update_epoch(self, epoch: int, **fields: Any) -> None:
        """Add fields (e.g. evaluation metrics that arrive after the snapshot) to an epoch's record."""
        for record in self.meta["epochs"]:
            if record["epoch"] == epoch:
                for key, value in fields.items():
                    record[key] = {**record.get(key, {}), **value} if isinstance(value, dict) else value
        self.update()


# --------------------------------------------------------------------------- reading
class Run:
    """A recorded run, read back. Needs neither the base model nor the training code.

    ``deltas(epoch)`` rebuilds each layer's :class:`FactoredDelta` from the stored
    trainable tensors and TLoRA's frozen matrices, regenerated from their seeds and
    verified against the recorded checksums.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such run directory")
        if not self.path.is_dir():
            raise InputError(f"{self.path}: a run is a directory holding run.json")
        json_path = self.path / RUN_JSON
        if not json_path.exists():
            raise InputError(f"{self.path}: not a run directory (no {RUN_JSON})")
        self.meta = read_json(json_path, RUN_JSON)
        where = str(json_path)
        if self.meta.get("format") != RUN_FORMAT:
            raise InputError(f"{where}: 'format' should be {RUN_FORMAT!r}, got {self.meta.get('format')!r}")
        self.method: str = require(self.meta, "method", where, str)
        self.layers: dict[str, dict] = require(self.meta, "layers", where, dict)
        for name, layer in self.layers.items():
            for key in ("shape", "rank", "seed"):
                require(layer, key, f"{where} layer {name!r}")
        self._records = {int(r["epoch"]): r for r in require(self.meta, "epochs", where, list)}
        self._last_snapshot: tuple[int | None, dict[str, torch.Tensor]] = (None, {})

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.method!r}, epochs={self.epochs})"

    # ---------------------------------------------------------------- properties
    @property
    def name(self) -> str:
        return self.meta.get("name") or self.path.name

    @property
    def rank(self) -> int:
        return int(self.meta.get("rank", 0))

    @property
    def epochs(self) -> list[int]:
        """Finished epochs, in order (0 is the state before training)."""
        return sorted(self._records)

    @property
    def metrics(self) -> dict[int, dict[str, float]]:
        """``{epoch: {metric: value}}`` as recorded after each epoch."""
        return {epoch: dict(self._records[epoch].get("metrics", {})) for epoch in self.epochs}

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def record(self, epoch: int) -> dict:
        self._check_epoch(epoch)
        return self._records[epoch]

    # ---------------------------------------------------------------- tensors
    def _check_epoch(self, epoch: int) -> None:
        if epoch not in self._records:
            raise InputError(f"{self.path}: epoch {epoch} is not a finished epoch of this run (finished: {self.epochs or 'none'})")

    def _snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        """The validated tensors of one epoch; the last one read is kept, since analyses ask
        for an epoch's deltas, scales and trainable matrices one after another."""
        if self._last_snapshot[0] == epoch:
            return self._last_snapshot[1]
        self._check_epoch(epoch)
        path = self.path / self._records[epoch].get("snapshot", snapshot_name(epoch))
        tensors = read_tensors(path)
        for name, layer in self.layers.items():
            for key, shape in self._expected_shapes(layer).items():
                full = f"{name}.{key}"
                if full not in tensors:
                    raise InputError(f"{path}: missing tensor {full!r}")
                if tuple(tensors[full].shape) != shape:
                    raise InputError(f"{path}: tensor {full!r} has shape {tuple(tensors[full].shape)}, run.json implies {shape}")
                check_finite(tensors[full], f"{path}: tensor {full!r} (module {name}, epoch {epoch})")
        self._last_snapshot = (epoch, tensors)
        return tensors

    def _expected_shapes(self, layer: dict) -> dict[str, tuple[int, ...]]:
        d_out, d_in = layer["shape"]
        r = layer["rank"]
        if self.method == "lora":
            return {"lora_A": (r, d_in), "lora_B": (d_out, r)}
        if self.method == "tlora":
            return {"tlora_B": (r, r), "tlora_alpha": ()}
        return {}

    @cached_property
    def _frozen(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """TLoRA's (A, C) per layer: from frozen.safetensors if the run has one, else from seeds."""
        if self.method != "tlora":
            return {}
        stored = read_tensors(self.path / self.meta["frozen_file"]) if self.meta.get("frozen_file") else None
        out = {}
        for name, layer in self.layers.items():
            d_out, d_in = layer["shape"]
            if stored is not None:
                a, c = stored[f"{name}.tlora_A"], stored[f"{name}.tlora_C"]
            else:
                a, c = tlora_frozen_matrices(int(layer["seed"]), d_out, d_in, int(layer["rank"]))
                expected = layer.get("frozen_sha256", {})
                for key, tensor in (("tlora_A", a), ("tlora_C", c)):
                    if key in expected and tensor_sha256(tensor) != expected[key]:
                        raise InputError(
                            f"{self.path / RUN_JSON}: frozen matrix {key} of module {name} does not match its recorded "
                            "checksum when regenerated from its seed (a different torch build?); the run cannot be rebuilt"
                        )
            out[name] = (a, c)
        return out

    def deltas(self, epoch: int) -> dict[str, FactoredDelta]:
        """``{module_name: FactoredDelta}`` of every adapted layer at ``epoch``, in model order."""
        tensors = self._snapshot(epoch)
        out = {}
        for name, layer in self.layers.items():
            if self.method == "lora":
                r = int(layer["rank"])
                core = torch.eye(r) * float(layer["scaling"])
                out[name] = FactoredDelta(tensors[f"{name}.lora_B"], core, tensors[f"{name}.lora_A"])
            elif self.method == "tlora":
                a, c = self._frozen[name]
                out[name] = FactoredDelta(a, tensors[f"{name}.tlora_alpha"] * tensors[f"{name}.tlora_B"], c)
        return out

    def scales(self, epoch: int) -> dict[str, float]:
        """TLoRA's learned α per layer (LoRA: its fixed scaling lora_alpha / r)."""
        if self.method == "lora":
            self._check_epoch(epoch)
            return {name: float(layer["scaling"]) for name, layer in self.layers.items()}
        tensors = self._snapshot(epoch)
        return {name: float(tensors[f"{name}.tlora_alpha"]) for name in self.layers}

    def trainable(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """The trained matrices per layer: ``{"B": ...}`` for TLoRA, ``{"A": ..., "B": ...}`` for LoRA."""
        tensors = self._snapshot(epoch)
        if self.method == "lora":
            return {n: {"A": tensors[f"{n}.lora_A"], "B": tensors[f"{n}.lora_B"]} for n in self.layers}
        return {n: {"B": tensors[f"{n}.tlora_B"]} for n in self.layers}

    def snapshot_tensors(self, epoch: int) -> dict[str, torch.Tensor]:
        """The raw, validated snapshot (keys ``<module>.<tensor>``), e.g. to load into a live model."""
        return self._snapshot(epoch)


def load_run(path: str | Path) -> Run:
    """Open a run directory written by ``tlora-analysis train`` or a :class:`DeltaRecorder`."""
    return Run(path)
