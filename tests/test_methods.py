"""TLoRA's relatives as method classes: VeRA against peft, LoRA-XS against a dense SVD of W0,
full fine-tuning against W − W0, and each recorded and read back as a run."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.methods import FullLinear, VeRALinear
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.store import load_run
from tlora_analysis.training import TrainConfig, restore_model, train

peft = pytest.importorskip("peft")


def test_vera_matches_peft_given_the_same_seed(tiny_model_dir):
    """With one layer shape, peft's shared pair is drawn from projection_prng_key exactly as ours from the run seed."""
    torch.manual_seed(0)
    theirs = peft.get_peft_model(load_model(tiny_model_dir), peft.VeraConfig(r=4, target_modules=["query", "value"], projection_prng_key=7,
                                                                              init_weights=False)).eval()
    ours = inject_adapters(load_model(tiny_model_dir), "vera", 4, ["query", "value"], seed=7).eval()
    for name, layer in adapter_layers(ours).items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(layer.vera_A, peft_layer.vera_A["default"], rtol=0, atol=0)
        torch.testing.assert_close(layer.vera_B, peft_layer.vera_B["default"], rtol=0, atol=0)
        with torch.no_grad():
            layer.vera_lambda_d.copy_(peft_layer.vera_lambda_d["default"])
            layer.vera_lambda_b.copy_(peft_layer.vera_lambda_b["default"])
        dense = peft_layer.get_delta_weight("default").double()
        torch.testing.assert_close(layer.delta().dense(torch.float64), dense, rtol=1e-5, atol=1e-7)
    batch = load_tokenizer(tiny_model_dir)(["not bad at all", "a dull film"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**batch).logits, theirs(**batch).logits, rtol=1e-5, atol=1e-6)


def test_vera_defaults_follow_peft():
    layer = VeRALinear(nn.Linear(16, 12), 4)
    assert torch.equal(layer.vera_lambda_d, torch.full((4,), 0.1)) and torch.equal(layer.vera_lambda_b, torch.zeros(12))
    assert layer.delta().frobenius_norm() == 0.0 and math.isnan(layer.scale())
    assert sum(p.numel() for n, p in layer.named_parameters() if not n.startswith("base.")) == 4 + 12


def test_full_fine_tuning_delta_is_w_minus_w0():
    base = nn.Linear(10, 6)
    w0 = base.weight.detach().clone()
    layer = FullLinear(base, rank=1)
    with torch.no_grad():
        layer.full_delta.normal_()
    merged = (layer.base.weight + layer.full_delta).detach()
    torch.testing.assert_close(layer.delta().dense(torch.float32), merged - w0, rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 10)
    torch.testing.assert_close(layer(x), x @ merged.T + base.bias, rtol=1e-5, atol=1e-6)
    assert layer.rank == 6 and layer.delta().rank == 6


def test_full_fine_tuning_refuses_huge_layers():
    from tlora_analysis.errors import InputError

    with pytest.raises(InputError, match="more than the limit"):
        FullLinear(nn.Linear(8192, 4096, device="meta"), rank=1)


@pytest.mark.parametrize("method", ["vera", "loraxs", "full"])
def test_recorded_runs_read_back_as_the_live_deltas(tmp_path, tiny_model_dir, method):
    model = inject_adapters(load_model(tiny_model_dir), method, 4, ["query", "value"], seed=2, modules_to_save=["classifier"])
    generator = torch.Generator().manual_seed(1)
    with DeltaRecorder(model, tmp_path / "run") as recorder:
        recorder.snapshot(0)
        with torch.no_grad():
            for layer in adapter_layers(model).values():
                for p in layer.trainable_tensors():
                    getattr(layer, p).add_(torch.randn(getattr(layer, p).shape, generator=generator) * 0.1)
        recorder.snapshot(1)
        recorder.finish()
    run = load_run(tmp_path / "run")
    assert run.method == method
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(run.deltas(1)[name].dense(torch.float64), layer.delta().dense(torch.float64), rtol=1e-5, atol=1e-7)
    assert (tmp_path / "run" / "frozen.safetensors").exists() == (method == "loraxs")  # VeRA's pair is rebuilt from the seed


