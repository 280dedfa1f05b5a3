"""Saved models: a fine-tuned model (folder or file) read against its base, and a model saved with this toolkit's adapters.

- A fully fine-tuned model: ΔW = W_ft − W0 for every 2-D weight that changed, each through one dense SVD
  (optionally truncated), W0 read from ``--base``. Embedding matrices are left out (they are lookups,
  not linear maps), and the notice says how many.
- A model with this toolkit's adapter layers saved whole (``save_pretrained``, a Trainer checkpoint's
  ``model.safetensors``): each layer's entries name its method (``lora_A``, ``lora_B``, ``lora_scaling``;
  ``tlora_B``, ...), so its update is read from the file alone, by the method's own delta function.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..adapters import OUTPUT_HEADS
from ..base_weights import match_key
from ..errors import InputError
from ..factored import FactoredDelta
from ..io import inside, read_json, refuse_pickle, refuse_pickled_files
from ..methods import METHOD_CLASSES, METHOD_SPECS, method_class
from ..tensors import read_tensors
from .formats import Sniff, SourceFormat, register_format
from .states import FINAL_STATE, SingleState

__all__ = ["FullFineTune", "AdapterModel", "read_model_tensors", "open_model"]

BASE_SUFFIX = ".base.weight"
"""Every adapter layer of this toolkit wraps its frozen linear layer as ``base``."""


class FullFineTune(SingleState):
    """A fully fine-tuned model read against its base: ΔW = W_ft − W0 for every 2-D weight that changed.

    ``max_rank`` truncates each update to its top singular directions; by default the SVD is complete.
    """

    method = "full"

    def __init__(self, path: str | Path, base: str | None, max_rank: int | None = None, tensors: dict | None = None) -> None:
        from ..models import resolve_model

        self.path, self.name, self.rank = Path(path), Path(path).name, max_rank or 0
        if base is None:
            raise InputError(f"{self.path}: a fine-tuned model's weights; ΔW = W_ft − W0 needs the base model: pass --base MODEL")
        self.meta = {"model": base}
        tuned = read_model_tensors(self.path) if tensors is None else tensors
        original = read_model_tensors(Path(resolve_model(base)))
        self._dense: dict[str, torch.Tensor] = {}
        self._deltas: dict[str, FactoredDelta] | None = None
        self.base_weights: dict[str, torch.Tensor] = {}
        left_out: dict[str, int] = {"embedding matrices (lookups, not linear maps)": 0, "output heads (no pretrained W0)": 0}
        for key, weight in tuned.items():
            parts = key.split(".")
            if weight.ndim != 2 or parts[-1] != "weight" or not weight.is_floating_point():
                continue
            if {"embeddings", "embed_tokens", "wte"} & set(parts) or set(parts) & set(OUTPUT_HEADS):
                left_out["embedding matrices (lookups, not linear maps)" if set(parts) - set(OUTPUT_HEADS) == set(parts) else
                         "output heads (no pretrained W0)"] += 1
                continue
            match = match_key(key[: -len(".weight")], original, f"base model {base!r}")
            if match is None or original[match].shape != weight.shape:
                continue
            delta = weight.double() - original[match].double()
            if bool(delta.abs().max() > 0):
                self._dense[key[: -len(".weight")]] = delta
                self.base_weights[key[: -len(".weight")]] = original[match]
        if not self._dense:
            raise InputError(f"{self.path}: no 2-D weight differs from base model {base!r} (is it the right base?)")
        self.layers = {name: {"shape": list(d.shape), "rank": min(*d.shape, max_rank or d.shape[0]), "form": "dense"}
                       for name, d in self._dense.items()}
        self.notices = [f"{self.path}: {n} {what} were left out" for what, n in left_out.items() if n]

    def deltas(self, epoch: int = FINAL_STATE) -> dict[str, FactoredDelta]:
        """Each layer's ΔW through one dense SVD (truncated to ``max_rank``), computed once."""
        self._check(epoch)
        if self._deltas is None:
            self._deltas = {name: FactoredDelta.from_dense(delta, self.rank or None) for name, delta in self._dense.items()}
        return self._deltas

    @property
    def update_counts(self) -> tuple[int, int]:
        """A fine-tune trains every entry of each changed weight."""
        return sum(d.numel() for d in self._dense.values()), 0

    def truncated(self, max_rank: int) -> FullFineTune:
        """The same fine-tune, each update kept to its top ``max_rank`` singular directions."""
        copy = object.__new__(FullFineTune)
        copy.__dict__.update(self.__dict__, rank=max_rank, _deltas=None)
        copy.layers = {name: {**record, "rank": min(record["shape"] + [max_rank])} for name, record in self.layers.items()}
        return copy


