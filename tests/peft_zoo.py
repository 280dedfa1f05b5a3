"""Adapters of every peft type, made by peft itself: the configs the reader tests build, and peft's own answer.

Each config suits a small BERT (hidden size 32 or the default model's 384): block sizes divide the width.
``peft_answer`` is what every reading is checked against: ``merge_and_unload()`` minus W0, per layer.
"""

from __future__ import annotations

import copy

import torch

TARGETS = ["query", "value"]

CONFIGS = {
    "LORA": {"r": 4, "lora_alpha": 8},
    "RSLORA": {"peft_type": "LORA", "r": 4, "lora_alpha": 16, "use_rslora": True, "rank_pattern": {"value": 2},
               "alpha_pattern": {"layer.1.attention.self.query": 3}},
    "DORA": {"peft_type": "LORA", "r": 4, "use_dora": True},
    "PISSA": {"peft_type": "LORA", "r": 4, "init_lora_weights": "pissa"},
    "OLORA": {"peft_type": "LORA", "r": 4, "init_lora_weights": "olora"},
    "LORA_EMBEDDING": {"peft_type": "LORA", "r": 4, "target_modules": ["word_embeddings", "query"]},
    "ADALORA": {"total_step": 10, "init_r": 6, "target_r": 4},
    "ADAMSS": {},
    "BOFT": {"boft_block_size": 4},
    "IA3": {"feedforward_modules": []},
    "LOHA": {"r": 4},
    "LOKR": {"r": 2},
    "OFT": {"r": 0, "oft_block_size": 8},
    "VERA": {"r": 8},
    "FROD": {},
    "PVERA": {"r": 8},
    "FOURIERFT": {"n_frequency": 40},
    "GLORA": {},
    "HRA": {"r": 4},
    "VBLORA": {"num_vectors": 32, "vector_length": 8, "r": 4},
    "UNILORA": {},
    "MISS": {"r": 8},
    "RANDLORA": {"r": 8},
    "ROAD": {"group_size": 8},
    "TRAINABLE_TOKENS": {"target_modules": ["word_embeddings"], "token_indices": [5, 17, 99]},
    "HIRA": {},
    "SHIRA": {"r": 4},
    "C3A": {"block_size": 8},
    "WAVEFT": {"n_frequency": 100},
    "OSF": {},
    "DELORA": {},
    "GRALORA": {"r": 8},
    "TINYLORA": {},
    "PSOFT": {},
    "PEANUT": {},
    "SUPERTUNING": {},
    "DEFT": {},
}
"""Every peft type (and LoRA variant) with a ΔW, by a name; ``peft_type`` where the name is a variant."""

NO_UPDATE = ["PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT", "CARTRIDGE", "XLORA",
             "POLY", "SHADOW", "LILY", "LN_TUNING", "BEFT"]
"""peft types with no single ΔW: prompt-style, input- or task-dependent, not mergeable, or biases only."""


def build(name: str, base_model, seed: int = 0):
    """A peft model of config ``name`` on a copy of ``base_model``, every trainable adapter tensor perturbed
    (so that the update is not its init), or the reason the installed peft cannot build it."""
    import peft
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    settings = dict(CONFIGS[name])
    peft_type = settings.pop("peft_type", name)
    settings.setdefault("target_modules", TARGETS)
    try:
        config = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type](**settings)
        model = peft.get_peft_model(copy.deepcopy(base_model), config)
    except Exception as err:  # noqa: BLE001 - the reason is reported as the skip reason
        return None, f"peft {peft.__version__} cannot build {name}: {type(err).__name__}: {err}"
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param.requires_grad and param.is_floating_point() and "classifier" not in param_name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model, None


def peft_answer(folder, base_model) -> dict[str, torch.Tensor]:
    """ΔW per layer as peft computes it: the saved adapter loaded on the base, merged, minus W0 (float64)."""
    import peft

    original = {n: m.weight.detach().double() for n, m in base_model.named_modules() if getattr(m, "weight", None) is not None
                and m.weight.ndim == 2}
    from peft.tuners.tuners_utils import BaseTunerLayer

    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base_model), str(folder))
    adapted = {n.removeprefix("base_model.model.") for n, m in loaded.named_modules() if isinstance(m, BaseTunerLayer)}
    merged = loaded.merge_and_unload()  # modules_to_save copies are no update of W0: left out
    out = {}
    for name, module in merged.named_modules():
        weight = getattr(module, "weight", None)
        if name in original and name in adapted and weight is not None and not torch.equal(weight.detach().double(), original[name]):
            out[name] = weight.detach().double() - original[name]
    return out


def assert_matches(deltas: dict, answer: dict, tolerance: float = 1e-4) -> None:
    """Every layer peft changed is read, with ‖ΔW‖_F and the top singular values equal to peft's (relative tolerance)."""
    assert set(answer) <= set(deltas), sorted(set(answer) - set(deltas))[:3]
    for name, expected in answer.items():
        delta = deltas[name]
        assert delta.shape == tuple(expected.shape), (name, delta.shape, expected.shape)
        reference = torch.linalg.svdvals(expected)
        values = delta.singular_values()
        k = min(4, len(values), len(reference))
        scale = float(reference[0]) or 1.0
        assert abs(delta.frobenius_norm() - float(expected.norm())) <= tolerance * float(expected.norm()) + 1e-12, name
        assert float((values[:k] - reference[:k]).abs().max()) <= tolerance * scale, (name, values[:k], reference[:k])
