"""Defects v4 (issue #38): each test failed before its fix. The figure defect (6, the overview's "last state"
over all sources) is tested with every drawn text in tests/test_figure_text.py ("mix": TLoRA runs beside peft
adapters)."""

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import ToyModel, make_run
from tlora_analysis.errors import InputError
from tlora_analysis.io import atomic_write_json, parse_json, read_json
from tlora_analysis.methods.spec import METHOD_SPECS
from tlora_analysis.sources import open_updates
from tlora_analysis.sources.labels import labelled_paths
from tlora_analysis.store import load_run

peft = pytest.importorskip("peft")


def test_8_a_native_run_has_notices_as_every_source_does(tmp_path):
    make_run(tmp_path / "run", "tlora", epochs=1)
    assert load_run(tmp_path / "run").notices == []


def test_9_where_an_update_starts_is_the_methods_spec_not_a_list_of_names():
    from tlora_analysis.sources.trainer import TrainerRun

    for name, spec in METHOD_SPECS.items():
        assert TrainerRun._starts_at_zero(SimpleNamespace(method=name)) is spec.starts_at_zero, name
    assert TrainerRun._starts_at_zero(SimpleNamespace(method="something-new")) is False
    assert {n for n, s in METHOD_SPECS.items() if s.starts_at_zero} == {"lora", "lorafa", "tlora", "vera", "full"}


def test_10_a_long_label_is_a_label_not_a_file_name(tmp_path):
    make_run(tmp_path / "run", "lora", epochs=1)
    label = "a" * 300
    assert labelled_paths([f"{label}={tmp_path / 'run'}"]) == {label: str(tmp_path / "run")}
    from tlora_analysis.cli import main

    assert main(["analyze", f"{label}={tmp_path / 'run'}", "--out", str(tmp_path / "tables"), "--no-base", "--no-progress"]) == 0
    with pytest.raises(InputError, match="no such file or directory"):
        open_updates("b" * 300)


@pytest.mark.parametrize("number, message", [("NaN", "NaN is not a number"), ("-Infinity", "-Infinity is not a number"),
                                             ("1e400", "1e400 is beyond the range of a float"),
                                             ("9" * 5000, "an integer of 5,000 digits")])
def test_11_every_json_number_read_is_finite_and_bounded(tmp_path, number, message):
    path = tmp_path / "x.json"
    path.write_text(f'{{"a": {number}}}')
    with pytest.raises(InputError, match=f"{path}: {message}"):
        read_json(path)
    with pytest.raises(InputError, match=message):
        parse_json(f"[{number}]", "a line")


def test_11_a_trainer_state_with_a_bad_number_is_one_line_naming_it(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-2"
    torch.manual_seed(0)
    model = peft.get_peft_model(ToyModel(2), peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    model.save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2, "epoch": NaN, "log_history": []}')
    with pytest.raises(InputError, match=r"trainer_state.json: NaN is not a number"):
        _ = open_updates(tmp_path / "out").epochs


def test_11_what_the_toolkit_writes_it_reads_back(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"pearson": float("nan"), "loss": [1.0, float("inf")]})
    assert read_json(tmp_path / "m.json") == {"pearson": None, "loss": [1.0, None]}


@pytest.mark.parametrize("name", ["AutoTokenizer", "AutoConfig", "BertConfig", "is_torch_available", "PreTrainedModel."])
def test_14_a_base_model_class_that_is_no_model_is_one_line(name):
    from tlora_analysis.peft_types.engine import _model_class

    config = {"peft_type": "IA3", "auto_mapping": {"base_model_class": name, "parent_library": "transformers"}}
    if not name.isidentifier():
        assert _model_class(config, "a/adapter_config.json").__name__ == "AutoModelForSequenceClassification"
        return
    with pytest.raises(InputError, match=f"a/adapter_config.json: auto_mapping.base_model_class '{name}' is not a model class"):
        _model_class(config, "a/adapter_config.json")


def test_14_a_class_transformers_has_is_used_and_a_custom_one_falls_back_to_the_task():
    from tlora_analysis.peft_types.engine import _model_class

    assert _model_class({"auto_mapping": {"base_model_class": "T5ForConditionalGeneration"}}, "a").__name__ == "T5ForConditionalGeneration"
    assert _model_class({"task_type": "CAUSAL_LM", "auto_mapping": {"base_model_class": "MyModel"}}, "a").__name__ == "AutoModelForCausalLM"


