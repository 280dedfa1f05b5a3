"""Low-rank updates kept in factored form: ΔW = left · core · right.

Every analysis in the package takes a :class:`FactoredDelta`. Its norms, singular
values and inner products come from thin QR factorizations of the outer factors and
an SVD of a small core, in O((d_out + d_in) · r²), so a 4096 x 4096 update of rank 16
costs kilobytes and microseconds instead of 64 MiB and a dense SVD.

The algebra (``docs/quantities.md``): with L = Q_L R_L and Rᵀ = Q_R R_R,
ΔW = Q_L (R_L K R_Rᵀ) Q_Rᵀ, so the SVD of the r x r' matrix M = R_L K R_Rᵀ gives the
SVD of ΔW. All of it is computed in float64: the factors are tiny, and analysis
numbers should not depend on whether training ran in bfloat16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

__all__ = ["FactoredDelta", "inner", "cosine_similarity", "hadamard", "kronecker"]


@dataclass(frozen=True, eq=False)
class FactoredDelta:
    """ΔW = left @ core @ right, with left (d_out x r), core (r x r'), right (r' x d_in).

    For LoRA the core is ``s · I`` (left = B, right = A); for TLoRA it is ``α · B``
    (left = A, right = C). Nothing here forms the d_out x d_in matrix except
    :meth:`dense`.
    """

    left: Tensor
    core: Tensor
    right: Tensor

    def __post_init__(self) -> None:
        for name in ("left", "core", "right"):
            t = getattr(self, name)
            if not isinstance(t, Tensor) or t.ndim != 2:
                raise ValueError(f"FactoredDelta.{name} must be a 2-D tensor, got {_describe(t)}")
        if self.left.shape[1] != self.core.shape[0] or self.core.shape[1] != self.right.shape[0]:
            raise ValueError(
                "FactoredDelta factors do not chain: left "
                f"{tuple(self.left.shape)} · core {tuple(self.core.shape)} · right {tuple(self.right.shape)}"
            )

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, int]:
        """(d_out, d_in) of the update, as for ``nn.Linear.weight``."""
        return (self.left.shape[0], self.right.shape[1])

    @property
    def rank(self) -> int:
        """Nominal rank: the smaller inner dimension. The numerical rank may be lower."""
        return min(self.core.shape)

    def dense(self, dtype: torch.dtype | None = None) -> Tensor:
        """Materialize ΔW (d_out x d_in), multiplying in ``dtype`` if given. Only for callers that really need it."""
        if dtype is None:
            return self.left @ self.core @ self.right
        return self.left.to(dtype) @ self.core.to(dtype) @ self.right.to(dtype)

    # ------------------------------------------------------------ algebra
    @cached_property
    def _svd(self) -> tuple[Tensor, Tensor, Tensor]:
        q_left, r_left = torch.linalg.qr(_float64(self.left))  # reduced: (d_out, m), (m, r)
        q_right, r_right = torch.linalg.qr(_float64(self.right).T)  # (d_in, n), (n, r')
        small = r_left @ _float64(self.core) @ r_right.T
        u_small, s, vh_small = torch.linalg.svd(small, full_matrices=False)
        return q_left @ u_small, s, q_right @ vh_small.T

    @cached_property
    def _values(self) -> Tensor:
        # Values alone need only the triangular factors: mode="r" skips forming Q, about half
        # the QR's cost, and svdvals skips the small singular vectors.
        # One outer factor at a time, so only one float64 copy of a d x r matrix is alive.
        if "_svd" in self.__dict__:
            return self._svd[1]
        r_left = torch.linalg.qr(_float64(self.left), mode="r")[1]
        r_right = torch.linalg.qr(_float64(self.right).T, mode="r")[1]
        return torch.linalg.svdvals(r_left @ _float64(self.core) @ r_right.T)

    def svd(self) -> tuple[Tensor, Tensor, Tensor]:
        """Thin SVD ``(U, S, V)`` with ΔW = U diag(S) Vᵀ; U is d_out x k, V is d_in x k (float64)."""
        return self._svd

    def singular_values(self) -> Tensor:
        """Singular values of ΔW in descending order (float64, length = rank)."""
        return self._values

    def top_singular_vectors(self, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The top-k left vectors, singular values and right vectors (all of them if k is None)."""
        u, s, v = self._svd
        k = len(s) if k is None else k
        return u[:, :k], s[:k], v[:, :k]

    def frobenius_norm(self) -> float:
        """‖ΔW‖_F, equal to ‖S‖₂."""
        return float(torch.linalg.vector_norm(self.singular_values()))

    def spectral_norm(self) -> float:
        """‖ΔW‖₂, the largest singular value (0 for an all-zero update)."""
        s = self.singular_values()
        return float(s[0]) if len(s) else 0.0

    # ------------------------------------------------------- constructors
    @classmethod
    def from_dense(cls, weight: Tensor, rank: int | None = None) -> FactoredDelta:
        """Factor a dense update (e.g. W_ft − W0 of a full fine-tune), optionally truncated to ``rank``.

        Costs one dense SVD; everything after it is factored. That SVD is kept as the update's own (its factors are
        already orthonormal and its core diagonal), so its singular values and vectors are never computed again.
        """
        if weight.ndim != 2:
            raise ValueError(f"from_dense needs a 2-D matrix, got shape {tuple(weight.shape)}")
        u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
        k = len(s) if rank is None else min(rank, len(s))
        delta = cls(u[:, :k], torch.diag(s[:k]), vh[:k])
        delta.__dict__["_svd"] = (delta.left, s[:k], delta.right.T)  # cached_property's slot: ΔW = U diag(S) Vᵀ
        return delta

    @classmethod
    def diagonal(cls, left: Tensor, diagonal: Tensor | float, right: Tensor) -> FactoredDelta:
        """ΔW = left · diag(d) · right, ``d`` a vector of r or one number (LoRA's s·I, VeRA's λ_d, AdaLoRA's E).

        A rank above min(d_out, d_in) is valid (peft builds r = 8 on a 2-label head), but an r x r core would
        make memory follow r² (VeRA's r = 20,000 on a 384 x 384 layer: 3 GB for a diagonal). There the product is
        formed, at most the layer's own d_out x d_in, and factored; below it the factors are kept as they are."""
        rank = left.shape[1]
        values = torch.as_tensor(diagonal, dtype=left.dtype, device=left.device)
        values = values.expand(rank) if values.ndim == 0 else values
        if rank > min(left.shape[0], right.shape[1]):
            return cls.from_dense((left * values) @ right.to(left.dtype))
        return cls(left, torch.diag(values), right)

    @classmethod
    def zeros(cls, shape: tuple[int, int]) -> FactoredDelta:
        """The zero update of a d_out x d_in layer (a state known to be ΔW = 0, such as peft's identity init)."""
        return cls(torch.zeros(shape[0], 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                   torch.zeros(1, shape[1], dtype=torch.float64))

    def transpose(self) -> FactoredDelta:
        """ΔWᵀ, still factored (used for fan_in_fan_out layers such as GPT-2's Conv1D)."""
        return FactoredDelta(self.right.T, self.core.T, self.left.T)

    def to(self, *args, **kwargs) -> FactoredDelta:
        """Move or cast all three factors, like ``Tensor.to``."""
        return FactoredDelta(*(t.to(*args, **kwargs) for t in (self.left, self.core, self.right)))


def inner(a: FactoredDelta, b: FactoredDelta) -> float:
    """Frobenius inner product ⟨ΔW_a, ΔW_b⟩ = trace(K_aᵀ (L_aᵀ L_b) K_b (R_b R_aᵀ)).

    Only r_a x r_b products are formed, so the two ranks may differ (LoRA r=8 vs TLoRA r=4).
    """
    if a.shape != b.shape:
        raise ValueError(f"cannot compare updates of shapes {a.shape} and {b.shape}")
    left_gram = _gram(a.left, b.left)  # L_aᵀ L_b
    right_gram = _gram(b.right.T, a.right.T)  # R_b R_aᵀ
    return float(torch.trace(_float64(a.core).T @ left_gram @ _float64(b.core) @ right_gram))


def cosine_similarity(a: FactoredDelta, b: FactoredDelta) -> float:
    """Frobenius cosine ⟨ΔW_a, ΔW_b⟩ / (‖ΔW_a‖_F ‖ΔW_b‖_F).

    Returns NaN when either update is exactly zero (as at epoch 0, where B = 0): the
    direction of a zero update is undefined, and 0 would wrongly read as "orthogonal".
    """
    norm_a, norm_b = a.frobenius_norm(), b.frobenius_norm()
    if norm_a == 0.0 or norm_b == 0.0:
        return math.nan
    return inner(a, b) / (norm_a * norm_b)


def _float64(tensor: Tensor) -> Tensor:
    return tensor.detach().to(torch.float64)


def _gram(x: Tensor, y: Tensor, block: int = 1024) -> Tensor:
    """xᵀy accumulated in float64 a block of rows at a time: exact as a float64 product, without
    holding float64 copies of two d x r factors (and, measured, as fast as one GEMM or faster)."""
    out = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], block):
        out += _float64(x[start : start + block]).T @ _float64(y[start : start + block])
    return out


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__


