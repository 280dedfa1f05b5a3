"""Adapter layers: injection, parameter roles, ΔW seen through the forward pass, and peft parity."""

import math

import pytest
import torch
from torch import nn

from tlora_analysis import LoRALinear, TLoRALinear, adapter_layers, count_parameters, inject_adapters
from tlora_analysis.adapters import tensor_sha256, tlora_frozen_matrices
from tlora_analysis.config import METHODS


def probe_delta(layer):
    """ΔW read off the forward pass: layer(I) − base(I) = (ΔW · I)ᵀ."""
    eye = torch.eye(layer.in_features, dtype=torch.float64)
    with torch.no_grad():
        layer64 = layer.double()
        diff = layer64(eye) - layer64.base(eye)
        layer.float()
    return diff.T


def randomize_trainable(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            for name, p in layer.named_parameters():
                if not name.startswith("base."):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (1.0 if p.ndim == 0 else 0.0))


@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_injection_freezes_base_and_matches_targets(tiny_model, method):
    model = inject_adapters(tiny_model, method, rank=4, target_modules=["query", "value"], modules_to_save=["classifier"])
    layers = adapter_layers(model)
    assert list(layers) == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter_names = {"lora": ("lora_A", "lora_B"), "tlora": ("tlora_B", "tlora_alpha")}[method]
    assert all(n.endswith(adapter_names) or n.startswith("classifier.") for n in trainable)
    assert {"classifier.weight", "classifier.bias"} <= trainable
    counts = count_parameters(model)
    per_layer = {"lora": 4 * (32 + 32), "tlora": 4 * 4 + 1}[method]
    assert counts.adapter_trainable == 4 * per_layer
    assert counts.other_trainable == 32 * 2 + 2
    assert counts.frozen_random == (4 * (32 * 4 + 4 * 32) if method == "tlora" else 0)
    assert counts.trainable + counts.base_frozen == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("method", METHODS)
def test_adapted_model_equals_base_at_init_and_delta_matches_forward(tiny_model_dir, method):
    from tlora_analysis.models import load_model, load_tokenizer

    base = load_model(tiny_model_dir).eval()
    model = inject_adapters(load_model(tiny_model_dir).eval(), method, 4, ["query", "value"], seed=3)
    batch = load_tokenizer(tiny_model_dir)(["not bad at all", "a dull film"], padding=True, return_tensors="pt")
    zero_at_init = method != "loraxs"  # the LoRA-XS authors draw R from Normal(0, 1e-5²)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, base(**batch).logits, rtol=0 if zero_at_init else 1e-5,
                                   atol=0 if zero_at_init else 1e-6)
    for layer in adapter_layers(model).values():
        assert layer.delta().frobenius_norm() == 0.0 if zero_at_init else layer.delta().frobenius_norm() < 1e-3
    randomize_trainable(model)
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(probe_delta(layer), layer.delta().dense().double(), rtol=1e-5, atol=1e-6, msg=name)


def test_bad_arguments_name_what_was_wrong(tiny_model):
    with pytest.raises(ValueError, match="method must be one of lora, lorafa, tlora, vera, loraxs, full; got 'dora'"):
        inject_adapters(tiny_model, "dora", 4, ["query"])
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        inject_adapters(tiny_model, "lora", 0, ["query"])
    with pytest.raises(ValueError, match=r"rank 40 exceeds .* 32 .*query"):
        inject_adapters(tiny_model, "lora", 40, ["query"])
    with pytest.raises(ValueError, match=r"target 'q_proj' matches no linear layer.*query.*value"):
        inject_adapters(tiny_model, "lora", 4, ["q_proj"])
    inject_adapters(tiny_model, "lora", 4, ["query"])
    with pytest.raises(ValueError, match="already has adapter layers"):
        inject_adapters(tiny_model, "tlora", 4, ["value"])