def test_15_every_number_of_a_config_is_bounded_as_lora_alpha_is(tmp_path):
    from tlora_analysis.peft_types.spec import peft_type_spec

    for config, key in [({"peft_type": "FOURIERFT", "scaling": 1e300}, "scaling"), ({"peft_type": "LOHA", "alpha": -1e13}, "alpha"),
                        ({"peft_type": "LORA", "alpha_pattern": {"query": 1e20}}, "alpha_pattern.query")]:
        with pytest.raises(InputError, match=f"{key} = .* is beyond 1e\\+12"):
            peft_type_spec(config, "a/adapter_config.json")
    assert peft_type_spec({"peft_type": "VERA", "projection_prng_key": 2**62}, "a").peft_type == "VERA"  # a seed, not a scale
    folder = tmp_path / "fourierft"
    torch.manual_seed(0)
    model = peft.get_peft_model(ToyModel(2), peft.FourierFTConfig(n_frequency=8, target_modules=["query"]))
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "scaling": 1e300}))
    from tlora_analysis.cli import main

    assert main(["inspect", str(folder)]) == 2


def test_13_a_catastrophic_target_modules_pattern_is_one_line_not_a_hang():
    from tlora_analysis.methods.peft_format import resolve_module_patterns

    names = ["a" * 40 + "!", "encoder.query"]
    with pytest.raises(InputError, match=r"cfg: target_modules '\(a\|aa\)\+' took over 0.05 s .* backtracks catastrophically"):
        resolve_module_patterns({"target_modules": "(a|aa)+"}, names, "cfg")
    resolved = resolve_module_patterns({"target_modules": r".*\.query", "exclude_modules": "nothing", "r": 4}, names, "cfg")
    assert resolved == {"target_modules": ["encoder.query"], "exclude_modules": [], "r": 4}
    with pytest.raises(InputError, match="not a valid regular expression"):
        resolve_module_patterns({"target_modules": "("}, names, "cfg")


def test_13_train_hands_peft_the_modules_a_pattern_matched(tmp_path):
    from helpers import cli

    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": r".*\.(query|value)"}))
    result = cli("train", "--method", "peft", "--peft-config", config, "--out", tmp_path / "run", "--epochs", "1",
                 "--max-train-samples", "16", "--max-eval-samples", "8")
    assert result.returncode == 0, result.stderr[-1500:]
    assert len(load_run(tmp_path / "run").layers) == 12  # 6 layers x query, value


def lora_folder(path, name="default", seed=0):
    torch.manual_seed(seed)
    model = peft.get_peft_model(ToyModel(2), peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False), adapter_name=name)
    model.save_pretrained(path)
    return model


def test_4_a_root_adapter_beside_named_ones_says_what_it_did_not_read(tmp_path):
    model = lora_folder(tmp_path / "two")
    model.add_adapter("other", peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "two")
    assert (tmp_path / "two" / "other" / "adapter_config.json").is_file()
    source = open_updates(tmp_path / "two")
    assert any("1 more in subfolders were not read (other)" in line for line in source.notices), source.notices


def test_4_a_lycoris_full_files_bias_update_is_named(tmp_path):
    from safetensors.torch import save_file

    save_file({"lycoris_encoder_layer_0_query.diff": torch.randn(8, 8), "lycoris_encoder_layer_0_query.diff_b": torch.randn(8)},
              str(tmp_path / "full.safetensors"))
    source = open_updates(tmp_path / "full.safetensors")
    assert any("bias updates of 1 modules" in line and "diff_b" in line for line in source.notices), source.notices


def trainer_output(root, folders, states):
    for folder, state in zip(folders, states):
        lora_folder(root / folder)
        (root / folder / "trainer_state.json").write_text(json.dumps(state))
    return root


def test_4_two_checkpoints_at_one_step_are_refused_not_one_dropped(tmp_path):
    out = trainer_output(tmp_path / "out", ["checkpoint-20", "checkpoint-0020"], [{"global_step": 20}, {"global_step": 20}])
    with pytest.raises(InputError, match="are both at global step 20"):
        open_updates(out)


