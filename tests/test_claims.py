"""The claims registry: each reading on synthetic tables, and the new statistics against dense numpy."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_run
from tlora_analysis import analysis as A
from tlora_analysis.analysis.claims import FINDINGS, READINGS, paper_claims
from tlora_analysis.analysis.distributions import describe
from tlora_analysis.store import load_run


def synthetic_tables(tlora_scale=1.0, cosine=0.9, alpha_spread=0.2, last_change=0.01):
    """Tables shaped like compare_runs' output for 2 modules x 4 layers, with chosen statistics."""
    names = [f"l.{layer}.{module}" for module in ("query", "value") for layer in range(4)]
    rows = []
    for method, scale in (("lora", 1.0), ("tlora", tlora_scale)):
        for name in names:
            module, layer = name.split(".")[2], int(name.split(".")[1])
            for epoch, size in ((1, 1.0 - last_change), (2, 1.0)):
                fro = scale * size * (1 + 0.1 * layer)
                rows.append({"method": method, "name": name, "module": module, "layer": layer, "epoch": epoch,
                             "frobenius": fro, "spectral": fro / 2, "delta_step": fro * 0.05})
    norms = pd.DataFrame(rows)
    spectra = pd.DataFrame([{"method": m, "name": n, "epoch": 2, "index": i, "singular_value": v, "matrix": "ΔW", "magnitude": v}
                            for m in ("lora", "tlora") for n in names for i, v in enumerate([4.0, 2.0, 1.0], start=1)])
    rng = np.random.default_rng(0)
    stats = []
    for method, matrices in (("lora", ("A", "B")), ("tlora", ("B",))):
        for module in ("query", "value"):
            for matrix in matrices:
                stats.append({"method": method, "module": module, "matrix": matrix, "epoch": 2, "layer": -1, "n": 400,
                              **describe(rng.standard_normal(400))})
    scales = pd.DataFrame([{"method": "tlora", "module": module, "layer": layer, "epoch": 2, "alpha": 1 + alpha_spread * layer,
                            "alpha_cv_across_layers": alpha_spread} for module in ("query", "value") for layer in range(4)])
    similarity = pd.DataFrame([{"name": n, "epoch": 2, "cosine": cosine, "baseline_abs_q95": 0.05} for n in names])
    reachable = pd.DataFrame([{"name": n, "epoch": 2, "reachable_cosine": max(cosine, 0.95)} for n in names])
    ranks = pd.DataFrame([{"method": m, "name": n, "epoch": 2, "entropy_rank": 2.5} for m in ("lora", "tlora") for n in names])
    return {"norms": norms, "spectra": spectra, "weight_stats": pd.DataFrame(stats), "scales": scales, "similarity": similarity,
            "reachable": reachable, "core_eigenvalues": spectra, "effective_rank": ranks}


def test_registry_covers_every_finding_with_one_headline_each():
    assert sorted({r.finding for r in READINGS}) == sorted(FINDINGS)
    for finding in FINDINGS:
        assert sum(r.headline for r in READINGS if r.finding == finding) == 1
    assert len(READINGS) >= 18 and len({r.name for r in READINGS}) == len(READINGS)


def test_readings_on_tables_built_to_hold():
    claims = paper_claims(synthetic_tables())
    decided = claims.dropna(subset=["holds"])
    # Every reading that can be computed from these tables holds, except the Gaussian-draw-based ones which hold by construction too.
    assert decided.holds.all(), decided[~decided.holds.astype(bool)][["reading", "statistic"]].to_string()
    missing = claims[claims.holds.isna()]
    assert set(missing.reading.str[:25]) and all(r.startswith("not computed: needs") for r in missing.reason)
    assert (claims.epoch == 2).all()


def test_readings_on_tables_built_to_fail():
    claims = paper_claims(synthetic_tables(tlora_scale=9.0, cosine=0.01, alpha_spread=0.0, last_change=0.3)).set_index("reading")
    assert claims.loc["ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", "value"] == pytest.approx(9.0)
    assert claims.loc["ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", "holds"] is False or not claims.loc[
        "ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", "holds"]
    assert not claims.loc["mean cosine of ΔW over layers", "holds"]
    assert not claims.loc["coefficient of variation of α across layers", "holds"]
    assert claims.loc["relative change of mean ‖ΔW‖_F in the last epoch", "value"] == pytest.approx(0.3)
    assert "9.0x" in claims.loc["ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", "reason"]


