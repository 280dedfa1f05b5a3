"""Reading a run directory back: a recorded run needs neither the base model nor the training code.

A run directory may come from a stranger, so reading it trusts nothing in it:

- only JSON and safetensors are read (nothing can execute code from a file), and only
  regular files (a FIFO or device would hang);
- every file is where the layout says it is: a path written in run.json is compared with
  the layout, never followed; a symbolic link inside the run is followed only while it
  stays inside the run directory;
- every shape, rank and seed is checked against sane limits and against the tensors before
  anything is allocated from it, and JSON files are bounded in size and depth;
- tensors must be real floating point, finite and of plausible magnitude; frozen matrices,
  regenerated or stored, must match their recorded SHA-256.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import torch

from ..errors import InputError, require
from ..factored import FactoredDelta
from ..io import inside, read_json
from ..methods import method_class, tensor_sha256
from ..tensors import _is_int, read_tensors, take_tensor
from .kept import KEPT, owner_token
from .layout import FROZEN_FILE, LEGACY_METHOD_NAMES, RUN_FORMAT, RUN_FORMAT_VERSION, RUN_JSON, check_layer, snapshot_name

__all__ = ["RecordedRun", "Run"]


KEPT_RUNS = 16
"""How many runs keep their last snapshot read at once, across every open run: a study of 130 cells read in turn
then holds 16 cells' tensors, not 130. Rebuilt dense updates are bounded apart, by bytes (:mod:`.kept`)."""

_recent: OrderedDict[int, weakref.ref] = OrderedDict()


def _keep_recent(run: RecordedRun) -> None:
    """Mark ``run`` as just read and release the caches of runs read longest ago beyond :data:`KEPT_RUNS`."""
    _recent.pop(id(run), None)
    _recent[id(run)] = weakref.ref(run)
    while len(_recent) > KEPT_RUNS:
        old = _recent.popitem(last=False)[1]()
        if old is not None:
            old.release()


class RecordedRun:
    """What every recorded run shares: run.json checked, its finished epochs and metrics, and its snapshots read.

    Subclasses say how a snapshot becomes each layer's ΔW: :class:`Run` through this toolkit's method
    classes, :class:`~tlora_analysis.store.peft_run.PeftRun` through peft's adapter types.
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
        self.where = str(json_path)
        if self.meta.get("format") != RUN_FORMAT:
            raise InputError(f"{self.where}: 'format' should be {RUN_FORMAT!r}, got {self.meta.get('format')!r}")
        version = self.meta.get("format_version", 1)
        if not _is_int(version) or version > RUN_FORMAT_VERSION:
            raise InputError(f"{self.where}: format_version {version!r} is newer than this tlora-analysis reads "
                             f"(version {RUN_FORMAT_VERSION}); upgrade tlora-analysis")
        recorded = require(self.meta, "method", self.where, str)
        self.method: str = LEGACY_METHOD_NAMES.get(recorded, recorded)
        self.layers: dict[str, dict] = require(self.meta, "layers", self.where, dict)
        self._records = {}
        for record in require(self.meta, "epochs", self.where, list):
            epoch = require(record, "epoch", f"{self.where} epoch record", int) if isinstance(record, dict) else None
            if not _is_int(epoch) or epoch < 0:
                raise InputError(f"{self.where}: every epoch record needs a whole-number 'epoch' of at least 0, got {record!r:.80}")
            if record.get("snapshot", snapshot_name(epoch)) != snapshot_name(epoch):
                raise InputError(f"{self.where}: epoch {epoch}'s snapshot must be {snapshot_name(epoch)!r} inside the run, "
                                 f"not {record['snapshot']!r}")
            self._records[epoch] = record
        _check_fields(self.meta, self._records, self.where)
        self.name = self.path.name
        """The source's label in every table; :func:`~tlora_analysis.sources.open_sources` sets a readable, unique one."""
        self._last_snapshot: tuple[int | None, dict[str, torch.Tensor]] = (None, {})
        self._checked: dict[int, tuple[int, int, int]] = {}
        """Snapshots whose values were already checked, by (size, mtime, inode): a re-read skips the value scan."""
        self._kept_as = owner_token(self)
        """Whose rebuilt dense updates these are in :mod:`.kept`'s shared store."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, method={self.method!r}, epochs={self.epochs})"

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

    def _check_epoch(self, epoch: int) -> None:
        if epoch not in self._records:
            raise InputError(f"{self.path}: epoch {epoch} is not a finished epoch of this run (finished: {self.epochs or 'none'})")

    def _snapshot(self, epoch: int) -> dict[str, torch.Tensor]:
        """The validated tensors of one epoch; the last one read is kept, since analyses ask
        for an epoch's deltas, scales and trainable matrices one after another."""
        _keep_recent(self)
        if self._last_snapshot[0] == epoch:
            return self._last_snapshot[1]
        self._check_epoch(epoch)
        path = inside(self.path, self.path / snapshot_name(epoch), "the snapshot")
        tensors = read_tensors(path)
        stat = path.stat()
        self._check_snapshot(tensors, path, epoch, self._checked.get(epoch) == (stat.st_size, stat.st_mtime_ns, stat.st_ino))
        self._checked[epoch] = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        self._last_snapshot = (epoch, tensors)
        return tensors

    def release(self) -> None:
        """Drop the last snapshot read (kept for speed); the run reads again on demand. A study with many cells calls
        it on the cells it is not looking at, so that memory stays bounded (rebuilt dense updates: :mod:`.kept`)."""
        self._last_snapshot = (None, {})

    def _check_snapshot(self, tensors: dict[str, torch.Tensor], path: Path, epoch: int, checked: bool) -> None:  # pragma: no cover
        raise NotImplementedError

    def snapshot_tensors(self, epoch: int) -> dict[str, torch.Tensor]:
        """The raw, validated snapshot (keys ``<module>.<tensor>``), e.g. to load into a live model."""
        return self._snapshot(epoch)