def test_4_a_trajectory_that_ends_before_training_did_says_so(tmp_path):
    state = {"global_step": 10, "epoch": 1.0, "max_steps": 30, "best_model_checkpoint": "out/checkpoint-10"}
    out = trainer_output(tmp_path / "out", ["checkpoint-10"], [state])
    source = open_updates(out)
    assert any("last checkpoint kept is at step 10 of the 30 trained (best_model_checkpoint checkpoint-10)" in line
               for line in source.notices), source.notices


def test_12_files_found_inside_a_source_may_not_leave_it_through_a_link(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "trainer_state.json").write_text('{"global_step": 5}')
    out = trainer_output(tmp_path / "out", ["checkpoint-5"], [{"global_step": 5}])
    (out / "checkpoint-5" / "trainer_state.json").unlink()
    (out / "checkpoint-5" / "trainer_state.json").symlink_to(elsewhere / "trainer_state.json")
    with pytest.raises(InputError, match="trainer_state.json resolves to .*outside .*refusing to follow it"):
        open_updates(out)
    lora_folder(tmp_path / "adapter")
    state_dict = tmp_path / "single" / "adapter_model.safetensors"
    state_dict.parent.mkdir()
    state_dict.write_bytes((tmp_path / "adapter" / "adapter_model.safetensors").read_bytes())
    (state_dict.parent / "adapter_config.json").symlink_to(tmp_path / "adapter" / "adapter_config.json")
    with pytest.raises(InputError, match="adapter_config.json resolves to .*outside"):
        open_updates(state_dict)


def test_3_a_lora_of_rank_above_a_2_label_heads_size_reads_as_peft_merges_it(tmp_path):
    """r = 8 on query, value and the default model's 2 x 384 classifier, made by peft: read whole, equal to peft's merge."""
    from peft_zoo import assert_matches, peft_answer

    from tlora_analysis.models import load_model

    base = load_model("default")
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, target_modules=["query", "value", "classifier"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "lora")
    deltas = open_updates(tmp_path / "lora").deltas()
    assert "classifier" in deltas and deltas["classifier"].shape == (2, 384) and deltas["classifier"].rank <= 2
    assert_matches(deltas, peft_answer(tmp_path / "lora", load_model("default")))


def test_3_a_vera_of_rank_20000_on_384_wide_layers_reads_within_the_layers_memory(tmp_path):
    from helpers import cli
    from tlora_analysis.models import load_model

    torch.manual_seed(0)
    model = peft.get_peft_model(load_model("default"), peft.VeraConfig(r=20_000, target_modules=["query"], save_projection=False,
                                                                        init_weights=False))
    model.save_pretrained(tmp_path / "vera")
    result = cli("inspect", tmp_path / "vera", memory_mb=3000)  # an r x r core alone would be 3.2 GB
    assert result.returncode == 0, result.stderr[-1500:]


def test_7_compare_does_not_depend_on_the_order_of_its_sources(tmp_path, capsys):
    from tlora_analysis.cli import main
    from tlora_analysis.models import load_model

    for name, targets in (("wide", ["query", "key", "value"]), ("narrow", ["query"])):
        torch.manual_seed(len(name))
        peft.get_peft_model(load_model("default"), peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)) \
            .save_pretrained(tmp_path / name)
    answers = []
    for order in (("narrow", "wide"), ("wide", "narrow")):
        capsys.readouterr()
        assert main(["compare", *(str(tmp_path / n) for n in order), "--base", "default", "--json", "--no-progress"]) == 0
        pairs = json.loads(capsys.readouterr().out)["pairs"]
        answers.append(sorted(round(abs(p["mean_cosine"]), 10) for p in pairs))
    assert answers[0] == answers[1]