@pytest.mark.parametrize("method", ["vera", "loraxs", "full"])
def test_train_and_restore_every_method(tmp_path, tiny_model_dir, method):
    config = TrainConfig(method=method, model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=8, batch_size=8, max_length=16)
    run = train(config, tmp_path / method, progress=False, log=lambda _: None)
    restored = restore_model(run)  # LoRA-XS: A and B recomputed from W0 and checked against their checksums
    for name, layer in adapter_layers(restored).items():
        torch.testing.assert_close(run.deltas(1)[name].dense(torch.float64), layer.delta().dense(torch.float64), rtol=1e-5, atol=1e-7)
    if method == "full":
        assert run.deltas(1) is run.deltas(1)  # one dense SVD per layer and snapshot, kept


def test_inspect_reads_peft_vera_adapters(tmp_path, tiny_model_dir):
    from tlora_analysis.checkpoints import inspect_checkpoint

    torch.manual_seed(4)
    model = peft.get_peft_model(load_model(tiny_model_dir), peft.VeraConfig(r=4, target_modules=["query", "value"], save_projection=True,
                                                                             init_weights=False))
    model.save_pretrained(tmp_path / "vera")
    table = inspect_checkpoint(tmp_path / "vera").set_index("name")
    assert table.attrs["method"] == "vera" and len(table) == 4
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.vera.layer.Linear):
            dense = module.get_delta_weight("default").detach().double().numpy()
            row = table.loc[name.removeprefix("base_model.model.")]
            assert row.frobenius == pytest.approx(np.linalg.norm(dense), rel=1e-5)
            np.testing.assert_allclose([row.s1, row.s2], np.linalg.svd(dense, compute_uv=False)[:2], rtol=1e-5)
    assert table.attrs["totals"]["update_trainable_params"] == 4 * (4 + 32)


@pytest.fixture(scope="module")
def six_methods(tmp_path_factory):
    """One toy run per method, all on the same model and targets."""
    from helpers import make_run

    root = tmp_path_factory.mktemp("six")
    model = None
    for method in ("lora", "lorafa", "tlora", "vera", "loraxs", "full"):
        model = make_run(root / method, method, epochs=2)
    return root, {name: layer.base.weight.detach() for name, layer in adapter_layers(model).items()}


def test_compare_runs_takes_any_set_of_methods(six_methods):
    from tlora_analysis.analysis import compare_runs, paper_claims
    from tlora_analysis.factored import cosine_similarity

    root, weights = six_methods
    runs = [load_run(root / m) for m in ("full", "vera", "tlora", "loraxs", "lora", "lorafa")]
    tables = compare_runs(runs, weights, baseline_samples=4)
    assert set(tables["norms"].method) == {"lora", "lorafa", "tlora", "vera", "loraxs", "full"}
    pairs = tables["similarity_pairs"]
    assert len(pairs[["method_a", "method_b"]].drop_duplicates()) == 15  # every pair of the six methods, once
    row = pairs[(pairs.method_a == "vera") & (pairs.method_b == "full") & (pairs.epoch == 2)].iloc[0]
    assert row.cosine == pytest.approx(cosine_similarity(load_run(root / "vera").deltas(2)[row["name"]],
                                                         load_run(root / "full").deltas(2)[row["name"]]), rel=1e-9)
    assert set(tables["similarity"][["method_a", "method_b"]].itertuples(index=False)) == {("lora", "tlora")}
    assert paper_claims(tables).headline.sum() == 6  # the paper's claims still read the LoRA–TLoRA pair
    without_pair = compare_runs([load_run(root / "vera"), load_run(root / "full")], baseline_samples=2)
    assert "similarity" not in without_pair and "scales" not in without_pair and len(without_pair["similarity_pairs"]) > 0


def test_figures_and_report_for_six_methods(tmp_path, six_methods):
    from tlora_analysis.analysis import compare_runs
    from tlora_analysis.figures import FIGURES, render_all
    from tlora_analysis.figures.style import METHOD_COLORS, MODULE_PALETTE
    from tlora_analysis.report import write_report

    root, weights = six_methods
    runs = [load_run(root / m) for m in ("lora", "lorafa", "tlora", "vera", "loraxs", "full")]
    entries = render_all(compare_runs(runs, weights, baseline_samples=2), tmp_path / "figs", formats=("png",))  # PDFs: test_any_sources
    assert {e["name"] for e in entries} == set(FIGURES) - {"gradient_norms"} | {"overview"}  # toy runs record no gradient norms
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS) and not set(METHOD_COLORS.values()) & set(MODULE_PALETTE)
    two = [load_run(root / "vera"), load_run(root / "full")]
    page = write_report(compare_runs(two, baseline_samples=2), two, tmp_path / "report.html").read_text()
    assert "VeRA, full fine-tuning: adaptation dynamics" in page and "have no such pair" in page