class Run(RecordedRun):
    """A recorded run, read back. Needs neither the base model nor the training code.

    ``deltas(epoch)`` rebuilds each layer's :class:`FactoredDelta` from the stored
    trainable tensors and the method's frozen matrices, regenerated from their seeds (or read from
    ``frozen.safetensors``) and
    verified against the recorded checksums.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        for name, layer in self.layers.items():
            check_layer(layer, self.method, f"{self.where} layer {name!r}")
        self.notices: list[str] = []  # a run of ours is read whole; the attribute every source has (UpdateSource)

    def _check_snapshot(self, tensors: dict[str, torch.Tensor], path: Path, epoch: int, checked: bool) -> None:
        for name, layer in self.layers.items():
            for key, shape in self._expected_shapes(layer).items():
                if checked:  # this very file passed every check before: shapes only, not a scan of every value
                    if tuple(tensors.get(f"{name}.{key}", torch.empty(0)).shape) != shape:
                        raise InputError(f"{path}: changed while it was being read (tensor {name}.{key})")
                else:
                    take_tensor(tensors, f"{name}.{key}", shape, path, f"{path}: tensor {name}.{key} (epoch {epoch})")

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
        kept = KEPT.kept(self._kept_as, epoch)
        if kept is not None:
            return kept
        self._snapshot(epoch)
        deltas = {name: self._method_class.delta_from(layer, self._layer_tensors(epoch, name), self._frozen[name])
                  for name, layer in self.layers.items()}
        if self._method_class.cache_deltas:  # a dense SVD per layer: kept once made, while it fits (.kept)
            KEPT.keep(self._kept_as, epoch, deltas)
        return deltas

    def scales(self, epoch: int) -> dict[str, float]:
        """Each layer's scale: TLoRA's learned α, LoRA's fixed scaling lora_alpha / r; NaN for methods without one."""
        self._snapshot(epoch)
        return {name: self._method_class.scale_from(layer, self._layer_tensors(epoch, name)) for name, layer in self.layers.items()}

    def trainable(self, epoch: int) -> dict[str, dict[str, torch.Tensor]]:
        """The trained matrices per layer by the names the method gives them (``{"B": ...}`` for TLoRA, ``{"A": ..., "B": ...}`` for LoRA)."""
        self._snapshot(epoch)
        return {name: self._method_class.trained_from(self._layer_tensors(epoch, name)) for name in self.layers}


def _check_fields(meta: dict, records: dict, where: str) -> None:
    """run.json's other fields, checked as adapter_config.json's are: the rank an export copies, each epoch's
    metrics and the parameter counts are what they say, or the run is refused in one line."""
    import math

    from ..tensors import MAX_DIM

    rank = meta.get("rank", 0)
    if not _is_int(rank) or not 0 <= rank <= MAX_DIM:
        raise InputError(f"{where}: 'rank' should be a whole number from 0 to {MAX_DIM}, got {rank!r:.40}")
    counts = meta.get("parameter_counts", {})
    if not isinstance(counts, dict) or not all(_is_int(v) and v >= 0 for v in counts.values()):
        raise InputError(f"{where}: 'parameter_counts' should be a JSON object of whole numbers, got {counts!r:.80}")
    for epoch, record in records.items():
        metrics = record.get("metrics", {})
        if not isinstance(metrics, dict):
            raise InputError(f"{where}: epoch {epoch}'s 'metrics' should be a JSON object, got {metrics!r:.60}")
        bad = next((k for k, v in metrics.items() if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))), None)
        if bad is not None:
            raise InputError(f"{where}: epoch {epoch}'s metric {bad!r:.40} should be a number, got {metrics[bad]!r:.40}")
        if any(isinstance(v, float) and math.isinf(v) for v in metrics.values()):
            raise InputError(f"{where}: epoch {epoch}'s metrics hold an infinite value")
