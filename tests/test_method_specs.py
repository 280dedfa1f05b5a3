"""One method, one place: the spec registry, each method against its reference (peft, the LoRA-XS
authors' formula), parameter counts, exports that peft loads, and a method added from a test alone."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from tlora_analysis import adapter_layers, count_parameters, inject_adapters
from tlora_analysis.checkpoints import inspect_checkpoint
from tlora_analysis.errors import InputError
from tlora_analysis.export import export, load_exported
from tlora_analysis.figures.style import method_color
from tlora_analysis.methods import METHOD_SPECS, LoRAXSLinear, MethodSpec, method_class, register_spec
from tlora_analysis.methods.base import METHOD_CLASSES, AdapterLayer, register_method
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.store import load_run
from tlora_analysis.training import TrainConfig, restore_model, train

peft = pytest.importorskip("peft")
QUIET = {"progress": False, "log": lambda _: None}
SMALL = dict(epochs=1, max_train_samples=32, max_eval_samples=8, batch_size=16, max_length=16, rank=4)


def logits(model, model_dir):
    batch = load_tokenizer(model_dir)(["although the plot is dull, the cast is superb.", "a boring film."], padding=True,
                                      return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


# --------------------------------------------------------------------------- the registry
def test_every_spec_names_its_registered_class():
    for name, spec in METHOD_SPECS.items():
        if spec.layer is not None:
            cls = method_class(name)
            assert cls.method == name and issubclass(cls, AdapterLayer)
        else:
            with pytest.raises(InputError, match="trained through peft" if spec.trains_through_peft else "adapts no layer"):
                method_class(name)


def test_a_class_without_a_spec_is_refused_at_registration():
    with pytest.raises(TypeError, match="no method spec names it"):
        @register_method
        class Orphan(AdapterLayer):  # noqa: F841 - the decorator is the test
            method = "orphan"


def test_a_method_no_spec_names_gets_the_fallback_colour_not_a_key_error():
    assert method_color("someone-elses-method") not in {spec.colour for spec in METHOD_SPECS.values()}


# --------------------------------------------------------------------------- references
def test_loraxs_follows_the_authors_placement_and_scaling():
    """ΔW = s · U_r · R · Σ_r · V_rᵀ from numpy's SVD of W0 (signs aligned to ours), s = 16 / r."""
    torch.manual_seed(0)
    base, r = nn.Linear(20, 14), 3
    layer = LoRAXSLinear(base, r)
    assert layer.scaling == pytest.approx(16 / r)
    assert 0.3e-5 < float(layer.loraxs_R.std()) < 3e-5  # Normal(0, 1e-5²) at init
    u, s, vh = np.linalg.svd(base.weight.detach().double().numpy(), full_matrices=False)
    signs = np.sign(np.sum(u[:, :r] * layer.loraxs_A.double().numpy(), axis=0))
    u_r, vh_r = u[:, :r] * signs, vh[:r] * signs[:, None]
    core = np.random.default_rng(0).normal(size=(r, r))
    with torch.no_grad():
        layer.loraxs_R.copy_(torch.from_numpy(core))
    expected = (16 / r) * u_r @ core @ np.diag(s[:r]) @ vh_r
    np.testing.assert_allclose(layer.delta().dense(torch.float64).numpy(), expected, rtol=1e-4, atol=1e-6)
    corner = np.zeros((r, r))
    corner[0, r - 1] = 1.0  # R = E_{0,r-1}: ‖ΔW‖ = s · σ_r whatever the signs
    with torch.no_grad():
        layer.loraxs_R.copy_(torch.from_numpy(corner))
    assert layer.delta().frobenius_norm() == pytest.approx(16 / r * s[r - 1], rel=1e-5)