def single_file(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("tensors, fragment", [
    ({"lora_m.lora_down.weight": torch.ones(4), "lora_m.lora_up.weight": torch.ones(8, 4)}, "lora_down should be a matrix"),
    ({"lora_m.hada_w1_a": torch.tensor(1.0), "lora_m.hada_w1_b": torch.ones(2, 8), "lora_m.hada_w2_a": torch.ones(8, 2),
      "lora_m.hada_w2_b": torch.ones(2, 8)}, "hada_w1_a should be a matrix"),
    ({"lora_m.hada_w1_a": torch.ones(8, 2), "lora_m.hada_w1_b": torch.ones(3, 8), "lora_m.hada_w2_a": torch.ones(8, 2),
      "lora_m.hada_w2_b": torch.ones(2, 8)}, "do not chain"),
    ({"lora_m.hada_w1_a": torch.ones(8, 2), "lora_m.hada_w1_b": torch.ones(2, 8), "lora_m.hada_w2_a": torch.ones(6, 2),
      "lora_m.hada_w2_b": torch.ones(2, 8)}, "imply different layer shapes"),
    ({"lora_m.lokr_w1": torch.ones(1, 100_000), "lora_m.lokr_w2": torch.ones(1, 100_000)}, "imply a 1 x 10,000,000,000 update"),
    ({"lora_m.diff": torch.ones(0, 8)}, "diff should be a matrix with at least one row"),
], ids=["1-D factor", "0-D factor", "unchained", "two shapes", "LoKr of 8 TB", "0-row diff"])
def test_16_17_malformed_or_huge_single_files_are_one_line(tmp_path, tensors, fragment):
    from helpers import cli, expect_error

    expect_error(cli("inspect", single_file(tmp_path / "f.safetensors", tensors), memory_mb=3000), fragment)


def test_17_loha_and_lokr_read_within_the_layers_memory_and_equal_the_dense_formula(tmp_path):
    from helpers import cli

    g = torch.Generator().manual_seed(0)
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=g) for s in ((64, 150), (150, 64), (64, 150), (150, 64)))
    loha = single_file(tmp_path / "loha.safetensors", {"lora_m.hada_w1_a": w1a, "lora_m.hada_w1_b": w1b, "lora_m.hada_w2_a": w2a,
                                                       "lora_m.hada_w2_b": w2b, "lora_m.alpha": torch.tensor(150.0)})
    result = cli("inspect", loha, memory_mb=3000)  # rank 150² factored: a 22,500² core, 4 GB; now a 64 x 64 product
    assert result.returncode == 0, result.stderr[-1500:]
    expected = (w1a.double() @ w1b.double()) * (w2a.double() @ w2b.double())
    delta = open_updates(loha).deltas()["m"]
    torch.testing.assert_close(delta.dense(), expected, rtol=1e-9, atol=1e-9)
    w1, w2 = torch.randn(4, 4, generator=g), torch.randn(64, 64, generator=g)
    lokr = single_file(tmp_path / "lokr.safetensors", {"lora_m.lokr_w1": w1, "lora_m.lokr_w2": w2})
    torch.testing.assert_close(open_updates(lokr).deltas()["m"].dense(), torch.kron(w1.double(), w2.double()), rtol=1e-9, atol=1e-9)


def test_5_a_vera_adapter_on_gpt2s_conv1d_reads_as_peft_merges_it(tmp_path, tiny_gpt2_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    original = {n: m.weight.detach().double().clone() for n, m in base.named_modules() if n.endswith("c_attn")}
    model = peft.get_peft_model(base, peft.VeraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "vera_lambda" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))))
    model.save_pretrained(tmp_path / "vera")
    merged = model.merge_and_unload()
    deltas = open_updates(tmp_path / "vera", base=str(tiny_gpt2_dir)).deltas()
    for name, w0 in original.items():
        expected = (merged.get_submodule(name).weight.detach().double() - w0).T  # Conv1D stores Wᵀ; ΔW is (d_out, d_in)
        torch.testing.assert_close(deltas[name].dense().double(), expected, rtol=1e-5, atol=1e-7)


def _architectures():
    import transformers as tf

    bert = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}
    return {
        "t5-seq2seq": (lambda: tf.T5ForConditionalGeneration(tf.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                                          num_heads=4, decoder_start_token_id=0)),
                       "SEQ_2_SEQ_LM", ["q", "v"]),
        "bare-encoder": (lambda: tf.BertModel(tf.BertConfig(**bert)), None, ["query", "value"]),
        "classifier": (lambda: tf.BertForSequenceClassification(tf.BertConfig(**bert)), "SEQ_CLS", ["query", "value"]),
    }


