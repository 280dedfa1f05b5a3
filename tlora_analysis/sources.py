"""Open anything that holds low-rank updates as one kind of source for the analyses.

- a run directory (``run.json`` + snapshots) -> :class:`~tlora_analysis.store.Run`
- one snapshot file ``RUN/snapshots/epoch_NNN.safetensors`` -> that run, limited to that epoch
- a Hugging Face PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)
  -> :class:`PeftAdapter`, a one-epoch source

Only JSON and safetensors are read. Pickle-based files (``.bin``, ``.pt``, ``.pth``, ``.pkl``)
are refused without being opened, because unpickling runs code from the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .errors import InputError
from .factored import FactoredDelta
from .io import inside, read_json, refuse_pickle, refuse_pickled_files
from .methods.spec import METHOD_SPECS
from .store import Run, snapshot_name
from .tensors import check_values, read_tensors

__all__ = ["open_updates", "open_sources", "labelled_paths", "Labelled", "SingleState", "PeftAdapter", "open_peft", "refuse_pickle", "refuse_pickled_files"]



class _SingleEpochRun:
    """A run limited to one of its epochs (what a single snapshot file stands for)."""

    def __init__(self, run: Run, epoch: int) -> None:
        run.record(epoch)  # raises if the epoch is not finished
        self._run, self._epoch = run, epoch
        self.name, self.method, self.meta, self.path = run.name, run.method, run.meta, run.path

    @property
    def epochs(self) -> list[int]:
        return [self._epoch]

    @property
    def metrics(self) -> dict:
        return {self._epoch: self._run.metrics[self._epoch]}

    @property
    def rank(self) -> int:
        return self._run.rank

    def __getattr__(self, attribute):  # deltas, scales, trainable, layers ... of the underlying run
        return getattr(self._run, attribute)


class SingleState:
    """A source that holds one state, not a training history: it reports it as epoch 0."""

    path: Path

    @property
    def epochs(self) -> list[int]:
        return [0]

    @property
    def metrics(self) -> dict:
        return {0: {}}

    def _check(self, epoch: int) -> None:
        if epoch != 0:
            raise InputError(f"{self.path}: holds one state (epoch 0), not epoch {epoch}")

    def scales(self, epoch: int = 0) -> dict[str, float]:
        self._check(epoch)
        return {}

    def trainable(self, epoch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return {}


def _adapter_tensors(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A PEFT adapter directory's ``adapter_model.safetensors``: its path and tensors."""
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        refuse_pickled_files(folder)
        raise InputError(f"{weights}: missing; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors")
    return weights, read_tensors(inside(folder, weights, "adapter_model.safetensors"))


