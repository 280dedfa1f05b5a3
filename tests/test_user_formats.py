"""The updates users bring from elsewhere: a peft model trained with the Trainer and the callback, a Trainer's
output directory, kohya-ss and LyCORIS files, a peft state dict in one file, adapters saved by name, fine-tuned
models, and this toolkit's adapters saved inside a model; and the ``compare`` command over them."""

from __future__ import annotations

import copy
import json
import math
import shutil

import peft
import pytest
import torch
from peft_zoo import assert_matches, build, peft_answer
from safetensors.torch import load_file, save_file

from helpers import cli, expect_error, tree_digest
from tlora_analysis import inject_adapters
from tlora_analysis.errors import InputError
from tlora_analysis.integrations.trainer import DeltaRecorderCallback
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.sources import open_updates
from tlora_analysis.store import PeftRun, load_run

SENTENCES = ["the film is not good", "a truly wonderful story", "the plot was hardly dull", "a boring mess"] * 4
LABELS = [0, 1, 1, 0] * 4


def trainer_run(model, tokenizer, out, callbacks=(), save_strategy="epoch", epochs=2):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    encoded = tokenizer(SENTENCES)
    dataset = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": LABELS[i]}
               for i in range(len(LABELS))]
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=2e-2,
                             eval_strategy="epoch", save_strategy=save_strategy, report_to=[], use_cpu=True, logging_steps=1,
                             disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
                      callbacks=list(callbacks))
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    return load_model(tiny_model_dir, num_labels=2)


@pytest.mark.parametrize("config", [
    peft.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    peft.LoHaConfig(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
    peft.IA3Config(target_modules=["query", "value"], feedforward_modules=[], modules_to_save=["classifier"]),
], ids=["lora", "loha", "ia3"])
def test_a_peft_model_trained_by_the_trainer_is_recorded_every_epoch(tmp_path, tiny_base, tiny_model_dir, config):
    """The callback records a peft model (factored or computed by peft) at epoch 0 and after each epoch; the
    last epoch equals the adapter the Trainer saved, and the output directory reads as the same trajectory."""
    model = peft.get_peft_model(copy.deepcopy(tiny_base), copy.deepcopy(config))
    trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / "out", [DeltaRecorderCallback(tmp_path / "run", metadata={"task": "toy"})])
    run = load_run(tmp_path / "run", base=tiny_model_dir)
    assert isinstance(run, PeftRun) and run.epochs == [0, 1, 2] and run.method == config.peft_type.value.lower()
    assert run.meta["parameter_counts"]["adapter_trainable"] == sum(p.numel() for n, p in model.named_parameters()
                                                                   if p.requires_grad and "classifier" not in n)
    assert "eval_loss" in run.metrics[2]
    assert all(d.frobenius_norm() < 1e-6 for d in run.deltas(0).values())
    model.save_pretrained(tmp_path / "saved")
    assert_matches(run.deltas(2), peft_answer(tmp_path / "saved", tiny_base))
    output = open_updates(tmp_path / "out", base=tiny_model_dir)
    assert output.epochs == [0, 1, 2] and output.meta["state_unit"] == "epoch"
    for name, delta in output.deltas(2).items():
        assert delta.frobenius_norm() == pytest.approx(run.deltas(2)[name].frobenius_norm(), rel=1e-5)
    assert "eval_loss" in output.metrics[2]


def test_the_trainer_output_draws_its_trajectory(tmp_path, tiny_base, tiny_model_dir):
    model = peft.get_peft_model(copy.deepcopy(tiny_base), peft.LoraConfig(r=4, target_modules=["query", "value"]))
    trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / "out")
    for extra in (["checkpoint-2", "optimizer.pt"], ["checkpoint-4", "rng_state.pth"]):  # the pickles beside it are never opened
        assert (tmp_path / "out" / extra[0]).is_dir()
    result = cli("figures", tmp_path / "out", "--out", tmp_path / "figs", "--base", tiny_model_dir, "--formats", "png")
    assert result.returncode == 0, result.stderr
    made = json.loads((tmp_path / "figs" / "figures.json").read_text())
    assert {"norms", "spectra", "subspace_drift"} <= {entry["name"] for entry in made["figures"]}
    result = cli("analyze", tmp_path / "out", "--out", tmp_path / "tables", "--no-base")
    assert result.returncode == 0, result.stderr
    norms = (tmp_path / "tables" / "norms.csv").read_text()
    assert norms.count("\n") > 4 * 3  # 4 layers x 3 states


def test_checkpoints_saved_by_step_are_keyed_by_step(tmp_path, tiny_base, tiny_model_dir):
    model = peft.get_peft_model(copy.deepcopy(tiny_base), peft.LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    trainer = trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / "out", save_strategy="steps", epochs=1)
    assert trainer.state.global_step == 2
    source = open_updates(tmp_path / "out", base=tiny_model_dir)
    assert source.meta["state_unit"] == "epoch"  # save_steps (500) never hit: only the final checkpoint, at a whole epoch
    assert source.epochs == [1]  # init_lora_weights=False: the state before training is not known, and not invented
    assert any("not recorded" in line for line in source.notices)