@pytest.mark.parametrize("targets", [["query", "intermediate.dense"], ["query", "intermediate.dense", "output.dense"]])
def test_vera_with_mixed_shapes_matches_peft(tiny_model_dir, targets):
    """peft draws one pair at the largest shape and slices it per layer; given the same λ, ΔW and logits agree."""
    theirs = peft.get_peft_model(load_model(tiny_model_dir), peft.VeraConfig(
        r=4, target_modules=targets, projection_prng_key=7, init_weights=False)).eval()
    ours = inject_adapters(load_model(tiny_model_dir), "vera", 4, targets, seed=7).eval()
    layers = adapter_layers(ours)
    assert len({tuple(layer.base.weight.shape) for layer in layers.values()}) > 1
    for name, layer in layers.items():
        peft_layer = theirs.base_model.model.get_submodule(name)
        with torch.no_grad():
            layer.vera_lambda_d.copy_(peft_layer.vera_lambda_d["default"])
            layer.vera_lambda_b.copy_(peft_layer.vera_lambda_b["default"])
        dense = peft_layer.get_delta_weight("default").double()
        torch.testing.assert_close(layer.delta().dense(torch.float64), dense, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(logits(ours, tiny_model_dir), logits(theirs, tiny_model_dir), rtol=1e-5, atol=1e-6)
    d_out, d_in = next(iter(layers.values())).projection_shape
    assert count_parameters(ours).frozen_random == 4 * (d_out + d_in)  # the shared pair, once, as peft stores it


def test_lorafa_steps_like_peft_lorafa_optimizer(tiny_model_without_dropout_dir):
    """B's gradient preconditioned by (A Aᵀ)⁻¹ / s²: one step against peft's LoraFAOptimizer.

    Adam divides each entry by its own size, so to see the gradient itself both optimizers take
    one step with ε far above |g|: the update is then lr · g / ε for torch's AdamW and
    √(1 − β₂) times that for peft's (HF's adamw, ε outside the bias correction). A plain LoRA
    gradient (no preconditioning) differs from peft's by the matrix (A Aᵀ)⁻¹ / s², not a scalar.
    """
    from peft.optimizers import create_lorafa_optimizer

    model_dir, lr = tiny_model_without_dropout_dir, 1e-3
    theirs = peft.get_peft_model(load_model(model_dir), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    ours = inject_adapters(load_model(model_dir), "lorafa", 4, ["query", "value"], alpha=8, seed=3)
    for name, layer in adapter_layers(ours).items():
        with torch.no_grad():
            theirs.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(layer.lora_A)
    optimizers = (create_lorafa_optimizer(theirs, r=4, lora_alpha=8, lr=lr),
                  torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=lr, weight_decay=0.0))
    batch = load_tokenizer(model_dir)(["a dull film", "superb acting"], padding=True, return_tensors="pt")
    for model in (theirs, ours):
        (model(**batch).logits ** 2).sum().backward()
    eps = 1e4 * max(float(layer.lora_B.grad.abs().max()) for layer in adapter_layers(ours).values())
    for optimizer in optimizers:
        optimizer.param_groups[0]["eps"] = eps
        optimizer.step()
    for name, layer in adapter_layers(ours).items():
        peft_step = theirs.base_model.model.get_submodule(name).lora_B["default"].weight.detach()
        our_step = layer.lora_B.detach()  # B started at zero
        assert float(our_step.abs().max()) > 0
        torch.testing.assert_close(peft_step / math.sqrt(1 - 0.999), our_step, rtol=2e-2, atol=1e-3 * float(our_step.abs().max()))


# --------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("method, trainable, frozen_random", [
    ("lora", lambda o, i, r: r * (o + i), lambda o, i, r: 0),
    ("lorafa", lambda o, i, r: r * o, lambda o, i, r: r * i),
    ("tlora", lambda o, i, r: r * r + 1, lambda o, i, r: r * (o + i)),
    ("loraxs", lambda o, i, r: r * r, lambda o, i, r: 0),  # W0's singular vectors are not random
    ("full", lambda o, i, r: o * i, lambda o, i, r: 0),
])
def test_parameter_counts_agree_with_the_model_and_inspect(tmp_path, tiny_model_dir, method, trainable, frozen_random):
    run = train(TrainConfig(method=method, model=tiny_model_dir, **SMALL), tmp_path / method, **QUIET)
    shapes = [tuple(layer["shape"]) for layer in run.layers.values()]
    counts = run.meta["parameter_counts"]
    assert counts["adapter_trainable"] == sum(trainable(o, i, 4) for o, i in shapes)
    assert counts["frozen_random"] == sum(frozen_random(o, i, 4) for o, i in shapes)
    totals = inspect_checkpoint(run.path).attrs["totals"]
    assert (totals["update_trainable_params"], totals["update_frozen_random_params"]) == (counts["adapter_trainable"], counts["frozen_random"])


# --------------------------------------------------------------------------- exports
EXPORTED = [("lora", {}), ("lorafa", {}), ("tlora", {}), ("tlora", {"init": "orthonormal"}), ("tlora", {"init": "var-d"}),
            ("vera", {"targets": ["query", "intermediate.dense"]}), ("loraxs", {})]


