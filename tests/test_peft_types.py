"""Every peft tuner type, made by peft itself, read against peft's own merge.

Each type with a ΔW is built on a small BERT, perturbed, saved with ``save_pretrained`` and read by
``open_updates``: every layer's ‖ΔW‖_F and top singular values must equal ``merge_and_unload()``
minus W0. A type the installed peft cannot build is skipped with peft's reason. Types without a ΔW
are refused in one line that says why. The default model is read too, where a tiny model once hid a bug.
"""

from __future__ import annotations

import json

import pytest
import torch
from peft_zoo import CONFIGS, NO_UPDATE, assert_matches, build, peft_answer

from helpers import cli, expect_error
from tlora_analysis.errors import InputError
from tlora_analysis.peft_types import PEFT_TYPES, initial_update_is_zero
from tlora_analysis.sources import PeftAdapter, open_updates


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    from tlora_analysis.models import load_model

    return load_model(tiny_model_dir, num_labels=2).eval()


@pytest.fixture(scope="module")
def other_base_dir(tmp_path_factory):
    """A tiny BERT of the same shape with other weights: an update read on it differs exactly where it depends on W0."""
    from transformers import BertConfig, BertForSequenceClassification

    from tlora_analysis.models import load_tokenizer

    path, tokenizer = tmp_path_factory.mktemp("other-bert"), load_tokenizer("default")
    torch.manual_seed(1)
    BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=128)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_peft_type_reads_as_peft_merges_it(tmp_path, name, tiny_base, tiny_model_dir, other_base_dir):
    model, reason = build(name, tiny_base)
    if model is None:
        pytest.skip(reason)
    model.save_pretrained(tmp_path / "adapter")
    source = open_updates(tmp_path / "adapter", base=tiny_model_dir)
    assert isinstance(source, PeftAdapter) and source.layers
    assert_matches(source.deltas(), peft_answer(tmp_path / "adapter", tiny_base))
    spec = PEFT_TYPES[json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["peft_type"]]
    assert {record["form"] for record in source.layers.values()} <= ({"factored", "dense"} if spec.kind == "factored" else {"dense"})
    if spec.kind == "dense":  # the registry's reason is true: the same adapter on other weights moves exactly where it says W0 matters
        other = open_updates(tmp_path / "adapter", base=other_base_dir).deltas()
        moved = max(abs(d.frobenius_norm() - other[n].frobenius_norm()) / d.frobenius_norm() for n, d in source.deltas().items())
        assert (moved > 1e-6) == spec.why.startswith("its update depends on W0"), (name, moved, spec.why)
        assert_streams_as_the_registry_says(tmp_path / "adapter", tiny_model_dir, spec, source.deltas())


def assert_streams_as_the_registry_says(folder, base, spec, whole):
    """A type the registry says streams gives, on a skeleton of the base with W0 read layer by layer, exactly the
    whole-base reading; any other is refused before peft builds it (some were silently wrong on a skeleton)."""
    from safetensors.torch import load_file

    from tlora_analysis.peft_types.engine import PeftEngine

    config, tensors = json.loads((folder / "adapter_config.json").read_text()), load_file(str(folder / "adapter_model.safetensors"))
    if not spec.streams:
        with pytest.raises(InputError, match="derives parts of itself from W0"):
            PeftEngine(config, base, str(folder), stream=True)
        return
    streamed = PeftEngine(config, base, str(folder), stream=True).deltas(tensors)
    for name, delta in whole.items():
        torch.testing.assert_close(streamed[name], delta.dense(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_init_registry_says_which_types_start_at_zero(name, tiny_base):
    """Where the registry says an adapter starts at ΔW = 0 (a Trainer trajectory's epoch 0 is then known), peft agrees."""
    import copy

    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    settings = dict(CONFIGS[name])
    peft_type = settings.pop("peft_type", name)
    settings.setdefault("target_modules", ["query", "value"])
    try:
        config = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](**settings)
        model = peft.get_peft_model(copy.deepcopy(tiny_base), config)
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"peft cannot build {name}: {err}")
    config_dict = json.loads(json.dumps(config.to_dict(), default=lambda v: sorted(v) if isinstance(v, set) else str(v)))
    if not initial_update_is_zero(config_dict):
        return
    original = {n: m.weight.detach().clone() for n, m in tiny_base.named_modules() if getattr(m, "weight", None) is not None}
    merged = model.merge_and_unload()
    for module_name, module in merged.named_modules():
        if module_name in original and getattr(module, "weight", None) is not None:
            assert torch.allclose(module.weight, original[module_name], atol=1e-6), (name, module_name)