def test_reachable_bound_matches_a_least_squares_fit(tmp_path):
    make_run(tmp_path / "lora", "lora", rank=4)
    make_run(tmp_path / "tlora", "tlora", rank=3)
    lora, tlora = load_run(tmp_path / "lora"), load_run(tmp_path / "tlora")
    table = A.reachable_cosine(lora, tlora, epochs=[2])
    for name, t in tlora.deltas(2).items():
        w = lora.deltas(2)[name].dense(torch.float64).numpy()
        a, c = t.left.double().numpy(), t.right.double().numpy()
        # The best A·M·C in least squares: M = A⁺ W C⁺; its cosine with W is the bound.
        m = np.linalg.lstsq(a, np.linalg.lstsq(c.T, w.T, rcond=None)[0].T, rcond=None)[0]
        fit = a @ m @ c
        expected = (fit * w).sum() / (np.linalg.norm(fit) * np.linalg.norm(w))
        assert table[table.name == name].reachable_cosine.iloc[0] == pytest.approx(expected, rel=1e-8)
        # and no A·M·C does better than the bound
        random_m = np.random.default_rng(0).standard_normal(m.shape)
        other = a @ random_m @ c
        assert abs((other * w).sum()) / (np.linalg.norm(other) * np.linalg.norm(w)) <= expected + 1e-12


def test_adapted_weight_similarity_matches_dense(tmp_path):
    make_run(tmp_path / "lora", "lora", rank=4)
    make_run(tmp_path / "tlora", "tlora", rank=3)
    lora, tlora = load_run(tmp_path / "lora"), load_run(tmp_path / "tlora")
    generator = torch.Generator().manual_seed(0)
    base = {n: torch.randn(d.shape, generator=generator, dtype=torch.float64) for n, d in lora.deltas(2).items()}
    table = A.adapted_weight_similarity(lora, tlora, base, epochs=[2])
    for name, w0 in base.items():
        a = w0.numpy() + lora.deltas(2)[name].dense(torch.float64).numpy()
        b = w0.numpy() + tlora.deltas(2)[name].dense(torch.float64).numpy()

        def cos(x, y):
            return (x * y).sum() / (np.linalg.norm(x) * np.linalg.norm(y))

        row = table[table.name == name].iloc[0]
        assert row.adapted_cosine == pytest.approx(cos(a, b), rel=1e-10)
        assert row.w0_cosine_a == pytest.approx(cos(w0.numpy(), a), rel=1e-10)
        assert row.relative_norm_b == pytest.approx(np.linalg.norm(b - w0.numpy()) / np.linalg.norm(w0.numpy()), rel=1e-10)
    assert not math.isnan(table.adapted_cosine.mean())


