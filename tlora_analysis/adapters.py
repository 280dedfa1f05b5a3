"""LoRA and TLoRA adapter layers, and injecting them into a model.

One small class per method, in the style of peft's ``tuners/{lora,vera}/layer.py``:
each wraps a frozen ``nn.Linear``, adds its low-rank path in the forward pass without
ever forming a d_out x d_in matrix, and returns its update as a :class:`FactoredDelta`
from :meth:`delta`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .config import METHODS
from .errors import InputError
from .factored import FactoredDelta

__all__ = [
    "AdapterLayer",
    "LoRALinear",
    "TLoRALinear",
    "METHODS",
    "inject_adapters",
    "adapter_layers",
    "count_parameters",
    "ParameterCounts",
    "layer_seed",
    "tlora_frozen_matrices",
    "tensor_sha256",
]

class AdapterLayer(nn.Module):
    """What LoRA and TLoRA layers share: a frozen base ``nn.Linear`` plus a low-rank path."""

    method: str

    def __init__(self, base: nn.Linear, rank: int) -> None:
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
        self.in_features = base.in_features
        self.out_features = base.out_features
        base.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base(x)
        return result + self.low_rank_forward(x).to(result.dtype)

    def low_rank_forward(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def delta(self) -> FactoredDelta:  # pragma: no cover - abstract
        """ΔW of this layer, factored."""
        raise NotImplementedError

    def scale(self) -> float:  # pragma: no cover - abstract
        """The layer's scalar scale: LoRA's fixed lora_alpha / r, TLoRA's learned α."""
        raise NotImplementedError

    def trainable_tensors(self) -> dict[str, Tensor]:
        """The tensors a snapshot must store, by short name (detached copies on CPU)."""
        return {name: p.detach().to("cpu", copy=True) for name, p in self.named_parameters() if not name.startswith("base.")}

    def load_trainable_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of :meth:`trainable_tensors` (used to resume and to re-apply exports)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.startswith("base."):
                    p.copy_(tensors[name].to(p.device, p.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LoRALinear(AdapterLayer):
    """LoRA (Hu et al. 2021) as peft implements it: ΔW = (lora_alpha / r) · B · A.

    A (r x d_in) is Kaiming-uniform with a = √5 and B (d_out x r) is zero, so ΔW = 0 at
    initialization. ``use_rslora`` scales by lora_alpha / √r instead. Attribute names
    (``lora_A``, ``lora_B``, ``scaling``) follow peft so exported adapters map one to one.
    """

    method = "lora"

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        lora_alpha: float | None = None,
        *,
        dropout: float = 0.0,
        use_rslora: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(base, rank)
        self.lora_alpha = float(rank if lora_alpha is None else lora_alpha)
        self.use_rslora = use_rslora
        self.scaling = self.lora_alpha / (math.sqrt(rank) if use_rslora else rank)
        self.seed = seed
        device = base.weight.device
        a = torch.empty(rank, base.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=torch.Generator().manual_seed(seed))
        self.lora_A = nn.Parameter(a.to(device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def scale(self) -> float:
        return self.scaling

    def delta(self) -> FactoredDelta:
        core = torch.eye(self.rank, dtype=self.lora_B.dtype, device=self.lora_B.device) * self.scaling
        return FactoredDelta(self.lora_B.detach(), core, self.lora_A.detach())


class TLoRALinear(AdapterLayer):
    """TLoRA (Islam, arXiv 2504.18735): ΔW = α · A · B · C.

    - A (d_out x r) and C (r x d_in) are frozen random buffers, drawn by
      :func:`tlora_frozen_matrices` from a seeded CPU generator so that the seed and the
      shapes are enough to rebuild them on any device. They are Gaussian with variance
      1/r and 1/d_in (Kaiming-style), so C·x and A·(·) keep activations at unit scale.
    - B (r x r) is the only trainable matrix. It starts at zero so that ΔW = 0 and the
      adapted model equals the base model at step 0 (the gradient of B is
      α Aᵀ G (C x)ᵀ, non-zero, so training starts at once).
    - α is a learnable scalar per layer, initialized to ``alpha_init`` (1.0 by default).

    Trainable parameters per layer: r² + 1.
    """

    method = "tlora"

    def __init__(self, base: nn.Linear, rank: int, alpha_init: float = 1.0, *, seed: int = 0) -> None:
        super().__init__(base, rank)
        self.seed = seed
        device = base.weight.device
        a, c = tlora_frozen_matrices(seed, base.out_features, base.in_features, rank)
        self.register_buffer("tlora_A", a.to(device))
        self.register_buffer("tlora_C", c.to(device))
        self.tlora_B = nn.Parameter(torch.zeros(rank, rank, device=device))
        self.tlora_alpha = nn.Parameter(torch.tensor(float(alpha_init), device=device))

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = x.to(self.tlora_B.dtype)
        return ((x @ self.tlora_C.T) @ self.tlora_B.T) @ self.tlora_A.T * self.tlora_alpha

    def scale(self) -> float:
        return float(self.tlora_alpha.detach())

    def delta(self) -> FactoredDelta:
        return FactoredDelta(self.tlora_A, (self.tlora_alpha * self.tlora_B).detach(), self.tlora_C)


def tlora_frozen_matrices(seed: int, d_out: int, d_in: int, rank: int) -> tuple[Tensor, Tensor]:
    """TLoRA's frozen A (d_out x r, std 1/√r) and C (r x d_in, std 1/√d_in), in float32.

    Always drawn on the CPU so that the same seed gives the same matrices whatever device
    the model lives on; snapshots store this seed, not the matrices.
    """
    generator = torch.Generator().manual_seed(seed)
    c = torch.randn(rank, d_in, generator=generator) / math.sqrt(d_in)
    a = torch.randn(d_out, rank, generator=generator) / math.sqrt(rank)
    return a, c


def tensor_sha256(tensor: Tensor) -> str:
    """Checksum of a tensor's float32 values, to verify a regenerated frozen matrix."""
    data = tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()


def layer_seed(seed: int, name: str) -> int:
    """A per-layer seed derived from the run seed and the layer's qualified name (stable across runs)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def inject_adapters(
    model: nn.Module,
    method: str,
    rank: int,
    target_modules: Sequence[str],
    *,
    alpha: float | None = None,
    seed: int = 0,
    modules_to_save: Sequence[str] = (),
    dropout: float = 0.0,
) -> nn.Module:
    """Replace every ``nn.Linear`` whose qualified name ends with a target by an adapter layer.

    All base weights are frozen; parameters inside a module named in ``modules_to_save`` (e.g. ``["classifier"]``) stay trainable, as in peft.
    ``alpha`` is LoRA's ``lora_alpha`` (default: ``rank``, i.e. scaling 1) or TLoRA's
    initial α (default 1.0). Each layer gets its own seed from :func:`layer_seed`.
    Returns the same model, modified in place. A bad argument raises :class:`InputError`
    (a ``ValueError``) before the model is touched.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(target_modules, str):
        target_modules = [target_modules]
    if not target_modules:
        raise InputError("target_modules is empty: name at least one module, e.g. ['query', 'value']")
    if not isinstance(rank, int) or rank < 1:
        raise InputError(f"rank must be a positive integer, got {rank!r}")
    if adapter_layers(model):
        raise InputError("model already has adapter layers; inject into a fresh model")

    linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    chosen = [name for name in linear if _matches(name, target_modules)]
    if not chosen:
        suffixes = sorted({name.rsplit(".", 1)[-1] for name in linear})
        raise InputError(
            f"target_modules {list(target_modules)} matched no nn.Linear layer; "
            f"linear layer names end with: {', '.join(suffixes) or '(none)'}"
        )
    for name in chosen:
        layer = linear[name]
        limit = min(layer.in_features, layer.out_features)
        if rank > limit:
            raise InputError(
                f"rank {rank} exceeds min(in_features, out_features) = {limit} of layer {name!r} "
                f"({layer.out_features}x{layer.in_features})"
            )

    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        kwargs = dict(seed=layer_seed(seed, name))
        if method == "lora":
            adapter: AdapterLayer = LoRALinear(linear[name], rank, alpha, dropout=dropout, **kwargs)
        else:
            adapter = TLoRALinear(linear[name], rank, 1.0 if alpha is None else alpha, **kwargs)
        setattr(parent, child, adapter)
    for name, param in model.named_parameters():
        if any(f".{m}." in f".{name}" for m in modules_to_save):
            param.requires_grad_(True)
    return model


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """``{qualified_name: adapter layer}`` in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AdapterLayer)}


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters by role. peft's count hides buffers, so TLoRA's frozen random matrices
    would vanish from it; here they have their own line."""

    adapter_trainable: int
    other_trainable: int
    frozen_random: int
    base_frozen: int

    @property
    def trainable(self) -> int:
        return self.adapter_trainable + self.other_trainable

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "trainable": self.trainable}


def count_parameters(model: nn.Module) -> ParameterCounts:
    """Count trainable adapter, other trainable (e.g. a classifier head), frozen random and frozen base numbers."""
    adapters = adapter_layers(model)
    adapter_params = {id(p) for layer in adapters.values() for n, p in layer.named_parameters() if not n.startswith("base.")}
    adapter_trainable = other_trainable = base_frozen = 0
    for p in _unique(model.parameters()):
        if id(p) in adapter_params and p.requires_grad:
            adapter_trainable += p.numel()
        elif p.requires_grad:
            other_trainable += p.numel()
        else:
            base_frozen += p.numel()
    frozen_random = sum(b.numel() for layer in adapters.values() for n, b in layer.named_buffers() if not n.startswith("base."))
    return ParameterCounts(adapter_trainable, other_trainable, frozen_random, base_frozen)


def _unique(params: Iterable[nn.Parameter]) -> Iterable[nn.Parameter]:
    seen: set[int] = set()
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            yield p