@pytest.mark.parametrize("method, settings", EXPORTED)
def test_every_export_loads_in_peft_and_reloads_here(tmp_path, tiny_model_dir, method, settings):
    run = train(TrainConfig(method=method, model=tiny_model_dir, **{**SMALL, **settings}), tmp_path / "run", **QUIET)
    out = export(run.path, tmp_path / "export")
    expected = logits(restore_model(run), tiny_model_dir)
    torch.testing.assert_close(logits(load_exported(out), tiny_model_dir), expected, rtol=0, atol=0)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and config["modules_to_save"] == ["classifier"]
    peft_model = peft.PeftModel.from_pretrained(load_model(tiny_model_dir), out).eval()
    torch.testing.assert_close(logits(peft_model, tiny_model_dir), expected, rtol=1e-4, atol=1e-5)
    exported, recorded = inspect_checkpoint(out).set_index("name"), inspect_checkpoint(run.path).set_index("name")
    assert exported.attrs["method"] == method
    np.testing.assert_allclose(exported.frobenius, recorded.frobenius, rtol=1e-6)


def test_full_fine_tuning_exports_a_model_that_transformers_loads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    run = train(TrainConfig(method="full", model=tiny_model_dir, **SMALL), tmp_path / "run", **QUIET)
    out = export(run.path, tmp_path / "export")
    weights, base = load_file(out / "model.safetensors"), load_model(tiny_model_dir)
    for name, delta in run.deltas(1).items():
        expected = base.get_submodule(name).weight.double() + delta.dense(torch.float64)
        torch.testing.assert_close(weights[f"{name}.weight"].double(), expected, rtol=1e-6, atol=1e-6)
    assert inspect_checkpoint(out).attrs["method"] == "full"
    loaded = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    torch.testing.assert_close(logits(loaded, out), logits(restore_model(run), tiny_model_dir), rtol=1e-5, atol=1e-6)
    assert inspect_checkpoint(out / "model.safetensors", base=tiny_model_dir).shape[0] == len(run.layers)


def test_an_export_of_a_run_that_trains_the_pooler_loads_in_peft(tmp_path, tiny_model_dir):
    """modules_to_save names module paths (``bert.pooler.dense``), not first name components (``bert``)."""
    from tlora_analysis.recording import DeltaRecorder

    model = inject_adapters(load_model(tiny_model_dir), "lora", 2, ["query"], modules_to_save=["classifier", "pooler"], seed=3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05)
    with DeltaRecorder(model, tmp_path / "run", metadata={"model": tiny_model_dir, "task": "default"}) as recorder:
        recorder.snapshot(1)
    out = export(tmp_path / "run", tmp_path / "export")
    assert json.loads((out / "adapter_config.json").read_text())["modules_to_save"] == ["bert.pooler.dense", "classifier"]
    peft_model = peft.PeftModel.from_pretrained(load_model(tiny_model_dir), out).eval()
    torch.testing.assert_close(logits(peft_model, tiny_model_dir), logits(model.eval(), tiny_model_dir), rtol=1e-4, atol=1e-5)


def test_an_lm_run_exports_as_a_causal_lm(tmp_path, tiny_llama_dir):
    run = train(TrainConfig(method="tlora", task="lm", model=tiny_llama_dir, targets=["q_proj", "v_proj"], **SMALL), tmp_path / "run", **QUIET)
    out = export(run.path, tmp_path / "export")
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    assert type(load_exported(out)).__name__ == "LlamaForCausalLM"


def test_head_only_runs_are_named_head_and_say_why_they_do_not_export(tmp_path, tiny_model_dir):
    run = train(TrainConfig(method="head", model=tiny_model_dir, **SMALL), tmp_path / "run", **QUIET)
    assert run.method == "head" and load_run(run.path).meta["method"] == "head"
    with pytest.raises(InputError, match="head only run changes no adapted layer"):
        export(run.path, tmp_path / "export")


# --------------------------------------------------------------------------- a method added in one place
def test_a_method_registered_here_trains_analyses_draws_and_reports(tmp_path, tiny_model_dir, monkeypatch):
    """A throwaway method: one spec entry and one class, both in this test, through train, figures and report."""
    from tlora_analysis.cli import main
    from tlora_analysis.methods.lora import LoRALinear

    module = types.ModuleType("throwaway_method")
    monkeypatch.setitem(sys.modules, "throwaway_method", module)
    spec = MethodSpec("halflora", "half-LoRA", "#AA4499", 1e-3, "a test", "throwaway_method:HalfLoRA", scale="fixed", exports=("peft-lora",))
    monkeypatch.setitem(METHOD_SPECS, "halflora", spec)

    class HalfLoRA(LoRALinear):
        """LoRA with lora_alpha = r / 2."""

        method = "halflora"

        def __init__(self, base, rank, alpha=None, **kwargs):
            super().__init__(base, rank, rank / 2 if alpha is None else alpha, **kwargs)

    HalfLoRA.__module__ = "throwaway_method"
    monkeypatch.setitem(METHOD_CLASSES, "halflora", None)  # undone after the test, with the spec
    module.HalfLoRA = register_method(HalfLoRA)
    runs = [train(TrainConfig(method=m, model=tiny_model_dir, **SMALL), tmp_path / m, **QUIET) for m in ("halflora", "lora")]
    assert runs[0].layers[next(iter(runs[0].layers))]["scaling"] == pytest.approx(0.5)
    assert main(["figures", str(runs[0].path), str(runs[1].path), "--out", str(tmp_path / "figs"), "--no-base"]) == 0
    drawn = {f["name"] for f in json.loads((tmp_path / "figs" / "figures.json").read_text())["figures"]}
    assert {"learning_curves", "gradient_norms", "norms", "pairwise_similarity"} <= drawn
    assert main(["report", str(runs[0].path), str(runs[1].path), "--out", str(tmp_path / "report.html"), "--no-base"]) == 0
    assert "halflora" in (tmp_path / "report.html").read_text()
    assert export(runs[0].path, tmp_path / "export").is_dir()