class PeftAdapter(SingleState):
    """A peft adapter directory as a one-state source, read by the class of the method whose spec
    names its ``peft_type`` (:meth:`~tlora_analysis.methods.LoRALinear.from_peft`, VeRA's likewise).

    ``base`` (a model name or folder) gives each layer's shape where the adapter file does not
    (VeRA with layers of several shapes); without it the base named in adapter_config.json is
    used if it is the embedded default or a local folder (a name read from a file is never fetched).
    """

    def __init__(self, path: str | Path, config: dict, base: str | None = None) -> None:
        self.path, self.name, self.config = Path(path), Path(path).name, config
        where = str(self.path / "adapter_config.json")
        peft_type = str(config.get("peft_type", "LORA")).upper()
        spec = next((s for s in METHOD_SPECS.values() if s.peft_type == peft_type), None)
        if spec is None:
            known = ", ".join(s.peft_type for s in METHOD_SPECS.values() if s.peft_type)
            raise InputError(f"{where}: peft_type {peft_type!r:.40} is not supported; supported adapter types: {known}")
        self.method = spec.name
        self._class = spec.layer_class()
        weights, tensors = _adapter_tensors(self.path)
        for key, tensor in tensors.items():
            check_values(tensor, f"{weights}: tensor {key}")
        layers = self._class.from_peft(config, tensors, str(weights), _layer_shapes(config, base, tensors))
        self.layers = {m: record for m, (record, _, _) in layers.items()}
        self._tensors = {m: t for m, (_, t, _) in layers.items()}
        self._frozen = {m: f for m, (_, _, f) in layers.items()}
        self.rank = int(config.get("r", 0))
        self.meta = {"peft_config": config, "model": config.get("base_model_name_or_path")}

    def __repr__(self) -> str:
        return f"PeftAdapter({str(self.path)!r}, method={self.method!r}, layers={len(self.layers)})"

    def deltas(self, epoch: int = 0) -> dict[str, FactoredDelta]:
        self._check(epoch)
        return {m: self._class.delta_from(self.layers[m], t, self._frozen[m]) for m, t in self._tensors.items()}

    def scales(self, epoch: int = 0) -> dict[str, float]:
        self._check(epoch)
        return {m: self._class.scale_from(self.layers[m], t) for m, t in self._tensors.items()}

    def trainable(self, epoch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return {m: self._class.trained_from(t) for m, t in self._tensors.items()}


def _layer_shapes(config: dict, base: str | None, tensors: dict) -> dict[str, tuple[int, int]] | None:
    """(d_out, d_in) of the base model's linear layers, from its safetensors headers, where a base
    is given or named locally in the config and the adapter needs it (VeRA); None otherwise."""
    if str(config.get("peft_type", "LORA")).upper() != "VERA":
        return None
    from .base_weights import weight_shapes
    from .models import model_named_in_file, resolve_model

    try:
        name = model_named_in_file(config.get("base_model_name_or_path"), "adapter_config.json", base)
    except InputError:
        return None
    return weight_shapes(resolve_model(name))


def open_peft(path: Path, base: str | None = None) -> PeftAdapter:
    """A peft adapter directory (LoRA or VeRA), by its ``peft_type``."""
    config_path = inside(path, path / "adapter_config.json", "adapter_config.json")
    return PeftAdapter(path, read_json(config_path, "adapter_config.json"), base)


def open_updates(path: str | Path, base: str | None = None):
    """Open a run directory, a snapshot file or a PEFT adapter directory (see the module docstring).

    A snapshot file is read as the epoch its name gives of the run it sits in
    (``RUN/snapshots/epoch_NNN.safetensors``), and only that epoch: the source is the
    file named, not whatever else the run holds.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: expected a run directory, a PEFT adapter directory or a snapshot .safetensors file")
        match = re.fullmatch(r"epoch_(\d+)", path.stem)
        if not match or path.parent.name != "snapshots":
            raise InputError(f"{path}: a snapshot is read inside its run, as RUN/snapshots/epoch_NNN.safetensors beside RUN/run.json")
        run_dir = path.parent.parent
        if not (run_dir / "run.json").exists():
            raise InputError(f"{path}: a snapshot is read with its run's run.json (for scales and seeds), not found at {run_dir / 'run.json'}")
        epoch = int(match[1])
        if path.resolve() != (run_dir / snapshot_name(epoch)).resolve():
            raise InputError(f"{path}: epoch {epoch}'s snapshot is {run_dir / snapshot_name(epoch)}")
        return _SingleEpochRun(Run(run_dir), epoch)
    if not path.is_dir():
        raise InputError(f"{path}: neither a regular file nor a directory")
    if (path / "run.json").exists():
        return Run(path)
    if (path / "adapter_config.json").exists():
        return open_peft(path, base)
    if not any(path.iterdir()):
        raise InputError(f"{path}: empty directory; expected a run (run.json) or a PEFT adapter (adapter_config.json)")
    refuse_pickled_files(path)
    if (path / "study.json").is_file():
        raise InputError(f"{path}: a study directory, not one source; give it alone to analyze, figures or report, or open it "
                         "with load_study (its cells are under runs/)")
    raise InputError(f"{path}: neither a run directory (no run.json) nor a PEFT adapter directory (no adapter_config.json)")


LABEL_SETTINGS = ("seed", "rank", "lr", "alpha", "init", "epochs", "targets")
"""The settings that may name a source in its label, when they differ between the sources."""


def open_sources(sources, base: str | None = None) -> list:
    """Open a set of sources and give each a unique, readable label (its ``name``, the ``run`` column of every table).

    ``sources`` is a list (paths or opened sources) or a mapping ``label -> source``. Unlabelled
    sources are named by their method and what differs between them (``lora-s0``, ``lora-s1``,
    ``tlora-r4``), else by their directory. The same path twice, or one label for two sources,
    is refused in one line.
    """
    given = list(sources.keys()) if isinstance(sources, Mapping) else [None] * len(sources)
    items = list(sources.values()) if isinstance(sources, Mapping) else list(sources)
    if not items:
        raise InputError("no source given: name at least one run, snapshot, adapter or export")
    given = [item.name if label is None and isinstance(item, Labelled) else label for label, item in zip(given, items)]
    seen: set = set()
    for item in items:  # a path by where it leads; an opened source by identity (two snapshot files share a run)
        key = Path(item).resolve() if isinstance(item, (str, Path)) else id(item.source if isinstance(item, Labelled) else item)
        if key in seen:
            raise InputError(f"{item if isinstance(item, (str, Path)) else item.path}: given twice; give each source once")
        seen.add(key)
    labels = [g for g in given if g is not None]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice is not None or any(not isinstance(label, str) or not label.strip() for label in labels):
        raise InputError(f"label {twice!r} names two sources; give each source its own label" if twice is not None
                         else "a source label must be a non-empty string")
    opened = [open_updates(item, base) if isinstance(item, (str, Path)) else item for item in items]
    return [Labelled(source, label if label is not None else auto) for source, label, auto in zip(opened, given, _auto_labels(opened, set(labels)))]


class Labelled:
    """A source under the label one analysis gives it; everything else is the source's own (it is not changed)."""

    def __init__(self, source, label: str) -> None:
        self.source = source.source if isinstance(source, Labelled) else source
        self.name = label

    def __getattr__(self, attribute):
        return getattr(self.source, attribute)

    def __repr__(self) -> str:
        return f"Labelled({self.name!r}, {self.source!r})"


def _auto_labels(sources: list, taken: set[str]) -> list[str]:
    from .study.spec import SHORT, format_value

    configs = [s.meta.get("config") if isinstance(s.meta.get("config"), dict) else {} for s in sources]
    varied = [k for k in LABEL_SETTINGS if len({repr(c.get(k)) for c in configs}) > 1]
    labels = ["-".join([s.method, *(f"{SHORT.get(k, k)}{format_value(c[k])}" for k in varied if c.get(k) is not None)])
              for s, c in zip(sources, configs)]
    if len(set(labels)) < len(labels) or set(labels) & taken:  # the settings do not tell them apart: their directories do
        labels = [Path(s.path).name for s in sources]
    counts: dict[str, int] = {}
    unique = []
    for label in labels:  # two directories of one name (a/run, b/run): number them
        counts[label] = counts.get(label, 0) + 1
        unique.append(label if labels.count(label) == 1 and label not in taken else f"{label}-{counts[label]}")
    return unique


def labelled_paths(arguments: list[str]) -> dict[str, str] | list[str]:
    """``NAME=PATH`` arguments as a mapping label -> path (an existing path with '=' in it stays a path)."""
    named = [a.partition("=") if "=" in a and not Path(a).exists() else (None, None, a) for a in arguments]
    if all(label is None for label, _, _ in named):
        return arguments
    if any(label is None for label, _, _ in named):
        raise InputError("label every source (NAME=PATH) or none; mixed: " + ", ".join(a for a in arguments if "=" not in a))
    return {label: path for label, _, path in named} if len({label for label, _, _ in named}) == len(named) else \
        _refuse_twice([label for label, _, _ in named])


def _refuse_twice(labels: list[str]):
    twice = next(label for label in labels if labels.count(label) > 1)
    raise InputError(f"label {twice!r} names two sources; give each source its own label")