def test_lora_matches_peft_layer():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("query", nn.Linear(24, 20))
    peft_model = peft.get_peft_model(
        net, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query"], lora_dropout=0.0, init_lora_weights=False)
    )
    peft_layer = peft_model.base_model.model.query
    ours = LoRALinear(nn.Linear(24, 20), 4, lora_alpha=8)
    with torch.no_grad():
        ours.base.load_state_dict(peft_layer.base_layer.state_dict())
        ours.lora_A.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.copy_(peft_layer.lora_B["default"].weight)
    assert ours.scaling == peft_layer.scaling["default"] == 2.0
    x = torch.randn(5, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peft_layer(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.delta().dense(), peft_layer.get_delta_weight("default"), rtol=1e-6, atol=1e-7)
    rs = LoRALinear(nn.Linear(24, 20), 4, lora_alpha=8, use_rslora=True)
    assert rs.scaling == pytest.approx(8 / math.sqrt(4))


def test_lora_init_follows_peft():
    layer = LoRALinear(nn.Linear(100, 50), 8, seed=1)
    assert float(layer.lora_B.detach().abs().max()) == 0.0
    bound = 1 / math.sqrt(100)  # kaiming_uniform(a=√5) bound
    assert float(layer.lora_A.detach().abs().max()) <= bound
    assert float(layer.lora_A.detach().abs().max()) > 0.9 * bound


def test_tlora_frozen_matrices_are_seeded_buffers_with_unit_scale():
    layer = TLoRALinear(nn.Linear(512, 256), 16, seed=42)
    names = dict(layer.named_buffers())
    assert set(names) == {"tlora_A", "tlora_C"}
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"tlora_B", "tlora_alpha"}
    a, c = tlora_frozen_matrices(42, 256, 512, 16)
    assert tensor_sha256(a) == tensor_sha256(layer.tlora_A)
    assert tensor_sha256(c) == tensor_sha256(layer.tlora_C)
    assert float(layer.tlora_A.std()) == pytest.approx(1 / math.sqrt(16), rel=0.05)
    assert float(layer.tlora_C.std()) == pytest.approx(1 / math.sqrt(512), rel=0.05)
    x = torch.randn(64, 512)
    assert float((x @ layer.tlora_C.T).std()) == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("cls", [LoRALinear, TLoRALinear])
def test_bfloat16_inputs_keep_their_dtype(cls):
    layer = cls(nn.Linear(16, 12), 4)
    layer.base.to(torch.bfloat16)
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (3, 12)


@pytest.mark.slow
def test_offline_minilm_both_methods():
    """The done criterion of the foundation issue, on the real pretrained default model."""
    from tlora_analysis.models import load_model, load_tokenizer

    tokenizer = load_tokenizer("default")
    batch = tokenizer(["the film is not good", "a wonderful, moving story"], padding=True, return_tensors="pt")
    base = load_model("default").eval()
    with torch.no_grad():
        reference = base(**batch).logits
    for method in ("lora", "tlora"):
        model = load_model("default").eval()
        model.load_state_dict(base.state_dict())  # same classifier head as the reference
        inject_adapters(model, method, 8, ["query", "value"], modules_to_save=["classifier"])
        assert len(adapter_layers(model)) == 12
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert all(("lora_" in n or "tlora_" in n or n.startswith("classifier.")) for n in trainable)
        with torch.no_grad():
            torch.testing.assert_close(model(**batch).logits, reference, rtol=0, atol=0)
        randomize_trainable(model, seed=1)
        layer = adapter_layers(model)["bert.encoder.layer.3.attention.self.value"]
        torch.testing.assert_close(probe_delta(layer), layer.delta().dense().double(), rtol=1e-5, atol=1e-6)


def test_the_command_line_offers_exactly_the_registered_methods():
    from tlora_analysis.cli import build_parser
    from tlora_analysis.config import METHODS
    from tlora_analysis.methods import METHOD_SPECS

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    method = next(a for a in train._actions if a.dest == "method")
    assert tuple(method.choices) == tuple(METHOD_SPECS)
    assert set(METHODS) == {name for name, spec in METHOD_SPECS.items() if spec.layer is not None}
