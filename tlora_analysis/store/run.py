"""The run directory: what a recorded run is on disk, written so that nothing is lost.

::

    RUN_DIR/
      run.json                       method, rank, model, task, config, versions, per-layer
                                     shapes/seeds/checksums, and one record per finished epoch
      snapshots/epoch_000.safetensors  trainable tensors of every adapter layer at that epoch
      frozen.safetensors             only if a method's frozen matrices cannot be rebuilt from seeds (LoRA-XS's come from W0)
      resume/epoch_NNN.safetensors   the trainer's state for ``train --resume`` (latest only)

Snapshots hold factors, never dense ΔW (full fine-tuning, whose factor is ΔW itself, aside). Every file is written to a temporary name and
renamed into place, and ``run.json`` lists an epoch only after its snapshot is complete,
so a run killed at any moment leaves every listed epoch readable.

A run directory may come from a stranger, so reading it trusts nothing in it:

- only JSON and safetensors are read (nothing can execute code from a file), and only
  regular files (a FIFO or device would hang);
- every file is where this layout says it is: a path written in run.json is compared with
  the layout, never followed; a symbolic link inside the run is followed only while it
  stays inside the run directory, for reading and for writing;
- every shape, rank and seed is checked against sane limits and against the tensors before
  anything is allocated from it, and JSON files are bounded in size and depth;
- tensors must be real floating point, finite and of plausible magnitude; frozen matrices,
  regenerated or stored, must match their recorded SHA-256.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from .errors import InputError, require
from .factored import FactoredDelta
from .io import atomic_write_json, inside, read_json
from .lock import RunLock
from .methods import method_class, tensor_sha256
from .tensors import MAX_DIM, MAX_FROZEN_ELEMENTS, _is_int, atomic_save_tensors, read_tensors, take_tensor

__all__ = ["RUN_FORMAT", "RUN_FORMAT_VERSION", "HEAD_PREFIX", "LEGACY_METHOD_NAMES", "Run", "RunWriter", "load_run", "read_resume_state", "snapshot_name"]

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


# --------------------------------------------------------------------------- atomic I/O
def _check_layer(layer: Any, method: str, where: str) -> None:
    """A run.json layer record, checked before anything is allocated from it (the method's
    own fields by its class's :meth:`~tlora_analysis.methods.AdapterLayer.check_record`)."""
    if not isinstance(layer, dict):
        raise InputError(f"{where}: should be a JSON object")
    shape = require(layer, "shape", where, list)
    if len(shape) != 2 or not all(_is_int(d) and 1 <= d <= MAX_DIM for d in shape):
        raise InputError(f"{where}: 'shape' should be [d_out, d_in] with whole numbers from 1 to {MAX_DIM}, got {shape!r:.80}")
    rank = require(layer, "rank", where, int)
    if not 1 <= rank <= min(shape):
        raise InputError(f"{where}: 'rank' should be between 1 and min(shape) = {min(shape)}, got {rank!r}")
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


# --------------------------------------------------------------------------- writing
class RunWriter:
    """Creates a run directory and appends epochs to it; used by :class:`~tlora_analysis.recording.DeltaRecorder`."""

    def __init__(self, run_dir: str | Path, header: Mapping[str, Any]) -> None:
        self.path = Path(run_dir)
        self.lock = RunLock.acquire(self.path)
        try:
            for name in (RUN_JSON, "snapshots", RESUME_DIR, FROZEN_FILE, "tensorboard"):
                if (self.path / name).is_symlink():
                    raise InputError(f"{self.path / name}: is a symbolic link; a run writes only inside its own directory")
            json_path = self.path / RUN_JSON
            if json_path.exists():
                self.meta = read_json(json_path, "run.json")
            else:
                self.meta = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **header, "epochs": []}
                atomic_write_json(json_path, self.meta)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Release the run directory's lock (files already written stay); safe to call twice."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

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

    def save_resume_state(self, epoch: int, tensors: Mapping[str, torch.Tensor], step: int) -> None:
        """The trainer's state after ``epoch`` (parameters and optimizer state, whole), for ``train --resume``.
        The previous epoch's file stays: until run.json lists this epoch, resume starts from that one."""
        folder = inside(self.path, self.path / RESUME_DIR, "the resume folder")
        atomic_save_tensors(folder / epoch_file(epoch), tensors, {"epoch": str(epoch), "step": str(step)})
        for old in folder.glob("epoch_*.safetensors"):
            number = old.stem.split("_", 1)[1]
            if number.isdigit() and int(number) < epoch - 1 and not old.is_symlink():
                old.unlink()

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
    trainable tensors and the method's frozen matrices, regenerated from their seeds (or read from
    ``frozen.safetensors``) and
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
            hint = ("; it is a study directory: open it with load_study, or give it to analyze, figures or report"
                    if (self.path / "study.json").is_file() else "")
            raise InputError(f"{self.path}: not a run directory (no {RUN_JSON}){hint}")
        self.meta = read_json(inside(self.path, json_path, RUN_JSON), RUN_JSON)
        where = str(json_path)
        if self.meta.get("format") != RUN_FORMAT:
            raise InputError(f"{where}: 'format' should be {RUN_FORMAT!r}, got {self.meta.get('format')!r}")
        version = self.meta.get("format_version", 1)
        if not _is_int(version) or version > RUN_FORMAT_VERSION:
            raise InputError(f"{where}: format_version {version!r} is newer than this tlora-analysis reads "
                             f"(version {RUN_FORMAT_VERSION}); upgrade tlora-analysis")
        recorded = require(self.meta, "method", where, str)
        self.method: str = LEGACY_METHOD_NAMES.get(recorded, recorded)
        self.layers: dict[str, dict] = require(self.meta, "layers", where, dict)
        for name, layer in self.layers.items():
            _check_layer(layer, self.method, f"{where} layer {name!r}")
        self._records = {}
        for record in require(self.meta, "epochs", where, list):
            epoch = require(record, "epoch", f"{where} epoch record", int) if isinstance(record, dict) else None
            if not _is_int(epoch) or epoch < 0:
                raise InputError(f"{where}: every epoch record needs a whole-number 'epoch' of at least 0, got {record!r:.80}")
            if record.get("snapshot", snapshot_name(epoch)) != snapshot_name(epoch):
                raise InputError(f"{where}: epoch {epoch}'s snapshot must be {snapshot_name(epoch)!r} inside the run, "
                                 f"not {record['snapshot']!r}")
            self._records[epoch] = record
        self.name = self.path.name
        """The source's label in every table; :func:`~tlora_analysis.sources.open_sources` sets a readable, unique one."""
        self._delta_cache: dict[int, dict[str, FactoredDelta]] = {}
        self._last_snapshot: tuple[int | None, dict[str, torch.Tensor]] = (None, {})
        self._checked: dict[int, tuple[int, int, int]] = {}
        """Snapshots whose values were already checked, by (size, mtime, inode): a re-read skips the value scan."""

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.method!r}, epochs={self.epochs})"

    # ---------------------------------------------------------------- properties
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
        path = inside(self.path, self.path / snapshot_name(epoch), "the snapshot")
        tensors = read_tensors(path)
        stat = path.stat()
        checked = self._checked.get(epoch) == (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        for name, layer in self.layers.items():
            for key, shape in self._expected_shapes(layer).items():
                if checked:  # this very file passed every check before: shapes only, not a scan of every value
                    if tuple(tensors.get(f"{name}.{key}", torch.empty(0)).shape) != shape:
                        raise InputError(f"{path}: changed while it was being read (tensor {name}.{key})")
                else:
                    take_tensor(tensors, f"{name}.{key}", shape, path, f"{path}: tensor {name}.{key} (epoch {epoch})")
        self._checked[epoch] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        self._last_snapshot = (epoch, tensors)
        return tensors

    @cached_property
    def _method_class(self):
        return method_class(self.method, str(self.path / RUN_JSON))

    def _expected_shapes(self, layer: dict) -> dict[str, tuple[int, ...]]:
        return self._method_class.snapshot_shapes(layer) if self.layers else {}

    @cached_property
    def _frozen(self) -> dict[str, dict[str, torch.Tensor]]:
        """Each layer's frozen tensors: from frozen.safetensors if the run has one, else rebuilt
        by the method (from seeds); either way checked against the recorded checksums."""
        frozen_file = self.meta.get("frozen_file")
        if frozen_file is not None and frozen_file != FROZEN_FILE:
            raise InputError(f"{self.path / RUN_JSON}: 'frozen_file' must be {FROZEN_FILE!r} inside the run, not {frozen_file!r}")
        stored = read_tensors(inside(self.path, self.path / FROZEN_FILE, FROZEN_FILE)) if frozen_file else None
        out = {}
        for name, layer in self.layers.items():
            shapes = self._method_class.frozen_shapes(layer)
            if stored is not None:
                where = self.path / FROZEN_FILE
                tensors = {key: take_tensor(stored, f"{name}.{key}", shape, where, f"{where}: tensor {name}.{key}")
                           for key, shape in shapes.items()}
                origin = f"{where} does not match"
            else:
                tensors = self._method_class.rebuild_frozen(layer)
                if set(tensors) != set(shapes):
                    raise InputError(f"{self.path / RUN_JSON}: a {self.method!r} run keeps its frozen matrices in {FROZEN_FILE}, "
                                     "which it does not list")
                origin = "regenerated from its seed (a different torch build?) does not match"
            expected = layer.get("frozen_sha256", {})
            for key, tensor in tensors.items():
                if key in expected and tensor_sha256(tensor) != expected[key]:
                    raise InputError(f"{self.path / RUN_JSON}: frozen matrix {key} of module {name} {origin} its recorded "
                                     "checksum; the run cannot be rebuilt")
            out[name] = tensors
        return out

    def _layer_tensors(self, epoch: int, name: str) -> dict[str, torch.Tensor]:
        tensors = self._snapshot(epoch)
        return {key: tensors[f"{name}.{key}"] for key in self._expected_shapes(self.layers[name])}

    def deltas(self, epoch: int) -> dict[str, FactoredDelta]:
        """``{module_name: FactoredDelta}`` of every adapted layer at ``epoch``, in model order."""
        if epoch in self._delta_cache:
            return self._delta_cache[epoch]
        self._snapshot(epoch)
        deltas = {name: self._method_class.delta_from(layer, self._layer_tensors(epoch, name), self._frozen[name])
                  for name, layer in self.layers.items()}
        if self.layers and self._method_class.cache_deltas:  # a dense SVD per layer: once per snapshot
            self._delta_cache[epoch] = deltas
        return deltas

    def scales(self, epoch: int) -> dict[str, float]:
        """Each layer's scale: TLoRA's learned α, LoRA's fixed scaling lora_alpha / r; NaN for methods without one."""
        self._snapshot(epoch)
        return {name: self._method_class.scale_from(layer, self._layer_tensors(epoch, name)) for name, layer in self.layers.items()}

    def trainable(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """The trained matrices per layer by the names the method gives them (``{"B": ...}`` for TLoRA, ``{"A": ..., "B": ...}`` for LoRA)."""
        self._snapshot(epoch)
        return {name: self._method_class.trained_from(self._layer_tensors(epoch, name)) for name in self.layers}

    def snapshot_tensors(self, epoch: int) -> dict[str, torch.Tensor]:
        """The raw, validated snapshot (keys ``<module>.<tensor>``), e.g. to load into a live model."""
        return self._snapshot(epoch)


def read_resume_state(run_dir: str | Path, epoch: int) -> tuple[dict[str, torch.Tensor], int | None]:
    """The trainer's state saved after ``epoch`` and the global step it was saved at (None if unrecorded)."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    path = inside(run_dir, run_dir / RESUME_DIR / epoch_file(epoch), "the resume state")
    tensors = read_tensors(path)
    with safe_open(str(path), "pt") as handle:
        step_text = (handle.metadata() or {}).get("step", "")
    return tensors, int(step_text) if step_text.lstrip("-").isdigit() else None


def load_run(path: str | Path) -> Run:
    """Open a run directory written by ``tlora-analysis train`` or a :class:`DeltaRecorder`."""
    return Run(path)
