"""FactoredDelta against the dense computation it replaces."""

import math

import numpy as np
import pytest
import torch

from tlora_analysis import FactoredDelta, cosine_similarity, inner

SHAPES = [(40, 30, 4, 4), (30, 50, 8, 8), (64, 16, 3, 5), (7, 9, 7, 2)]


def random_delta(d_out, d_in, r, r2, seed, dtype=torch.float64, core=None):
    g = torch.Generator().manual_seed(seed)
    left = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    right = torch.randn(r2, d_in, generator=g, dtype=torch.float64)
    core = torch.randn(r, r2, generator=g, dtype=torch.float64) if core is None else core
    return FactoredDelta(left.to(dtype), core.to(dtype), right.to(dtype))


def dense64(delta):
    return delta.left.double() @ delta.core.double() @ delta.right.double()


@pytest.mark.parametrize("d_out,d_in,r,r2", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_spectrum_and_norms_match_dense_svd(d_out, d_in, r, r2, dtype):
    delta = random_delta(d_out, d_in, r, r2, seed=d_out + r, dtype=dtype)
    w = dense64(delta).numpy()
    s_dense = np.linalg.svd(w, compute_uv=False)[: delta.rank]
    np.testing.assert_allclose(delta.singular_values().numpy(), s_dense, rtol=1e-9, atol=1e-9 * s_dense[0])
    assert delta.frobenius_norm() == pytest.approx(np.linalg.norm(w, "fro"), rel=1e-10)
    assert delta.spectral_norm() == pytest.approx(np.linalg.norm(w, 2), rel=1e-10)
    assert delta.shape == (d_out, d_in)
    assert delta.rank == min(r, r2)


@pytest.mark.parametrize("d_out,d_in,r,r2", SHAPES)
def test_svd_reconstructs_and_is_orthonormal(d_out, d_in, r, r2):
    delta = random_delta(d_out, d_in, r, r2, seed=3)
    u, s, v = delta.svd()
    torch.testing.assert_close(u @ torch.diag(s) @ v.T, dense64(delta), rtol=1e-10, atol=1e-10)
    k = len(s)
    torch.testing.assert_close(u.T @ u, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(v.T @ v, torch.eye(k, dtype=torch.float64), atol=1e-10, rtol=0)


def test_top_singular_vectors_match_dense_up_to_sign():
    delta = random_delta(50, 40, 6, 6, seed=5)
    u, s, v = delta.top_singular_vectors(3)
    u_d, s_d, vh_d = np.linalg.svd(dense64(delta).numpy())
    np.testing.assert_allclose(s.numpy(), s_d[:3], rtol=1e-10)
    for j in range(3):  # singular vectors are defined up to sign
        assert abs(float(u[:, j] @ torch.from_numpy(u_d[:, j]))) == pytest.approx(1.0, abs=1e-8)
        assert abs(float(v[:, j] @ torch.from_numpy(vh_d[j]))) == pytest.approx(1.0, abs=1e-8)


def test_rank_deficient_core():
    core = torch.diag(torch.tensor([3.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    delta = random_delta(30, 20, 4, 4, seed=1, core=core)
    s_dense = np.linalg.svd(dense64(delta).numpy(), compute_uv=False)[:4]
    np.testing.assert_allclose(delta.singular_values().numpy(), s_dense, atol=1e-10)
    assert delta.singular_values()[2:].abs().max() < 1e-10


def test_zero_core_gives_zero_norms_and_nan_cosine():
    zero = random_delta(20, 10, 4, 4, seed=2, core=torch.zeros(4, 4, dtype=torch.float64))
    other = random_delta(20, 10, 4, 4, seed=3)
    assert zero.frobenius_norm() == 0.0
    assert zero.spectral_norm() == 0.0
    assert inner(zero, other) == 0.0
    assert math.isnan(cosine_similarity(zero, other))


@pytest.mark.parametrize("ra,rb", [(8, 4), (4, 8), (6, 6)])
def test_inner_and_cosine_across_ranks(ra, rb):
    a = random_delta(48, 32, ra, ra, seed=10)
    b = random_delta(48, 32, rb, rb, seed=11)
    wa, wb = dense64(a).numpy(), dense64(b).numpy()
    assert inner(a, b) == pytest.approx(float(np.sum(wa * wb)), rel=1e-10)
    expected = np.sum(wa * wb) / (np.linalg.norm(wa) * np.linalg.norm(wb))
    assert cosine_similarity(a, b) == pytest.approx(float(expected), rel=1e-10)
    assert cosine_similarity(a, a) == pytest.approx(1.0, abs=1e-12)
    negated = FactoredDelta(a.left, -a.core, a.right)
    assert cosine_similarity(a, negated) == pytest.approx(-1.0, abs=1e-12)


def test_from_dense_and_transpose():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 9, generator=g, dtype=torch.float64)
    full = FactoredDelta.from_dense(w)
    torch.testing.assert_close(full.dense(), w)
    truncated = FactoredDelta.from_dense(w, rank=3)
    s = np.linalg.svd(w.numpy(), compute_uv=False)
    np.testing.assert_allclose(truncated.singular_values().numpy(), s[:3], rtol=1e-12)
    torch.testing.assert_close(full.transpose().dense(), w.T)


def test_bad_factors_are_rejected():
    with pytest.raises(ValueError, match="do not chain"):
        FactoredDelta(torch.zeros(5, 3), torch.zeros(4, 4), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="2-D"):
        FactoredDelta(torch.zeros(5), torch.zeros(4, 4), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="shapes"):
        inner(random_delta(5, 6, 2, 2, 0), random_delta(6, 5, 2, 2, 0))


def test_a_dense_update_keeps_its_own_svd_and_it_equals_the_factored_one():
    """from_dense's SVD is the update's: the values and vectors the QR path would compute from its factors, without
    computing them again (a dense-read method's ΔW is read once per layer and state)."""
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    kept = FactoredDelta.from_dense(w)
    again = FactoredDelta(kept.left.clone(), kept.core.clone(), kept.right.clone())
    assert "_svd" in kept.__dict__ and "_svd" not in again.__dict__
    assert torch.allclose(kept.singular_values(), again.singular_values(), atol=1e-12)
    u, s, v = kept.svd()
    assert torch.allclose(u @ torch.diag(s) @ v.T, w, atol=1e-12)
    for (a, b) in zip(kept.top_singular_vectors(3), again.top_singular_vectors(3)):
        assert torch.allclose(a.abs(), b.abs(), atol=1e-9)  # vectors up to sign
    truncated = FactoredDelta.from_dense(w, rank=3)
    assert torch.allclose(truncated.singular_values(), kept.singular_values()[:3], atol=1e-12)