def test_a_model_with_nothing_to_record_is_refused_at_train_begin(tmp_path, tiny_base, tiny_model_dir):
    model = copy.deepcopy(tiny_base).requires_grad_(False)
    model.classifier.requires_grad_(True)
    with pytest.raises(InputError, match="no adapter layers .* and no trainable linear layer besides its head .* in: classifier"):
        trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / "out", [DeltaRecorderCallback(tmp_path / "run")])
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_fully_fine_tuned_model_is_recorded_as_full_fine_tuning(tmp_path, tiny_base, tiny_model_dir):
    model = copy.deepcopy(tiny_base)
    trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / "out", [DeltaRecorderCallback(tmp_path / "run")], epochs=1)
    run = load_run(tmp_path / "run")
    assert run.method == "full" and run.epochs == [0, 1]
    name = "bert.encoder.layer.0.attention.self.query"
    expected = model.get_submodule(name).weight.detach() - tiny_base.get_submodule(name).weight.detach()
    torch.testing.assert_close(run.deltas(1)[name].dense().float(), expected, rtol=1e-4, atol=1e-6)
    output = open_updates(tmp_path / "out", base=tiny_model_dir)  # the checkpoints, read against the base
    assert output.epochs == [0, 1]
    assert output.deltas(1)[name].frobenius_norm() == pytest.approx(float(expected.norm()), rel=1e-4)


def test_the_callback_refuses_a_run_directory_that_holds_another_run(tmp_path, tiny_base, tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    first = peft.get_peft_model(copy.deepcopy(tiny_base), peft.LoraConfig(r=2, target_modules=["query"]))
    trainer_run(first, tokenizer, tmp_path / "a", [DeltaRecorderCallback(tmp_path / "run")], epochs=1)
    before = tree_digest(tmp_path / "run")
    other = peft.get_peft_model(copy.deepcopy(tiny_base), peft.LoraConfig(r=4, target_modules=["query"]))
    with pytest.raises(InputError, match="already holds another run"):
        trainer_run(other, tokenizer, tmp_path / "b", [DeltaRecorderCallback(tmp_path / "run")], epochs=1)
    with pytest.raises(InputError, match="metadata field 'method' is the recorder's own"):
        DeltaRecorderCallback(tmp_path / "other", metadata={"method": "lora"}).on_train_begin(
            type("Args", (), {"world_size": 1, "seed": 0})(), type("State", (), {"is_world_process_zero": True, "global_step": 0})(),
            None, model=first)
    assert tree_digest(tmp_path / "run") == before


def test_our_adapters_in_a_trainer_checkpoint_are_read_without_the_optimizer(tmp_path, tiny_model_dir):
    for method in ("lora", "tlora", "vera"):
        model = inject_adapters(load_model(tiny_model_dir), method, 4, ["query", "value"], modules_to_save=["classifier"])
        trainer_run(model, load_tokenizer(tiny_model_dir), tmp_path / method, epochs=1)
        source = open_updates(tmp_path / method)
        assert source.method == method and source.epochs == [0, 1]
        live = {n: layer.delta() for n, layer in model.named_modules() if hasattr(layer, "delta") and hasattr(layer, "method")}
        for name, delta in live.items():
            assert source.deltas(1)[name].frobenius_norm() == pytest.approx(delta.frobenius_norm(), rel=1e-5)


def test_adapters_saved_under_their_names_are_read(tmp_path, tiny_base, tiny_model_dir):
    model = peft.get_peft_model(copy.deepcopy(tiny_base), peft.LoraConfig(r=2, target_modules=["query"]), adapter_name="mine")
    model.save_pretrained(tmp_path / "named")
    assert (tmp_path / "named" / "mine" / "adapter_config.json").is_file()
    assert open_updates(tmp_path / "named").layers
    model.add_adapter("theirs", peft.LoraConfig(r=2, target_modules=["value"]))
    model.save_pretrained(tmp_path / "two")
    expect_error(cli("inspect", tmp_path / "two"), "holds 2 peft adapters (mine, theirs); give one folder")


def test_a_peft_state_dict_in_one_file_reads_with_its_config_beside_it(tmp_path, tiny_base, tiny_model_dir):
    model, _ = build("LORA", tiny_base)
    model.save_pretrained(tmp_path / "adapter")
    single = tmp_path / "state" / "weights.safetensors"
    single.parent.mkdir()
    shutil.copy(tmp_path / "adapter" / "adapter_model.safetensors", single)
    expect_error(cli("inspect", single), "a peft state dict", "without an adapter_config.json beside it")
    shutil.copy(tmp_path / "adapter" / "adapter_config.json", single.parent)
    assert_matches(open_updates(single).deltas(), peft_answer(tmp_path / "adapter", tiny_base))


def test_kohya_and_lycoris_files_read_as_their_loaders_apply_them(tmp_path):
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 48, generator=g), torch.randn(32, 4, generator=g)
    w1a, w1b, w2a, w2b = (torch.randn(*s, generator=g) for s in ((32, 4), (4, 48), (32, 4), (4, 48)))
    k1, k2a, k2b = torch.randn(4, 6, generator=g), torch.randn(8, 2, generator=g), torch.randn(2, 8, generator=g)
    name = "lora_unet_down_blocks_0_attentions_1_proj_in"
    files = {
        "kohya": ({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.alpha": torch.tensor(2.0),
                   f"{name}_conv.lora_down.weight": torch.randn(4, 8, 3, 3)}, up @ down * 2.0 / 4),
        "loha": ({f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b, f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b,
                  f"{name}.alpha": torch.tensor(8.0)}, (w1a @ w1b) * (w2a @ w2b) * 8.0 / 4),
        "lokr": ({f"{name}.lokr_w1": k1, f"{name}.lokr_w2_a": k2a, f"{name}.lokr_w2_b": k2b, f"{name}.alpha": torch.tensor(1.0)},
                 torch.kron(k1, k2a @ k2b) * 1.0 / 2),
        "full": ({f"{name}.diff": up @ down}, up @ down),
    }
    for kind, (tensors, expected) in files.items():
        save_file(tensors, str(tmp_path / f"{kind}.safetensors"))
        source = open_updates(tmp_path / f"{kind}.safetensors")
        (layer, delta), = source.deltas().items()
        assert layer == "unet_down_blocks.0.attentions.1.proj_in"
        assert delta.frobenius_norm() == pytest.approx(float(expected.double().norm()), rel=1e-6), kind  # the expectation is float32
        torch.testing.assert_close(delta.singular_values()[:3], torch.linalg.svdvals(expected.double())[:3], rtol=1e-6, atol=1e-9)
    assert any("convolution" in line for line in open_updates(tmp_path / "kohya.safetensors").notices)
    save_file({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up, f"{name}.dora_scale": torch.ones(32, 1)},
              str(tmp_path / "dora.safetensors"))
    expect_error(cli("inspect", tmp_path / "dora.safetensors"), "dora_scale", "needs the base model's weights")