def hadamard(a: FactoredDelta, b: FactoredDelta) -> FactoredDelta:
    """ΔW_a ⊙ ΔW_b, still factored (LoHa's update): row i of the left factor is the Kronecker product of
    row i of L_a·K_a and of L_b·K_b, column j of the right factor that of column j of R_a and of R_b,
    so the rank is at most r_a·r_b and nothing d_out x d_in is formed."""
    if a.shape != b.shape:
        raise ValueError(f"cannot multiply updates of shapes {a.shape} and {b.shape} entrywise")
    left_a, left_b = _float64(a.left) @ _float64(a.core), _float64(b.left) @ _float64(b.core)
    left = (left_a[:, :, None] * left_b[:, None, :]).reshape(a.shape[0], -1)
    right = (_float64(a.right)[:, None, :] * _float64(b.right)[None, :, :]).reshape(-1, a.shape[1])
    return FactoredDelta(left, torch.eye(left.shape[1], dtype=torch.float64), right)


def kronecker(a: FactoredDelta, b: FactoredDelta) -> FactoredDelta:
    """ΔW_a ⊗ ΔW_b, still factored (LoKr's update): kron(L_a, L_b) · kron(K_a, K_b) · kron(R_a, R_b), so the
    singular values are the products of the factors' (their SVDs need only the small factors)."""
    return FactoredDelta(*(torch.kron(_float64(x).contiguous(), _float64(y).contiguous())  # kron refuses strided views (SVD slices)
                           for x, y in ((a.left, b.left), (a.core, b.core), (a.right, b.right))))
