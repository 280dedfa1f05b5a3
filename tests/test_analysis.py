"""Every analysis against an independent dense computation (numpy SVD, numpy histogram, scipy.stats)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import ToyModel, make_run
from tlora_analysis import analysis as A
from tlora_analysis import inject_adapters
from tlora_analysis.errors import InputError
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.store import load_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    make_run(root / "lora", "lora", rank=4)
    make_run(root / "tlora", "tlora", rank=3)
    make_run(root / "lora_seed1", "lora", rank=4, seed=1)
    return {name: load_run(root / name) for name in ("lora", "tlora", "lora_seed1")}


def dense(run, epoch):
    return {n: d.dense(torch.float64).numpy() for n, d in run.deltas(epoch).items()}


@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_spectra_and_effective_rank_match_numpy(runs, method):
    run = runs[method]
    table = A.spectra(run)
    ranks = A.effective_rank(run)
    assert set(table.columns) >= {"run", "method", "module", "layer", "epoch", "index", "singular_value", "eigenvalue"}
    for epoch in (1, 3):
        for name, w in dense(run, epoch).items():
            s = np.linalg.svd(w, compute_uv=False)[: run.rank]
            rows = table[(table.name == name) & (table.epoch == epoch)].sort_values("index")
            np.testing.assert_allclose(rows.singular_value, s, rtol=1e-8)
            np.testing.assert_allclose(rows.eigenvalue, np.linalg.eigvalsh(w.T @ w)[::-1][: run.rank], rtol=1e-7, atol=1e-12)
            r = ranks[(ranks.name == name) & (ranks.epoch == epoch)].iloc[0]
            assert r.stable_rank == pytest.approx(np.linalg.norm(w, "fro") ** 2 / np.linalg.norm(w, 2) ** 2, rel=1e-8)
            p = s / s.sum()
            assert r.entropy_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-8)
            energy = np.cumsum(s**2) / np.sum(s**2)
            assert r.energy_rank_90 == int(np.argmax(energy >= 0.9) + 1)
    assert ranks[ranks.epoch == 0].stable_rank.isna().all()
    assert sorted(table.layer.unique()) == [0, 1, 2] and set(table.module) == {"query", "value"}


def test_core_eigenvalues_of_tlora_b(runs):
    run = runs["tlora"]
    table = A.core_eigenvalues(run, epochs=[2])
    for name, matrices in run.trainable(2).items():
        expected = sorted(np.linalg.eigvals(matrices["B"].double().numpy()), key=lambda v: -abs(v))
        rows = table[table.name == name].sort_values("index")
        np.testing.assert_allclose(rows.real + 1j * rows.imag, expected, rtol=1e-8)
    assert set(table.matrix) == {"B"}
    lora = runs["lora"]
    table = A.core_eigenvalues(lora, epochs=[2])
    for name, w in dense(lora, 2).items():
        if w.shape[0] != w.shape[1]:
            assert name not in set(table.name)
            continue
        rows = table[table.name == name].sort_values("index")
        # the nonzero eigenvalues of the square ΔW, from numpy's dense eigen-decomposition
        expected = sorted(np.linalg.eigvals(w), key=lambda v: -abs(v))[: len(rows)]
        np.testing.assert_allclose(rows.magnitude, np.abs(expected), rtol=1e-6, atol=1e-10)


def test_norms_and_steps_match_numpy(runs):
    run = runs["lora"]
    table = A.norms(run)
    for epoch in (1, 2, 3):
        now, before = dense(run, epoch), dense(run, epoch - 1)
        trainable = run.trainable(epoch)
        for name, w in now.items():
            row = table[(table.name == name) & (table.epoch == epoch)].iloc[0]
            assert row.frobenius == pytest.approx(np.linalg.norm(w, "fro"), rel=1e-9)
            assert row.spectral == pytest.approx(np.linalg.norm(w, 2), rel=1e-9)
            assert row.delta_step == pytest.approx(np.linalg.norm(w - before[name], "fro"), rel=1e-7)
            assert row.frobenius_change == pytest.approx(np.linalg.norm(w, "fro") - np.linalg.norm(before[name], "fro"), abs=1e-9)
            assert row.A_frobenius == pytest.approx(float(trainable[name]["A"].norm()), rel=1e-6)
            assert row.B_frobenius == pytest.approx(float(trainable[name]["B"].norm()), rel=1e-6)
    assert table[table.epoch == 0].delta_step.isna().all()


def test_scales_and_their_variation(runs):
    table = A.scales(runs["tlora"])
    for epoch in (1, 3):
        for module in ("query", "value"):
            alphas = np.array([a for n, a in runs["tlora"].scales(epoch).items() if n.endswith(module)])
            row = table[(table.epoch == epoch) & (table.module == module)].iloc[0]
            assert row.alpha_mean_across_layers == pytest.approx(alphas.mean())
            assert row.alpha_std_across_layers == pytest.approx(alphas.std())
            assert row.alpha_cv_across_layers == pytest.approx(alphas.std() / abs(alphas.mean()))
    assert len(A.scale_variation(table)) == 2 * 4
    with pytest.raises(InputError, match="only methods that learn a scale per layer"):
        A.scales(runs["lora"])


def test_weight_distributions_match_scipy(runs):
    run = runs["tlora"]
    per_layer = A.weight_distributions(run, epochs=[2])
    pooled = A.weight_distributions(run, epochs=[2], pool=True)
    hist = A.weight_histograms(run, epochs=[2], bins=12, pool=False)
    for name, matrices in run.trainable(2).items():
        values = matrices["B"].double().flatten().numpy()
        module, layer = A.module_and_layer(name)
        row = per_layer[(per_layer.module == module) & (per_layer.layer == layer)].iloc[0]
        assert row["mean"] == pytest.approx(values.mean()) and row["std"] == pytest.approx(values.std())
        assert row.skewness == pytest.approx(stats.skew(values))
        assert row.excess_kurtosis == pytest.approx(stats.kurtosis(values))
        assert row.normality_p == pytest.approx(stats.shapiro(values).pvalue)
        counts, edges = np.histogram(values, bins=12)
        h = hist[(hist.module == module) & (hist.layer == layer)].sort_values("bin")
        np.testing.assert_array_equal(h["count"], counts)
        np.testing.assert_allclose(h.left, edges[:-1])
    for module in ("query", "value"):
        values = np.concatenate([m["B"].double().flatten().numpy() for n, m in run.trainable(2).items() if n.endswith(module)])
        row = pooled[pooled.module == module].iloc[0]
        assert row.layer == -1 and row.n == values.size and row.skewness == pytest.approx(stats.skew(values))
    zero = A.weight_distributions(run, epochs=[0])
    assert zero["std"].eq(0).all() and zero.skewness.isna().all()
    assert set(A.weight_distributions(runs["lora"], epochs=[1]).matrix) == {"A", "B"}


def test_update_similarity_matches_dense_cosine_and_has_a_baseline(runs):
    table = A.update_similarity(runs["lora"], runs["tlora"], baseline_samples=16)
    for epoch in (1, 3):
        a, b = dense(runs["lora"], epoch), dense(runs["tlora"], epoch)
        for name in a:
            expected = np.sum(a[name] * b[name]) / (np.linalg.norm(a[name]) * np.linalg.norm(b[name]))
            row = table[(table.name == name) & (table.epoch == epoch)].iloc[0]
            assert row.cosine == pytest.approx(expected, rel=1e-8)
    untrained = table[table.epoch == 0]  # zero updates have no direction: reported as 0, with a note
    assert (untrained.cosine == 0).all() and untrained.note.str.startswith("zero update in").all()
    trained = table[table.epoch > 0]
    assert (trained.baseline_abs_mean > 0).all() and (trained.baseline_abs_q95 < 1).all()
    assert table[table.epoch == 0].baseline_abs_mean.isna().all()
    same = A.update_similarity(runs["lora"], runs["lora"], epochs=[2], baseline_samples=0)
    np.testing.assert_allclose(same.cosine, 1.0)


def test_mismatched_runs_are_named(runs, tmp_path):
    make_run(tmp_path / "short", "tlora", rank=3, n_layers=2)
    shared = A.update_similarity(runs["lora"], load_run(tmp_path / "short"))  # the modules both adapt
    assert set(shared.name) == {f"layers.{i}.{m}" for i in (0, 1) for m in ("query", "value")}
    query_only = inject_adapters(ToyModel(3), "lora", 4, ["query"])
    with DeltaRecorder(query_only, tmp_path / "query") as recorder:
        recorder.snapshot(0)
        recorder.finish()
    value_only = inject_adapters(ToyModel(3), "lora", 4, ["value"])
    with DeltaRecorder(value_only, tmp_path / "value") as recorder:
        recorder.snapshot(0)
        recorder.finish()
    with pytest.raises(InputError, match=r"share no adapted module \(query: layers\.0\.query.*; value: layers\.0\.value"):
        A.update_similarity(tmp_path / "query", tmp_path / "value")
    with pytest.raises(InputError, match="has no epoch 7"):
        A.norms(runs["lora"], epochs=[7])


def test_subspace_similarity_matches_definition(runs):
    a, b = runs["lora"].deltas(3), runs["lora_seed1"].deltas(3)
    name = "layers.1.query"
    phi = A.subspace_similarity(a[name], b[name], 4, 4)
    u_a = np.linalg.svd(dense(runs["lora"], 3)[name])[0]
    u_b = np.linalg.svd(dense(runs["lora_seed1"], 3)[name])[0]
    for i in range(1, 5):
        for j in range(1, 5):
            expected = np.linalg.norm(u_a[:, :i].T @ u_b[:, :j], "fro") ** 2 / min(i, j)
            assert phi[i - 1, j - 1] == pytest.approx(expected, rel=1e-8)
    np.testing.assert_allclose(np.diag(A.subspace_similarity(a[name], a[name])), 1.0)
    baseline = A.random_subspace_similarity(200, 4, 4, samples=64)
    expected = np.maximum.outer(np.arange(1, 5), np.arange(1, 5)) / 200
    np.testing.assert_allclose(baseline, expected, rtol=0.35)
    table = A.subspace_similarity_table(runs["lora"], runs["lora"], epochs=[1, 2, 3], epoch_b=3)
    last = table[(table.epoch == 3) & (table.i == table.j)]
    np.testing.assert_allclose(last.phi, 1.0, atol=1e-9)  # across epochs of one run: the last epoch with itself
    assert np.isnan(A.subspace_similarity(runs["lora"].deltas(0)[name], a[name])).all()


def test_amplification_and_intruders_match_dense(runs):
    run = runs["lora"]
    base = {n: m.base.weight.detach() for n, m in _base_layers(run).items()}
    amp = A.amplification(run, base, epochs=[2])
    intr = A.intruder_dimensions(run, base, epochs=[2], k=5, epsilon=0.5)
    for name, w in dense(run, 2).items():
        w0 = base[name].double().numpy()
        u, s, vh = np.linalg.svd(w, full_matrices=False)
        u, vh = u[:, : run.rank], vh[: run.rank]
        projection = np.linalg.norm(u.T @ w0 @ vh.T, "fro")
        row = amp[amp.name == name].iloc[0]
        assert row.w0_projection == pytest.approx(projection, rel=1e-7)
        assert row.amplification == pytest.approx(np.linalg.norm(w, "fro") / projection, rel=1e-7)
        assert row.w0_top_projection >= row.w0_projection
        x = np.linalg.svd(w0)[0]
        y = np.linalg.svd(w0 + w)[0][:, :5]
        best = np.abs(y.T @ x).max(axis=1)
        rows = intr[intr.name == name].sort_values("j")
        np.testing.assert_allclose(rows.max_similarity, best, rtol=1e-7)
        np.testing.assert_array_equal(rows.is_intruder, best < 0.5)
    counts = A.intruder_counts(intr)
    assert len(counts) == 6 and counts.intruders.sum() == intr.is_intruder.sum()
    with pytest.raises(InputError, match="no base weight"):
        A.amplification(run, {}, epochs=[1])


def test_loaded_weights_keep_each_w0_svd_for_every_run(runs, monkeypatch):
    """A model loaded whole gives the same tables as a plain mapping, with W0's SVD computed once per module
    for all runs instead of once per run."""
    import pandas as pd

    from tlora_analysis import base_weights as store

    base = {n: m.base.weight.detach() for n, m in _base_layers(runs["lora"]).items()}
    pair = (runs["lora"], runs["lora_seed1"])

    def tables(weights):
        return [f(r, weights, epochs=[2]) for r in pair for f in (A.amplification, A.intruder_dimensions)]

    plain, calls, svd = tables(base), [], store._svd
    monkeypatch.setattr(store, "_svd", lambda w: calls.append(w) or svd(w))
    for ours, reference in zip(tables(store.LoadedWeights(base)), plain):
        pd.testing.assert_frame_equal(ours, reference, rtol=1e-10)
    assert len(calls) == len(base)


def _base_layers(run):
    from tlora_analysis import adapter_layers, inject_adapters

    return adapter_layers(inject_adapters(ToyModel(), "lora", 4, ["query", "value"]))


def test_summary_and_paths(runs):
    table = A.summary(str(runs["tlora"].path))
    assert len(table) == 1
    row = table.iloc[0]
    assert row.method == "tlora" and row.final_metric == pytest.approx(0.8)
    assert row.adapter_trainable_params == 6 * (9 + 1)
    assert row.mean_delta_frobenius == pytest.approx(A.norms(runs["tlora"], [3]).frobenius.mean())
    assert not math.isnan(row.alpha_cv_across_layers)


@pytest.mark.slow
def test_analyses_on_a_real_training_run(tmp_path):
    from tlora_analysis.training import TrainConfig, train

    kwargs = dict(epochs=2, max_train_samples=96, max_eval_samples=32, batch_size=16, max_length=24)
    lora = train(TrainConfig(method="lora", **kwargs), tmp_path / "lora", progress=False, log=lambda _: None)
    tlora = train(TrainConfig(method="tlora", **kwargs), tmp_path / "tlora", progress=False, log=lambda _: None)
    sim = A.update_similarity(lora, tlora, epochs=[2], baseline_samples=4)
    for name, w in dense(lora, 2).items():
        v = dense(tlora, 2)[name]
        assert sim[sim.name == name].cosine.iloc[0] == pytest.approx(np.sum(w * v) / np.linalg.norm(w) / np.linalg.norm(v), rel=1e-6)
    spectra = A.spectra(tlora, epochs=[2])
    w = dense(tlora, 2)["bert.encoder.layer.5.attention.self.value"]
    np.testing.assert_allclose(spectra[spectra.name == "bert.encoder.layer.5.attention.self.value"].sort_values("index").singular_value,
                               np.linalg.svd(w, compute_uv=False)[:8], rtol=1e-6)
    assert len(A.scales(tlora)) == 12 * 3


def test_batched_random_baseline_equals_one_cosine_at_a_time(runs):
    from tlora_analysis.analysis.similarity import RandomUpdates, random_like
    from tlora_analysis.factored import cosine_similarity

    b = next(iter(runs["tlora"].deltas(2).values()))
    a = next(iter(runs["lora"].deltas(2).values()))
    batched = RandomUpdates(a, 8, torch.Generator().manual_seed(5)).cosines(b)
    generator = torch.Generator().manual_seed(5)
    one_by_one = [cosine_similarity(random_like(a, generator), b) for _ in range(8)]
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-9, atol=1e-12)


def test_top_singular_vectors_of_large_matrices_match_a_full_svd():
    from tlora_analysis.analysis.base_alignment import top_left_singular_vectors

    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(300, 200, generator=generator, dtype=torch.float64) @ torch.diag(torch.linspace(3, 0.1, 200, dtype=torch.float64))
    fast = top_left_singular_vectors(matrix, 10).numpy()  # ARPACK (min dimension 200 > 64)
    exact = np.linalg.svd(matrix.numpy(), full_matrices=False)[0][:, :10]
    np.testing.assert_allclose(np.abs((fast * exact).sum(axis=0)), 1.0, atol=1e-8)  # the same vectors, up to sign


def test_cosine_to_last_matches_dense(tmp_path):
    make_run(tmp_path / "run", "tlora", rank=3)
    run = load_run(tmp_path / "run")
    table = A.norms(run)
    for row in table.itertuples():
        now, last = run.deltas(row.epoch)[row.name].dense(torch.float64).numpy(), run.deltas(3)[row.name].dense(torch.float64).numpy()
        if row.epoch == 0:
            assert math.isnan(row.cosine_to_last)  # the zero update has no direction
        else:
            assert row.cosine_to_last == pytest.approx((now * last).sum() / (np.linalg.norm(now) * np.linalg.norm(last)), rel=1e-9)