@pytest.mark.parametrize("architecture", ["t5-seq2seq", "bare-encoder", "classifier"])
@pytest.mark.parametrize("kind", ["LORA", "DORA", "IA3"])
def test_1_an_adapter_reads_against_its_own_base_whatever_its_class(tmp_path, architecture, kind):
    from peft_zoo import peft_answer

    from tlora_analysis.models import base_weights

    make, task_type, targets = _architectures()[architecture]
    torch.manual_seed(0)
    make().save_pretrained(tmp_path / "base")
    base = type(make()).from_pretrained(tmp_path / "base")
    config = (peft.IA3Config(target_modules=targets, feedforward_modules=[], task_type=task_type) if kind == "IA3" else
              peft.LoraConfig(r=4, target_modules=targets, use_dora=kind == "DORA", init_lora_weights=False, task_type=task_type))
    model = peft.get_peft_model(type(make()).from_pretrained(tmp_path / "base"), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "classifier" not in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    model.save_pretrained(tmp_path / "adapter")
    deltas = open_updates(tmp_path / "adapter", base=str(tmp_path / "base")).deltas()
    answer = peft_answer(tmp_path / "adapter", base)
    assert set(answer) == set(deltas) and answer
    for name, expected in answer.items():
        torch.testing.assert_close(deltas[name].dense().double(), expected, rtol=1e-4, atol=1e-6)  # peft merges in float32
    shapes = {name: tuple(delta.shape) for name, delta in deltas.items()}
    weights = base_weights(str(tmp_path / "base"), list(shapes), shapes)  # W0 for amplification and intruders, by name
    for name in shapes:
        torch.testing.assert_close(weights[name], base.get_submodule(name).weight.detach())


def test_1_a_bare_encoders_adapter_finds_w0_in_a_classifiers_files_and_an_ambiguous_name_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from tlora_analysis.models import base_weights

    make, _, _ = _architectures()["classifier"]
    torch.manual_seed(0)
    classifier = make()
    classifier.save_pretrained(tmp_path / "classifier")
    name = "encoder.layer.1.attention.self.query"
    weights = base_weights(str(tmp_path / "classifier"), [name], {name: (32, 32)})
    torch.testing.assert_close(weights[name], classifier.bert.encoder.layer[1].attention.self.query.weight.detach())
    twice = {"a.encoder.layer.1.attention.self.query.weight": torch.zeros(32, 32),
             "b.encoder.layer.1.attention.self.query.weight": torch.ones(32, 32)}
    (tmp_path / "two").mkdir()
    save_file(twice, tmp_path / "two" / "model.safetensors")
    with pytest.raises(InputError, match="could be 'a.encoder.layer.1.attention.self.query.weight' or 'b.encoder"):
        base_weights(str(tmp_path / "two"), [name], {name: (32, 32)})


@pytest.fixture(scope="module")
def classifier_base(tmp_path_factory):
    make, _, _ = _architectures()["classifier"]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier")
    make().save_pretrained(path)
    return path


def _forward_update(module, w0: torch.Tensor) -> torch.Tensor:
    """ΔW as a LyCORIS module applies it: its output on the identity minus its output on zero, minus W0."""
    inputs = torch.cat([torch.eye(w0.shape[1]), torch.zeros(1, w0.shape[1])])
    with torch.no_grad():
        adapted = module(inputs)
    return (adapted[:-1] - adapted[-1]).T - w0


@pytest.mark.parametrize("algo, method", [("lora", "lora"), ("loha", "loha"), ("lokr", "lokr"), ("full", "full")])
def test_2_a_lycoris_network_read_with_its_base_has_the_bases_names_its_counts_and_scale(tmp_path, classifier_base, algo, method):
    lycoris = pytest.importorskip("lycoris")
    from transformers import BertForSequenceClassification

    model, base = (BertForSequenceClassification.from_pretrained(classifier_base) for _ in range(2))
    network = lycoris.create_lycoris(model, 1.0, linear_dim=4, linear_alpha=2.0, algo=algo)
    network.apply_to()
    with torch.no_grad():
        for param in network.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.05)
    network.save_weights(str(tmp_path / "network.safetensors"), torch.float32, None)
    source = open_updates(tmp_path / "network.safetensors", base=str(classifier_base))
    deltas = source.deltas()
    linear = {n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    assert source.method == method and set(deltas) == linear  # the base's own module names: W0 is found, compare pairs
    for module in network.loras:
        name = next(n for n in linear if n.replace(".", "_") == module.lora_name.removeprefix("lycoris_"))
        w0 = base.get_submodule(name).weight.detach()
        expected = _forward_update(module, w0).double()  # LyCORIS's forward pass (4.1's get_diff_weight scales LoHa twice)
        torch.testing.assert_close(deltas[name].dense().double(), expected, rtol=1e-5, atol=1e-7)
    trained = sum(p.numel() for n, p in network.named_parameters() if not n.endswith(".bias"))  # a bias is no part of ΔW (noticed)
    assert source.update_counts == (trained, 0)
    scales = source.scales()
    assert set(scales) == linear and all(v == (0.5 if algo in ("lora", "loha") else 1.0) for v in scales.values()), scales


def test_2_compare_pairs_a_lycoris_file_and_a_peft_adapter_of_one_base(tmp_path, classifier_base, capsys):
    lycoris = pytest.importorskip("lycoris")
    from transformers import BertForSequenceClassification

    from tlora_analysis.cli import main

    network = lycoris.create_lycoris(BertForSequenceClassification.from_pretrained(classifier_base), 1.0, linear_dim=4, algo="lora")
    network.apply_to()
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.05)
    network.save_weights(str(tmp_path / "network.safetensors"), torch.float32, None)
    peft_model = peft.get_peft_model(BertForSequenceClassification.from_pretrained(classifier_base),
                                     peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "peft")
    assert main(["compare", f"lycoris={tmp_path / 'network.safetensors'}", f"peft={tmp_path / 'peft'}", "--base",
                 str(classifier_base), "--out", str(tmp_path / "compare"), "--no-progress"]) == 0
    import pandas as pd

    pairs = pd.read_csv(tmp_path / "compare" / "similarity_pairs.csv")
    assert set(pairs["name"]) == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")}
    amplification = pd.read_csv(tmp_path / "compare" / "amplification.csv")
    assert amplification["amplification"].notna().all()  # W0 found for every layer of both