class AdapterModel(SingleState):
    """A model saved with this toolkit's adapter layers in it, read from the file alone."""

    def __init__(self, path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
        self.path, self.name = Path(path), Path(path).name
        where = str(self.path)
        layers = {}
        for module in sorted({k[: -len(BASE_SUFFIX)] for k in tensors if k.endswith(BASE_SUFFIX)}):
            state = {k[len(module) + 1:]: v for k, v in tensors.items() if k.startswith(module + ".")}
            own = frozenset(k for k in state if not k.startswith("base."))
            layer_class = next((c for c in _layer_classes() if c.state_names() == own), None)
            if layer_class is not None:
                layers[module] = (layer_class, *layer_class.from_module_state(state, f"{where}: module {module}"))
        methods = {c.method for c, *_ in layers.values()}
        if len(methods) != 1:
            raise InputError(f"{where}: holds {'no' if not methods else 'several kinds of'} tlora-analysis adapter layers "
                             f"({', '.join(sorted(methods)) or 'none'}); expected one method's")
        self.method = methods.pop()
        self._class = method_class(self.method)
        self._layers = {m: rest for m, (_, *rest) in layers.items()}
        self.layers = {m: record for m, (record, _, _) in self._layers.items()}
        self.rank = next(iter(self.layers.values()))["rank"]
        self.meta = {}
        adapter_keys = {f"{m}.{k}" for m in layers for k in (*self._class.state_names(), "base.weight", "base.bias")}
        rest = [k for k in tensors if k not in adapter_keys]
        self.notices = [f"{where}: {len(rest)} tensors outside the adapter layers (the frozen base, a head) were not analysed"] if rest else []

    def deltas(self, epoch: int = FINAL_STATE) -> dict[str, FactoredDelta]:
        self._check(epoch)
        return {m: self._class.delta_from(record, t, frozen) for m, (record, t, frozen) in self._layers.items()}

    def scales(self, epoch: int = FINAL_STATE) -> dict[str, float]:
        self._check(epoch)
        return {m: self._class.scale_from(record, t) for m, (record, t, _) in self._layers.items()}

    def trainable(self, epoch: int = FINAL_STATE) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return {m: self._class.trained_from(t) for m, (_, t, _) in self._layers.items()}


def _layer_classes() -> list:
    for spec in METHOD_SPECS.values():  # load every registered layer class
        if spec.layer is not None:
            spec.layer_class()
    return list(METHOD_CLASSES.values())


def _has_adapter_layers(keys) -> bool:
    names = {name for c in _layer_classes() for name in c.state_names()}
    modules = {k[: -len(BASE_SUFFIX)] for k in keys if k.endswith(BASE_SUFFIX)}
    return any(k.rsplit(".", 1)[0] in modules and k.rsplit(".", 1)[-1] in names for k in keys)


def read_model_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A model's tensors from a safetensors file, a folder's ``model.safetensors`` or its sharded index."""
    if path.is_file():
        refuse_pickle(path)
        return read_tensors(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such model directory")
    single = path / "model.safetensors"
    if single.exists():
        return read_tensors(inside(path, single, "model.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(inside(path, index, "the safetensors index"), "safetensors index").get("weight_map", {})
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise InputError(f"{index}: 'weight_map' should map tensor names to file names")
        files = sorted(set(weight_map.values()))
        for name in files:  # plain file names in this folder: no path from the index is followed
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise InputError(f"{index}: weight_map names {name!r:.80}; shards must be .safetensors files in {path}")
        return {k: v for f in files for k, v in read_tensors(inside(path, path / f, "a shard")).items()}
    refuse_pickled_files(path)
    raise InputError(f"{path}: no model.safetensors (or sharded model.safetensors.index.json)")


def open_model(path: Path, base: str | None = None, max_rank: int | None = None):
    """A saved model: with this toolkit's adapter layers in it, read from the file alone; else a fine-tune against ``base``."""
    tensors = read_model_tensors(path)
    if _has_adapter_layers(tensors):
        return AdapterModel(path, tensors)
    return FullFineTune(path, base, max_rank, tensors)


def _is_model_folder(sniff: Sniff) -> bool:
    return bool({"model.safetensors", "model.safetensors.index.json"} & sniff.names)


register_format(SourceFormat("model folder", "model.safetensors (or a sharded index): this toolkit's adapters saved in a model, "
                                             "else a fine-tune read against --base", "folder", _is_model_folder, open_model, base="some", order=90))
register_format(SourceFormat("model file", "a model's .safetensors: this toolkit's adapters saved in a model, else a fine-tune read "
                                           "against --base", "file", lambda s: bool(s.keys), open_model, base="some", order=90))