def test_a_fine_tuned_model_reads_against_its_base(tmp_path, tiny_base, tiny_model_dir):
    tuned = copy.deepcopy(tiny_base)
    name = "bert.encoder.layer.1.attention.output.dense"
    with torch.no_grad():
        tuned.get_submodule(name).weight.add_(0.01)
    tuned.save_pretrained(tmp_path / "tuned")
    expect_error(cli("inspect", tmp_path / "tuned"), "ΔW = W_ft − W0 needs the base model: pass --base MODEL")
    expect_error(cli("inspect", tmp_path / "tuned" / "model.safetensors"), "pass --base MODEL")
    for path in (tmp_path / "tuned", tmp_path / "tuned" / "model.safetensors"):
        source = open_updates(path, base=tiny_model_dir)
        assert set(source.deltas()) == {name}
        assert source.deltas()[name].frobenius_norm() == pytest.approx(0.01 * 32, rel=1e-4)


def test_compare_prints_every_source_and_pair(tmp_path, tiny_base, tiny_model_dir):
    for kind in ("LORA", "LOHA"):
        model, _ = build(kind, tiny_base)
        model.save_pretrained(tmp_path / kind.lower())
    result = cli("compare", f"mine={tmp_path / 'lora'}", f"theirs={tmp_path / 'loha'}", "--no-base", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [s["run"] for s in out["sources"]] == ["mine", "theirs"] and [s["method"] for s in out["sources"]] == ["lora", "loha"]
    (pair,) = out["pairs"]
    assert pair["layers"] == 4 and -1 <= pair["mean_cosine"] <= 1 and pair["norm_ratio_a_to_b"] > 0
    lora, loha = (open_updates(tmp_path / k) for k in ("lora", "loha"))
    ratio = sum(d.frobenius_norm() for d in lora.deltas().values()) / sum(d.frobenius_norm() for d in loha.deltas().values())
    assert math.isclose(pair["norm_ratio_a_to_b"], ratio, rel_tol=1e-6)
    text = cli("compare", tmp_path / "lora", tmp_path / "loha", "--no-base")
    assert text.returncode == 0 and "mean_cosine" in text.stdout, text.stderr


def test_float8_tensors_are_read_upcast(tmp_path, tiny_base):
    model, _ = build("LORA", tiny_base)
    model.save_pretrained(tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in tensors.items()}, str(weights))
    assert open_updates(tmp_path / "adapter").deltas()


def test_the_docs_list_every_format_and_peft_type_as_the_registries_do():
    from pathlib import Path

    from tlora_analysis.peft_types.spec import peft_types_table
    from tlora_analysis.sources import formats_table

    text = (Path(__file__).parent.parent / "docs" / "your-adapters.md").read_text()
    assert formats_table() in text and peft_types_table() in text