def test_2_flat_names_that_meet_no_base_module_or_one_module_twice_are_one_line(tmp_path, classifier_base):
    factors = {"lora_down.weight": torch.ones(2, 32), "lora_up.weight": torch.ones(32, 2)}
    single_file(tmp_path / "twice.safetensors", {f"{prefix}_bert_encoder_layer_0_attention_self_query.{k}": t.clone()
                                                 for prefix in ("lycoris", "lora") for k, t in factors.items()})
    with pytest.raises(InputError, match="are both the base's bert.encoder.layer.0.attention.self.query"):
        _ = open_updates(tmp_path / "twice.safetensors", base=str(classifier_base)).deltas()
    single_file(tmp_path / "other.safetensors", {f"lycoris_unet_mid_block_to_q.{k}": t for k, t in factors.items()})
    with pytest.raises(InputError, match="module lycoris_unet_mid_block_to_q is no module of the base model"):
        _ = open_updates(tmp_path / "other.safetensors", base=str(classifier_base)).deltas()
    (tmp_path / "kohya.safetensors").write_bytes((tmp_path / "other.safetensors").read_bytes())
    assert set(open_updates(tmp_path / "kohya.safetensors").deltas()) == {"unet_mid_block_to_q"}  # no base: readable names


def test_41_a_head_neither_pretrained_nor_trained_is_warned_in_one_line(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from tlora_analysis.adapters import untrained_head
    from tlora_analysis.models import load_model

    frozen = peft.get_peft_model(load_model("default"), peft.LoraConfig(r=2, target_modules=["query"]))  # the README's old quickstart:
    warning = untrained_head(frozen)  # a sentence-transformers encoder (no head in it) and no task_type (peft leaves the head frozen)
    assert warning and "'base_model.model.classifier'" in warning and 'task_type="SEQ_CLS"' in warning and "\n" not in warning
    trained = peft.get_peft_model(load_model("default"), peft.LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS"))
    assert untrained_head(trained) is None
    pretrained = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)  # saved as a classifier: its head is in it
    pretrained.requires_grad_(False)
    assert untrained_head(pretrained) is None


def test_41_the_trainer_callback_warns_of_an_untrained_head(tmp_path, tiny_model_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from tlora_analysis.integrations.trainer import DeltaRecorderCallback

    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    base.config.architectures = ["BertModel"]  # as a sentence-transformers checkpoint says: no head in it
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["query"]))
    state = SimpleNamespace(is_world_process_zero=True, global_step=0)
    args = SimpleNamespace(world_size=1, seed=0)
    with pytest.warns(UserWarning, match="DeltaRecorderCallback: the classification head .* stays random"):
        DeltaRecorderCallback(tmp_path / "run", record_grad_norms=False).on_train_begin(args, state, None, model=model)