def test_function_space_cosine_matches_dense_updates_on_captured_inputs(tmp_path, tiny_model_dir):
    from tlora_analysis.data import load_task
    from tlora_analysis.models import load_model, load_tokenizer
    from tlora_analysis.training import TrainConfig, train

    runs = {}
    for method in ("lora", "tlora"):
        config = TrainConfig(method=method, model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=12, batch_size=8)
        runs[method] = train(config, tmp_path / method, progress=False, log=lambda _: None)
    table = A.function_similarity(runs["lora"], runs["tlora"], examples=12, batch_size=5)
    # Independent: every non-padding token's input to each layer in the base model, one example at a time (no padding at all).
    model = load_model(tiny_model_dir, 2).eval()
    tokenizer = load_tokenizer(tiny_model_dir)
    captured = {name: [] for name in table.name}
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, i, n=n: captured[n].append(i[0][0].double())) for n in captured]
    with torch.no_grad():
        for example in load_task("default", max_eval_samples=12, max_train_samples=1).validation:
            model(**tokenizer(example["sentence"], truncation=True, max_length=64, return_tensors="pt"))
    for hook in hooks:
        hook.remove()
    for row in table.itertuples():
        x = torch.cat(captured[row.name]).numpy()
        ya = x @ runs["lora"].deltas(1)[row.name].dense(torch.float64).numpy().T
        yb = x @ runs["tlora"].deltas(1)[row.name].dense(torch.float64).numpy().T
        assert row.tokens == x.shape[0]
        assert row.cosine == pytest.approx((ya * yb).sum() / (np.linalg.norm(ya) * np.linalg.norm(yb)), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("method", ["lora", "lorafa", "tlora", "vera", "loraxs", "full"])
def test_fixed_sides_are_fixed_and_no_other_side_is(tmp_path, method):
    """Two updates one run learned share the spans its spec declares fixed (so the bound of one
    against the other is 1), and adding any undeclared side breaks that: the registry's
    ``fixed_sides`` are exactly the sides training cannot move."""
    from tlora_analysis.analysis._common import fixed_sides
    from tlora_analysis.analysis.similarity import reachable_bound

    make_run(tmp_path / method, method, rank=3)
    run, sides = load_run(tmp_path / method), fixed_sides(method)
    for name, first in run.deltas(1).items():
        second = run.deltas(2)[name]
        assert reachable_bound(second, first, sides) == pytest.approx(1.0, abs=1e-9)
        for extra in {"left", "right"} - set(sides):
            if first.rank < first.shape[extra == "right"]:  # a span of the whole space is fixed trivially
                assert reachable_bound(second, first, {*sides, extra}) < 0.999


def test_one_sided_bound_matches_a_least_squares_fit(tmp_path):
    """LoRA-FA learns M·A with A frozen: the best cosine with W is that of W's least-squares fit W A⁺ A."""
    make_run(tmp_path / "lora", "lora", rank=4)
    make_run(tmp_path / "lorafa", "lorafa", rank=3)
    table = A.reachable_cosine(load_run(tmp_path / "lora"), load_run(tmp_path / "lorafa"), epochs=[2])
    for name, t in load_run(tmp_path / "lorafa").deltas(2).items():
        w = load_run(tmp_path / "lora").deltas(2)[name].dense(torch.float64).numpy()
        a = t.right.double().numpy()
        fit = w @ np.linalg.pinv(a) @ a
        expected = (fit * w).sum() / (np.linalg.norm(fit) * np.linalg.norm(w))
        assert table[table.name == name].reachable_cosine.iloc[0] == pytest.approx(expected, rel=1e-8)


def test_random_reachable_bound_is_the_mean_over_random_subspaces():
    from tlora_analysis.analysis.similarity import random_reachable_bound, reachable_bound
    from tlora_analysis.factored import FactoredDelta

    generator = torch.Generator().manual_seed(0)
    d_out, d_in, r = 24, 16, 3
    target = FactoredDelta(torch.randn(d_out, 5, generator=generator, dtype=torch.float64), torch.eye(5, dtype=torch.float64),
                           torch.randn(5, d_in, generator=generator, dtype=torch.float64))
    for sides in [("left", "right"), ("right",)]:
        squares = [reachable_bound(target, FactoredDelta(torch.randn(d_out, r, generator=generator), torch.eye(r),
                                                         torch.randn(r, d_in, generator=generator)), sides) ** 2 for _ in range(4000)]
        assert math.sqrt(np.mean(squares)) == pytest.approx(random_reachable_bound((d_out, d_in), r, sides), rel=0.03)


def test_pattern_readings_compare_curve_shapes_not_sizes():
    """TLoRA's norms nine times LoRA's but growing along the same curve: the pattern holds where the
    ratio fails; a curve that bends differently fails it, with the epoch of the largest gap."""
    tables = synthetic_tables(tlora_scale=9.0)
    norms = tables["norms"]
    tables["norms"] = norms.assign(cosine_to_last=np.where(norms.epoch == 2, 1.0, 0.8))
    claims = paper_claims(tables).set_index("reading")
    growth = "pattern: norm growth ‖ΔW_e‖_F / ‖ΔW_last‖_F over epochs, TLoRA's curve against LoRA's"
    trajectory = "pattern: trajectory cos(ΔW_e, ΔW_last) over epochs, TLoRA's curve against LoRA's"
    assert claims.loc[growth, "holds"] and claims.loc[growth, "value"] == pytest.approx(0.0, abs=1e-12)
    assert claims.loc[trajectory, "holds"]
    assert not claims.loc["ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA", "holds"]
    bent = tables["norms"].copy()
    early = (bent.method == "tlora") & (bent.epoch == 1)
    bent.loc[early, "frobenius"] *= 0.5
    bent.loc[early, "cosine_to_last"] = 0.3
    claims = paper_claims({**tables, "norms": bent}).set_index("reading")
    assert not claims.loc[growth, "holds"] and "epoch 1" in claims.loc[growth, "statistic"]
    assert claims.loc[growth, "value"] == pytest.approx(0.99 / 2, rel=1e-9)  # 0.99 of the final norm for LoRA, half that for TLoRA
    assert claims.loc[trajectory, "value"] == pytest.approx(0.5) and not claims.loc[trajectory, "holds"]
