"""Decoder LLMs built from configs (random weights, no download): Llama, Qwen2 and GPT-2's Conv1D."""

import pytest
import torch
from torch import nn

from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.sources import open_updates
from tlora_analysis.store import load_run

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(kind: str):
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    torch.manual_seed(0)
    common = dict(vocab_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = {
        "llama": lambda: LlamaConfig(hidden_size=32, intermediate_size=48, num_key_value_heads=1, **common),
        "qwen2": lambda: Qwen2Config(hidden_size=32, intermediate_size=48, num_key_value_heads=1, **common),
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=64),
    }[kind]()
    return AutoModelForCausalLM.from_config(config).eval()


EXPECTED = {
    "llama": ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}),
    "qwen2": ({"q_proj", "k_proj", "v_proj", "o_proj"}, {"gate_proj", "up_proj", "down_proj"}),
    "gpt2": ({"attn.c_attn", "attn.c_proj"}, {"mlp.c_fc", "mlp.c_proj"}),
}


def suffixes(model, n=1):
    return {".".join(name.split(".")[-n:]) for name in adapter_layers(model)}


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_presets_pick_peft_s_layers(kind):
    attention, mlp = EXPECTED[kind]
    n = 2 if kind == "gpt2" else 1
    assert suffixes(inject_adapters(tiny(kind), "lora", 4, ["attention"]), n) == attention
    assert suffixes(inject_adapters(tiny(kind), "lora", 4, ["mlp"]), n) == mlp
    everything = inject_adapters(tiny(kind), "tlora", 4, ["all-linear"])
    assert suffixes(everything, n) == attention | mlp
    assert not any("lm_head" in name for name in adapter_layers(everything))  # peft's all-linear leaves the output head alone


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_delta_probed_through_the_forward_pass_equals_dense(kind, method):
    original = tiny(kind)
    reference = {name: module for name, module in original.named_modules()}
    model = inject_adapters(tiny(kind), method, 4, ["all-linear"], seed=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for p in layer.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=generator) * 0.1 + (1.0 if p.ndim == 0 else 0.0))
    for name, layer in adapter_layers(model).items():
        x_in = torch.randn(5, layer.in_features, generator=generator)
        # the untouched model's own module (Conv1D for GPT-2: y = x W + b, W stored in x out)
        expected_base = reference[name](x_in)
        with torch.no_grad():
            probed = layer(x_in) - expected_base
        dense = layer.delta().dense(torch.float64)
        torch.testing.assert_close(probed.double(), x_in.double() @ dense.T, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_a_few_causal_lm_steps_are_recorded_and_reload_equal_to_the_live_model(tmp_path, kind, method):
    model = inject_adapters(tiny(kind).train(), method, 4, ["attention"], seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    tokens = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0))
    with DeltaRecorder(model, tmp_path / "run", metadata={"task": "lm", "main_metric": "loss"}) as recorder:
        recorder.snapshot(0)
        losses = []
        for _ in range(3):
            loss = model(input_ids=tokens, labels=tokens).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        recorder.snapshot(1, {"loss": losses[-1]})
        recorder.finish()
    assert losses[-1] < losses[0]
    run = load_run(tmp_path / "run")
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(run.deltas(1)[name].dense(torch.float64), layer.delta().dense(torch.float64), rtol=1e-6, atol=1e-8)
    assert run.deltas(1)[next(iter(adapter_layers(model)))].frobenius_norm() > 0


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_inspect_reads_the_peft_adapters_peft_saves_for_decoders(tmp_path, kind):
    from peft import LoraConfig, get_peft_model

    targets = ["c_attn", "c_fc"] if kind == "gpt2" else ["q_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(tiny(kind), LoraConfig(r=4, lora_alpha=8, target_modules=targets, fan_in_fan_out=kind == "gpt2"))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator))
    peft_model.save_pretrained(tmp_path / "adapter")
    source = open_updates(tmp_path / "adapter")
    deltas = source.deltas()
    modules = {n: m for n, m in peft_model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")}
    assert len(deltas) == len(modules) > 0
    for name, module in modules.items():
        expected = module.get_delta_weight("default").double()
        if kind == "gpt2":
            expected = expected.T  # peft returns Conv1D's orientation (d_in x d_out); ours is nn.Linear's
        key = next(k for k in deltas if name.endswith(k) or k.endswith(name.split("base_model.model.", 1)[-1]))
        torch.testing.assert_close(deltas[key].dense(torch.float64), expected, rtol=1e-5, atol=1e-6)


def test_conv1d_is_replaced_by_an_equivalent_linear():
    from transformers.pytorch_utils import Conv1D

    from tlora_analysis.adapters import as_linear

    conv = Conv1D(7, 5)
    nn.init.normal_(conv.weight)
    linear = as_linear(conv)
    x = torch.randn(3, 5)
    torch.testing.assert_close(linear(x), conv(x))
    assert linear.weight.shape == (7, 5) and not linear.weight.requires_grad


def test_causal_lm_task_trains_on_completions_only(tmp_path, tiny_llama_dir):
    from tlora_analysis.data import load_task
    from tlora_analysis.data.lm import encode_lm
    from tlora_analysis.models import load_tokenizer
    from tlora_analysis.training import TrainConfig, restore_model, train

    tokenizer = load_tokenizer(tiny_llama_dir)
    example = load_task("lm", max_train_samples=1).train[0]
    feature = encode_lm(tokenizer, [example], 64)[0]
    completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
    assert feature["labels"][-len(completion):] == completion and set(feature["labels"][:-len(completion)]) == {-100}
    runs = {}
    for method in ("lora", "tlora"):
        config = TrainConfig(method=method, task="lm", model=tiny_llama_dir, targets=["all-linear"], epochs=2, max_train_samples=32,
                             max_eval_samples=8, batch_size=8, lr=1e-2)
        runs[method] = run = train(config, tmp_path / method, progress=False, log=lambda _: None)
        assert run.meta["main_metric"] == "perplexity" and run.metrics[2]["perplexity"] < run.metrics[0]["perplexity"]
        assert {name.rsplit(".", 1)[-1] for name in run.layers} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        restored = restore_model(run)
        live = adapter_layers(restored)
        for name, delta in run.deltas(2).items():
            torch.testing.assert_close(live[name].delta().dense(torch.float64), delta.dense(torch.float64))


def test_lm_data_files(tmp_path, tiny_llama_dir):
    from helpers import cli, expect_error

    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(['{"prompt": "2 + 2 =", "completion": " 4"}'] * 9 + ['{"text": "plain text is learned whole"}']) + "\n")
    result = cli("train", "--method", "tlora", "--task", "lm", "--model", tiny_llama_dir, "--data-file", data, "--targets", "attention",
                 "--epochs", "1", "--batch-size", "4", "--out", tmp_path / "run", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"text": "y"}\n')
    expect_error(cli("train", "--method", "lora", "--task", "lm", "--model", tiny_llama_dir, "--data-file", bad, "--out", tmp_path / "r2"),
                 "line 1 needs a string 'text'")
    expect_error(cli("train", "--method", "lora", "--task", "lm", "--out", tmp_path / "r3"), "--task lm", "--model")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()


def test_inspect_with_a_sharded_base_reads_tensors_one_at_a_time_and_caches_w0_svd(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from tlora_analysis.analysis import amplification, intruder_dimensions
    from tlora_analysis.base_weights import SafetensorsWeights
    from tlora_analysis.checkpoints import inspect_checkpoint

    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    base = tiny("llama")
    base.save_pretrained(tmp_path / "base", max_shard_size="20KB")
    assert len(list((tmp_path / "base").glob("model-*-of-*.safetensors"))) > 2
    peft_model = get_peft_model(tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    peft_model.save_pretrained(tmp_path / "adapter")
    source = open_updates(tmp_path / "adapter")
    in_memory = {n: tiny("llama").get_submodule(n.split("base_model.model.", 1)[-1]).weight.detach() for n in source.layers}
    lazy = SafetensorsWeights(tmp_path / "base", list(source.layers))
    for name in source.layers:
        torch.testing.assert_close(lazy[name], in_memory[name])
    expected = intruder_dimensions(source, in_memory, k=3)
    table = inspect_checkpoint(tmp_path / "adapter", base=str(tmp_path / "base"), intruder_k=3)
    assert list(table.intruders) == list(expected.groupby("name", sort=False).is_intruder.sum())
    amp = amplification(source, in_memory).set_index("name")
    assert list(table.amplification) == pytest.approx(list(amp.loc[table.name, "amplification"]), rel=1e-6)
    cached = sorted((tmp_path / "cache" / "w0_svd").glob("*.safetensors"))
    assert len(cached) == len(source.layers)

    def no_svd(*args, **kwargs):
        raise AssertionError("W0's SVD should come from the cache")

    import tlora_analysis.base_weights

    monkeypatch.setattr(tlora_analysis.base_weights, "_svd", no_svd)
    again = inspect_checkpoint(tmp_path / "adapter", base=str(tmp_path / "base"), intruder_k=3)
    pd_equal = (again[["amplification", "intruders"]].to_numpy() == table[["amplification", "intruders"]].to_numpy()).all()
    assert pd_equal and sorted((tmp_path / "cache" / "w0_svd").glob("*.safetensors")) == cached
