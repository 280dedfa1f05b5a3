"""TLoRA (Islam, arXiv 2504.18735): ΔW = α · A · B · C with A and C frozen and random."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..factored import FactoredDelta
from .base import AdapterLayer, register_method
from .spec import METHOD_SPECS, TLORA_INITS

DEFAULT_INIT = METHOD_SPECS["tlora"].options["init"].default


def tlora_frozen_matrices(seed: int, d_out: int, d_in: int, rank: int, init: str = DEFAULT_INIT) -> tuple[Tensor, Tensor]:
    """TLoRA's frozen A (d_out x r) and C (r x d_in), in float32, drawn as ``init`` says.

    The paper's text does not pin this down, so it is a setting (``train --init``):

    - ``kaiming`` (default): Gaussian, variance 1/r for A and 1/d_in for C, so that C·x and
      A·(·) keep activations at unit scale;
    - ``var-r``: Gaussian, variance 1/r for both;
    - ``var-d``: Gaussian, variance 1/d_out for A and 1/d_in for C;
    - ``orthonormal``: A with orthonormal columns and C with orthonormal rows (the QR of
      the same Gaussian draws).

    Always drawn on the CPU so that the same seed gives the same matrices whatever device
    the model lives on; snapshots store the seed and init, not the matrices.
    """
    if init not in TLORA_INITS:
        raise ValueError(f"init must be one of {', '.join(TLORA_INITS)}, got {init!r}")
    generator = torch.Generator().manual_seed(seed)
    c = torch.randn(rank, d_in, generator=generator)
    a = torch.randn(d_out, rank, generator=generator)
    if init == "orthonormal":
        return torch.linalg.qr(a)[0].contiguous(), torch.linalg.qr(c.T)[0].T.contiguous()
    a_var = {"kaiming": rank, "var-r": rank, "var-d": d_out}[init]
    c_var = {"kaiming": d_in, "var-r": rank, "var-d": d_in}[init]
    return a / math.sqrt(a_var), c / math.sqrt(c_var)


@register_method
class TLoRALinear(AdapterLayer):
    """TLoRA: ΔW = α · A · B · C.

    - A (d_out x r) and C (r x d_in) are frozen random buffers from
      :func:`tlora_frozen_matrices`; by default Gaussian with variance 1/r and 1/d_in
      (Kaiming-style), so C·x and A·(·) keep activations at unit scale (``init`` chooses).
    - B (r x r) is the only trainable matrix. It starts at zero so that ΔW = 0 and the
      adapted model equals the base model at step 0 (the gradient of B is
      α Aᵀ G (C x)ᵀ, non-zero, so training starts at once).
    - α is a learnable scalar per layer, initialized to ``alpha`` (1.0 by default).
    - ``dropout`` acts on the input of the low-rank path, as LoRA's does.

    Trainable parameters per layer: r² + 1.
    """

    method = "tlora"
    frozen_names = ("tlora_A", "tlora_C")
    _state_names = ("tlora_A", "tlora_B", "tlora_C", "tlora_alpha")

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0,
                 init: str = DEFAULT_INIT) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        device = base.weight.device
        self.init = init
        a, c = tlora_frozen_matrices(seed, base.out_features, base.in_features, rank, init)
        self.register_buffer("tlora_A", a.to(device))
        self.register_buffer("tlora_C", c.to(device))
        self.tlora_B = nn.Parameter(torch.zeros(rank, rank, device=device))
        # A one-element vector rather than a 0-d scalar: FSDP2 shards parameters along dim 0 and
        # refuses scalars. Snapshots store it as a scalar (trainable_tensors).
        initial = METHOD_SPECS["tlora"].alpha_default if alpha is None else float(alpha)
        self.tlora_alpha = nn.Parameter(torch.full((1,), initial, device=device))

    def settings(self) -> dict:
        return {**super().settings(), "init": self.init}

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        if record.get("init", DEFAULT_INIT) not in TLORA_INITS:
            from ..errors import InputError

            raise InputError(f"{where}: 'init' should be one of {', '.join(TLORA_INITS)}, got {record.get('init')!r:.60}")

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.tlora_B.dtype))
        return ((x @ self.tlora_C.T) @ self.tlora_B.T) @ self.tlora_A.T * self.tlora_alpha

    def trainable_tensors(self) -> dict[str, Tensor]:
        tensors = super().trainable_tensors()
        return {**tensors, "tlora_alpha": tensors["tlora_alpha"].reshape(())}

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        r = record["rank"]
        return {"tlora_B": (r, r), "tlora_alpha": ()}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"tlora_A": (d_out, r), "tlora_C": (r, d_in)}

    @classmethod
    def record_from_state(cls, state: dict[str, Tensor]) -> dict:
        return {"method": cls.method, "shape": [state["tlora_A"].shape[0], state["tlora_C"].shape[-1]], "rank": state["tlora_B"].shape[0],
                "seed": 0}

    @classmethod
    def rebuild_frozen(cls, record: dict) -> dict[str, Tensor]:
        (d_out, d_in), r = record["shape"], record["rank"]
        a, c = tlora_frozen_matrices(int(record["seed"]), d_out, d_in, int(r), record.get("init", DEFAULT_INIT))
        return {"tlora_A": a, "tlora_C": c}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        b = tensors["tlora_B"]
        return FactoredDelta(frozen["tlora_A"].to(b.device), tensors["tlora_alpha"].reshape(()) * b, frozen["tlora_C"].to(b.device))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(tensors["tlora_alpha"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"B": tensors["tlora_B"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * rank + 1, rank * (d_out + d_in)
