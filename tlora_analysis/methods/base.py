"""What every adapter method is: one class that knows, in one place, its live layer and its stored form.

The live side (an ``nn.Module`` wrapping a frozen ``nn.Linear``): the low-rank forward
path, :meth:`~AdapterLayer.delta`, the trainable tensors a snapshot stores and the frozen
ones it does not. The stored side (class methods, no module needed): the run.json record
of a layer, the snapshot tensors it implies, how to rebuild the frozen tensors, and how to
turn a snapshot into a :class:`FactoredDelta`. ``store``, ``recording``, ``checkpoints``
and ``training`` ask these methods and never branch on a method's name.

A method registers itself with :func:`register_method`, as peft's tuners do with
``register_peft_method``; :func:`method_class` looks it up.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..factored import FactoredDelta
from .spec import MAX_ABS_SCALE, METHOD_SPECS, method_spec

__all__ = ["AdapterLayer", "register_method", "method_class", "METHOD_CLASSES", "tensor_sha256", "check_scale", "MAX_ABS_SCALE"]

METHOD_CLASSES: dict[str, type[AdapterLayer]] = {}

"""Largest magnitude of a scale read from a file (LoRA's scaling): far beyond any real setting."""


def register_method(cls: type[AdapterLayer]) -> type[AdapterLayer]:
    """Class decorator: make ``cls`` available under ``cls.method``; its spec must name this very class."""
    spec = METHOD_SPECS.get(cls.method)
    if spec is None or spec.layer != f"{cls.__module__}:{cls.__name__}":
        raise TypeError(f"{cls.__name__}: no method spec names it (register a MethodSpec for {cls.method!r} in methods/spec.py)")
    METHOD_CLASSES[cls.method] = cls
    return cls


def method_class(name: str, where: str = "method") -> type[AdapterLayer]:
    """The layer class of an adapter method, loaded through its spec."""
    spec = method_spec(name, where)
    if spec.trains_through_peft:
        raise InputError(f"{where}: method {name!r} is trained through peft, which holds its layers; it has no layer class here")
    if not spec.adapts_layers:
        raise InputError(f"{where}: method {name!r} adapts no layer")
    return spec.layer_class()


def tensor_sha256(tensor: Tensor) -> str:
    """Checksum of a tensor's float32 values, to verify a regenerated frozen matrix."""
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


class AdapterLayer(nn.Module):
    """A frozen base ``nn.Linear`` plus a low-rank path; subclasses are the methods."""

    method: ClassVar[str]
    frozen_names: ClassVar[tuple[str, ...]] = ()
    """Buffers a snapshot does not store: rebuilt by :meth:`rebuild_frozen` and checked by checksum."""
    cache_deltas: ClassVar[bool] = False
    """True where building a delta from a snapshot costs a dense SVD: a run then keeps each
    epoch's deltas, within the shared budget of ``store.kept``, instead of rebuilding them for every analysis."""
    scale_buffer: ClassVar[str | None] = None
    """A fixed-scale method's persistent buffer holding its scale (``lora_scaling``), so that a model's saved
    state says what each layer's update is (a Trainer checkpoint's ``model.safetensors``)."""
    seed_scope: ClassVar[str] = "layer"
    """``"layer"``: each layer's seed comes from the run seed and its name; ``"run"``: every layer
    gets the run seed itself (VeRA's frozen pair depends on the seed and the shape only)."""

    def __init__(self, base: nn.Linear, rank: int, *, seed: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps nn.Linear, got {type(base).__name__}")
        if not 1 <= rank <= min(base.in_features, base.out_features):
            raise ValueError(
                f"rank must be between 1 and min(in_features, out_features) = "
                f"{min(base.in_features, base.out_features)} for a {base.out_features}x{base.in_features} layer, got {rank}"
            )
        self.base = base
        self.rank = rank
        self.seed = seed
        self.in_features = base.in_features
        self.out_features = base.out_features
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # on the input of the low-rank path
        base.requires_grad_(False)

    # ------------------------------------------------------------------ live layer
    def forward(self, x: Tensor) -> Tensor:
        result = self.base(x)
        return result + self.low_rank_forward(x).to(result.dtype)

    def low_rank_forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def delta(self) -> FactoredDelta:
        """ΔW of this layer, factored: the same :meth:`delta_from` that reads a stored snapshot."""
        return self.delta_from(self.settings(), self.live_tensors(), self.frozen_tensors())

    def scale(self) -> float:
        """The layer's scalar scale: LoRA's fixed lora_alpha / r, TLoRA's learned α, NaN where there is none."""
        return self.scale_from(self.settings(), self.live_tensors())

    def live_tensors(self) -> dict[str, Tensor]:
        """The trainable tensors as they are now, detached, on the layer's device (no copy)."""
        return {name: p.detach() for name, p in self.named_parameters() if not name.startswith("base.")}

    def trainable_tensors(self) -> dict[str, Tensor]:
        """The tensors a snapshot must store, by short name (detached copies on CPU)."""
        return {name: p.detach().to("cpu", copy=True) for name, p in self.named_parameters() if not name.startswith("base.")}

    def load_trainable_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`trainable_tensors` (used to resume and to re-apply exports)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("base."):
                    p.copy_(tensors[name].to(p.device, p.dtype))

    def frozen_tensors(self) -> dict[str, Tensor]:
        return {name: getattr(self, name) for name in self.frozen_names}

    @classmethod
    def shared_settings(cls, shapes: list[tuple[int, int]]) -> dict[str, Any]:
        """Constructor settings that depend on every adapted layer's (d_out, d_in), not one layer's (VeRA's pair shape)."""
        return {}

    def settings(self) -> dict[str, Any]:
        """What defines this layer's update besides its tensors: the record without checksums."""
        return {"method": self.method, "shape": [self.out_features, self.in_features], "rank": self.rank, "seed": self.seed}

    def record(self) -> dict[str, Any]:
        """This layer's run.json record: what :meth:`check_record` and the stored side read back."""
        record = self.settings()
        if self.frozen_names:
            record["frozen_sha256"] = {name: tensor_sha256(t) for name, t in self.frozen_tensors().items()}
        return record

    @classmethod
    def frozen_differs_from_rebuild(cls, record: dict) -> bool:
        """True if a layer's frozen tensors, as :meth:`record` checksums them, are not what
        :meth:`rebuild_frozen` gives (then a run stores them)."""
        recorded = record.get("frozen_sha256", {})
        rebuilt = cls.rebuild_frozen(record)
        return any(n not in rebuilt or tensor_sha256(rebuilt[n]) != checksum for n, checksum in recorded.items())

    def _register_scale(self, scale: float) -> None:
        self.register_buffer(self.scale_buffer, torch.tensor(float(scale), device=self.base.weight.device))

    @classmethod
    def state_names(cls) -> frozenset[str]:
        """The layer's own entries in a model's ``state_dict`` (besides its ``base.``), which tell its method apart."""
        return frozenset(cls._state_names)

    _state_names: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def record_from_state(cls, state: dict[str, Tensor]) -> dict[str, Any]:  # pragma: no cover - abstract
        """The layer's record, from its entries in a saved model's state dict (names without the module prefix)."""
        raise NotImplementedError

    @classmethod
    def from_module_state(cls, state: dict[str, Tensor], where: str) -> tuple[dict, dict[str, Tensor], dict[str, Tensor]]:
        """(record, snapshot tensors, frozen tensors) of one layer from a saved model's state dict, every
        shape checked against the record (and the layer's ``base.weight``) before use."""
        record = cls.record_from_state(state)
        if tuple(state["base.weight"].shape) != tuple(record["shape"]) or not 1 <= record["rank"] <= min(record["shape"]):
            raise InputError(f"{where}: a {cls.method} layer of shape {tuple(state['base.weight'].shape)} holds tensors of another "
                             f"shape or rank ({record['shape']}, r = {record['rank']})")
        out = []
        for shapes, names in ((cls.snapshot_shapes(record), None), (cls.frozen_shapes(record), cls.frozen_names)):
            tensors = {}
            for key, shape in shapes.items():
                if names is not None and key not in names or state[key].numel() != math.prod(shape):
                    raise InputError(f"{where}: tensor {key} has shape {tuple(state[key].shape)}, a {cls.method} layer needs {shape}")
                tensors[key] = state[key].reshape(shape)
            out.append(tensors)
        cls.check_record(record, where)
        return record, out[0], out[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    # ------------------------------------------------------------------ stored form
    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        """Method-specific checks of a run.json layer record (shape, rank and seed are checked by the store)."""

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:  # pragma: no cover - abstract
        """The tensors a snapshot holds for this layer, by short name, and their shapes."""
        raise NotImplementedError

    @classmethod
    def rebuild_frozen(cls, record: dict) -> dict[str, Tensor]:
        """The frozen tensors from the record alone (from its seed); empty if the record cannot
        rebuild them (LoRA-XS needs W0), and then a run stores them."""
        return {}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:  # pragma: no cover
        raise NotImplementedError

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """The trained matrices by the names the analyses use (``A``, ``B``, ...)."""
        return {}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:  # pragma: no cover - abstract
        """(trainable, frozen random) numbers that define one layer's update."""
        raise NotImplementedError

    @classmethod
    def update_counts(cls, records: dict[str, dict]) -> tuple[int, int]:
        """(trainable, frozen random) numbers of all these layers' updates, frozen numbers that the
        layers share counted once (VeRA's pair), as they are stored."""
        counts = [cls.parameter_counts(*record["shape"], int(record["rank"])) for record in records.values()]
        return sum(t for t, _ in counts), sum(f for _, f in counts)


def check_scale(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or abs(value) > MAX_ABS_SCALE:
        raise InputError(f"{where}: {name!r} should be a finite number of magnitude at most {MAX_ABS_SCALE:g}, got {value!r}")
    return float(value)