def test_register_spec_refuses_a_second_entry_of_one_name():
    with pytest.raises(ValueError, match="registered twice"):
        register_spec(METHOD_SPECS["lora"])
    assert not math.isnan(METHOD_SPECS["lora"].default_lr)


@pytest.mark.parametrize("save_projection", [True, False])
def test_inspect_reads_mixed_shape_peft_vera_adapters(tmp_path, tiny_model_dir, save_projection):
    """Shapes from the local base named in adapter_config.json; without saved projections the pair is drawn again."""
    torch.manual_seed(4)
    model = peft.get_peft_model(load_model(tiny_model_dir), peft.VeraConfig(
        r=4, target_modules=["query", "intermediate.dense", "output.dense"], save_projection=save_projection, init_weights=False,
        projection_prng_key=11))
    model.save_pretrained(tmp_path / "vera")
    table = inspect_checkpoint(tmp_path / "vera").set_index("name")
    assert table.attrs["method"] == "vera" and len(table) == 8 and table["shape"].nunique() == 3  # "output.dense" matches two kinds
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.vera.layer.Linear):
            dense = module.get_delta_weight("default").detach().double().numpy()
            row = table.loc[name.removeprefix("base_model.model.")]
            assert row.frobenius == pytest.approx(np.linalg.norm(dense), rel=1e-5)
    assert table.attrs["totals"]["update_frozen_random_params"] == 4 * (64 + 64)  # one shared pair at the largest shape


def test_a_mixed_shape_vera_adapter_without_its_base_says_so(tmp_path, tiny_model_dir):
    torch.manual_seed(4)
    model = peft.get_peft_model(load_model(tiny_model_dir), peft.VeraConfig(r=4, target_modules=["query", "intermediate.dense"],
                                                                             save_projection=True))
    model.save_pretrained(tmp_path / "vera")
    config = json.loads((tmp_path / "vera" / "adapter_config.json").read_text())
    (tmp_path / "vera" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/elses-model"}))
    with pytest.raises(InputError, match="layers of several shapes.*pass the base model"):
        inspect_checkpoint(tmp_path / "vera")
    assert len(inspect_checkpoint(tmp_path / "vera", base=tiny_model_dir)) == 4


def test_default_learning_rates_are_the_committed_sweeps_choice():
    """Every method's default lr is the rate the committed learning-rate sweep chose, so the registry,
    figures/lr_sweep/results.json and docs/ladder.md cannot drift apart."""
    from pathlib import Path

    results = json.loads((Path(__file__).resolve().parents[1] / "figures" / "lr_sweep" / "results.json").read_text())
    chosen = {method: entry["chosen"] for method, entry in results["learning_rates"].items()}
    own = {name: spec for name, spec in METHOD_SPECS.items() if not spec.trains_through_peft}
    assert chosen == {name: spec.default_lr for name, spec in own.items()}
    for name, spec in own.items():
        assert "studies/lr_sweep.toml" in spec.lr_reason, name


def test_the_atlas_methods_default_rates_are_the_committed_atlas_sweeps_choice():
    """Every peft method the atlas trains takes the rate figures/atlas/lr_sweep/results.json chose, and says so."""
    from pathlib import Path

    results = json.loads((Path(__file__).resolve().parents[1] / "figures" / "atlas" / "lr_sweep" / "results.json").read_text())
    chosen = {method: entry["chosen"] for method, entry in results["learning_rates"].items()}
    swept = {name: spec for name, spec in METHOD_SPECS.items() if spec.trains_through_peft and name != "peft"}
    assert chosen == {name: spec.default_lr for name, spec in swept.items()}
    for name, spec in swept.items():
        assert "studies/atlas_lr_sweep.toml" in spec.lr_reason, name
        rates = [r["lr"] for r in results["learning_rates"][name]["per_lr"]]
        assert min(rates) < spec.default_lr < max(rates) or len(rates) > 5, name  # an edge was extended
