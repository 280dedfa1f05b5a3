"""LoRA-XS (Bałazy et al. 2024) as the authors' code builds it: ΔW = (lora_alpha / r) · U_r · R · Σ_r · V_rᵀ.

Reference: MohammadrezaBanaei/LoRA-XS, ``utils/initialization_utils.py`` (``find_and_initialize``)
and ``utils/svd_utils.py`` (``get_linear_rec_svd``): a truncated SVD of W0ᵀ gives ``lora_B`` = U_r
and ``lora_A`` = Σ_r V_rᵀ, frozen; the r x r ``default_lora_latent_mapping`` R is trained and starts
as Normal(0, 1e-5²); ``main_glue.py`` uses lora_alpha 16.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputError, require
from ..factored import FactoredDelta
from .base import AdapterLayer, check_scale, register_method
from .spec import METHOD_SPECS

R_INIT_STD = 1e-5
"""The authors' ``init_module_weights(..., sigma=0.00001)`` for R."""
PLACEMENTS = ("input", "output")
"""Which frozen factor carries Σ_r: ``input`` (the authors', Σ_r V_rᵀ) or ``output`` (U_r Σ_r, runs before 0.3)."""


def loraxs_frozen_matrices(weight: Tensor, rank: int, placement: str = "input") -> tuple[Tensor, Tensor]:
    """The frozen outer factors (d_out x r, r x d_in) from W0's rank-r truncated SVD, in float32:
    (U_r, Σ_r V_rᵀ) for the authors' placement, (U_r Σ_r, V_rᵀ) for the legacy one."""
    u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if placement == "input":
        return u.float().contiguous(), (s[:, None] * vh).float()
    return (u * s).float(), vh.float().contiguous()


@register_method
class LoRAXSLinear(AdapterLayer):
    """LoRA-XS: TLoRA's shape with W0's principal subspaces instead of random ones.

    The frozen factors come from the wrapped layer's own W0, so they are rebuilt only from W0:
    a run stores them in ``frozen.safetensors`` for the analyses, and a restored model
    recomputes them from the base model and checks them against the recorded SHA-256 (which
    can fail across LAPACK builds, whose singular vectors may differ in sign). R (r x r) is
    trainable, Normal(0, 1e-5²) at init, seeded by the layer seed. Trainable numbers per layer:
    r²; nothing frozen is random.
    """

    method = "loraxs"
    frozen_names = ("loraxs_A", "loraxs_B")
    scale_buffer = "loraxs_scaling"
    _state_names = ("loraxs_A", "loraxs_B", "loraxs_R", "loraxs_scaling")

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, *, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__(base, rank, seed=seed, dropout=dropout)
        device = base.weight.device
        a, b = loraxs_frozen_matrices(base.weight, rank)
        self.register_buffer("loraxs_A", a.to(device))
        self.register_buffer("loraxs_B", b.to(device))
        r = torch.randn(rank, rank, generator=torch.Generator().manual_seed(seed)) * R_INIT_STD
        self.loraxs_R = nn.Parameter(r.to(device))
        self.lora_alpha = METHOD_SPECS["loraxs"].alpha_default if alpha is None else float(alpha)
        self.scaling = self.lora_alpha / rank
        self._register_scale(self.scaling)

    def low_rank_forward(self, x: Tensor) -> Tensor:
        x = self.dropout(x.to(self.loraxs_R.dtype))
        return ((x @ self.loraxs_B.T) @ self.loraxs_R.T) @ self.loraxs_A.T * self.scaling

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "scaling": self.scaling, "lora_alpha": self.lora_alpha, "placement": "input"}

    @classmethod
    def check_record(cls, record: dict, where: str) -> None:
        check_scale(require(record, "scaling", where), where, "scaling")
        if record.get("placement", "output") not in PLACEMENTS:
            raise InputError(f"{where}: 'placement' should be one of {', '.join(PLACEMENTS)}, got {record.get('placement')!r:.60}")

    @classmethod
    def snapshot_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        return {"loraxs_R": (record["rank"], record["rank"])}

    @classmethod
    def record_from_state(cls, state: dict[str, Tensor]) -> dict[str, Any]:
        rank, scaling = state["loraxs_R"].shape[0], float(state[cls.scale_buffer])
        return {"method": cls.method, "shape": [state["loraxs_A"].shape[0], state["loraxs_B"].shape[-1]], "rank": rank, "seed": 0,
                "scaling": scaling, "lora_alpha": scaling * rank, "placement": "input"}

    @classmethod
    def frozen_shapes(cls, record: dict) -> dict[str, tuple[int, ...]]:
        (d_out, d_in), r = record["shape"], record["rank"]
        return {"loraxs_A": (d_out, r), "loraxs_B": (r, d_in)}

    @classmethod
    def delta_from(cls, record: dict, tensors: dict[str, Tensor], frozen: dict[str, Tensor]) -> FactoredDelta:
        core = float(record["scaling"]) * tensors["loraxs_R"]
        return FactoredDelta(frozen["loraxs_A"].to(core.device), core, frozen["loraxs_B"].to(core.device))

    @classmethod
    def scale_from(cls, record: dict, tensors: dict[str, Tensor]) -> float:
        return float(record["scaling"])

    @classmethod
    def trained_from(cls, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"R": tensors["loraxs_R"]}

    @classmethod
    def parameter_counts(cls, d_out: int, d_in: int, rank: int) -> tuple[int, int]:
        return rank * rank, 0  # the frozen factors are W0's, not random
