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