@pytest.mark.parametrize("peft_type", NO_UPDATE)
def test_types_without_an_update_are_refused_in_one_line(tmp_path, peft_type):
    from safetensors.torch import save_file

    folder = tmp_path / peft_type.lower()
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": peft_type, "r": 4}))
    save_file({"base_model.prompt_embeddings": torch.zeros(2, 4)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(InputError, match=f"peft_type {peft_type}\\) has no ΔW to read: "):
        open_updates(folder)
    assert PEFT_TYPES[peft_type].why


def test_every_peft_type_has_an_entry():
    from peft.utils import PeftType

    assert {t.value for t in PeftType} == set(PEFT_TYPES)


def test_a_dense_type_without_its_base_says_how_to_give_it(tmp_path, tiny_base, tiny_model_dir):
    model, _ = build("OFT", tiny_base)
    model.save_pretrained(tmp_path / "oft")
    config = json.loads((tmp_path / "oft" / "adapter_config.json").read_text())
    (tmp_path / "oft" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/else-model"}))
    expect_error(cli("inspect", tmp_path / "oft"), "it is needed because peft computes", "give it yourself (--base or --model)")
    result = cli("inspect", tmp_path / "oft", "--base", tiny_model_dir)
    assert result.returncode == 0, result.stderr
    assert "oft" in result.stdout


@pytest.mark.parametrize("name, field, value", [("HRA", "r", 10**7), ("OFT", "oft_block_size", 32), ("BOFT", "boft_block_size", 32)])
def test_a_config_that_implies_other_tensors_than_its_file_holds_is_refused_before_peft_allocates_them(tmp_path, tiny_base, tiny_model_dir,
                                                                                                         name, field, value):
    """HRA with r = 10⁶ beside a file of r = 8 once took 20 GB and ended in a traceback: the shapes peft would build are
    read on the meta device first, so the reader's memory stays proportional to the file."""
    import resource

    model, reason = build(name, tiny_base)
    if model is None:
        pytest.skip(reason)
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, field: value}))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="has shape .* but its adapter_config.json implies .* do not belong together"):
        open_updates(tmp_path / "adapter", base=tiny_model_dir).deltas()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 1 << 20  # KiB: under 1 GiB more at the peak


# --------------------------------------------------------------------------- the real default model
@pytest.fixture(scope="module")
def default_base():
    from tlora_analysis.models import load_model

    return load_model("default", num_labels=2).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["VERA", "DORA", "PISSA", "LOHA", "IA3", "RANDLORA"])
def test_peft_adapters_on_the_default_model_read_as_peft_merges_them(tmp_path, name, default_base):
    """On all-MiniLM-L6-v2 (a checkpoint without the ``bert.`` prefix the adapters' names carry), with the
    base named only in the adapter's own config: no ``--base``."""
    model, reason = build(name, default_base)
    if model is None:
        pytest.skip(reason)
    model.save_pretrained(tmp_path / "adapter")
    source = open_updates(tmp_path / "adapter")
    assert_matches(source.deltas(), peft_answer(tmp_path / "adapter", default_base))
    result = cli("inspect", tmp_path / "adapter", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["totals"]["layers"] == 12


@pytest.mark.slow
def test_an_unconverted_pissa_adapter_is_measured_from_the_original_w0(tmp_path, default_base):
    """ΔW of PiSSA saved unconverted is s·(B·A − B0·A0), not s·B·A, which on the real model is far off."""
    model, _ = build("PISSA", default_base)
    model.save_pretrained(tmp_path / "pissa")
    true = peft_answer(tmp_path / "pissa", default_base)
    source = open_updates(tmp_path / "pissa")
    assert source.method == "pissa"
    name = next(iter(true))
    naive = source._reading.trainable[name]
    wrong = float((naive["B"].double() @ naive["A"].double()).norm()) * source.layers[name]["scaling"]
    assert abs(wrong - float(true[name].norm())) > 0.25 * float(true[name].norm())  # reading s·B·A alone would be this far off
    assert abs(source.deltas()[name].frobenius_norm() - float(true[name].norm())) < 1e-4 * float(true[name].norm())


def test_what_is_not_read_is_named(tmp_path, tiny_base, tiny_model_dir):
    import copy

    import peft

    config = peft.LoraConfig(r=2, target_modules=["query", "value"], lora_bias=True, modules_to_save=["classifier"])
    model = peft.get_peft_model(copy.deepcopy(tiny_base), config)
    model.save_pretrained(tmp_path / "biased")
    source = open_updates(tmp_path / "biased", base=tiny_model_dir)
    notices = " ".join(source.notices)
    assert "lora_bias: the bias updates of 4 layers" in notices
    assert "modules_to_save classifier (2 tensors) not analysed: they are trained copies that replace whole modules" in notices
    assert "no part of a layer's ΔW" not in notices  # every tensor left out is named by what it is
    result = cli("inspect", tmp_path / "biased")
    assert result.returncode == 0 and "notice: " in result.stderr and "lora_bias" in result.stderr, result.stderr
