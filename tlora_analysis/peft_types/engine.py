"""peft as the engine: an adapter loaded on its base model, and each layer's update asked of peft itself.

For every peft type whose update is not read from its factors (IA³, OFT, BOFT, HRA, FourierFT, ...),
ΔW is whatever peft merges into W0: the engine merges one layer at a time, takes the merged weight
minus the original W0 (captured before peft touched the model, since some types rewrite W0 when they
are built), and puts the layer back as it was. That is ``merge_and_unload()`` minus W0, layer by layer,
exact by construction; it is computed in float64 so that subtracting W0 loses nothing.

The engine is built once per adapter and reused for every state (a trajectory's epochs): only the
adapter's tensors change between states.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import InputError
from ..methods.peft_format import PEFT_PREFIX

__all__ = ["PeftEngine", "peft_config_object", "TASK_MODEL_CLASSES", "tuner_layers", "delta_shape"]

ADAPTER = "default"
TASK_MODEL_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering", "FEATURE_EXTRACTION": "AutoModel",
}
"""The transformers class peft's ``task_type`` wraps; module names depend on it (``bert.encoder`` vs ``encoder``)."""


def peft_config_object(config: dict, where: str):
    """A peft config object from an adapter_config.json mapping, without ``modules_to_save`` (a trained copy of a
    module is no update of W0) and inference-only. Fields this peft does not know are dropped, as peft's own
    loader drops them; they are returned so that the caller can name them."""
    import dataclasses

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(config.get("peft_type", "LORA")).upper())
    if config_class is None:
        raise InputError(f"{where}: the installed peft does not know peft_type {config.get('peft_type')!r:.40}")
    known = {f.name for f in dataclasses.fields(config_class)}
    dropped = sorted(set(config) - known)
    fields = {k: v for k, v in config.items() if k in known and k not in ("modules_to_save", "inference_mode")}
    try:
        return config_class(**fields, inference_mode=True), dropped
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: peft refuses this adapter_config.json ({' '.join(str(err).split())[:200]})") from err


class PeftEngine:
    """A peft model of one adapter on its base model, built in float32 and then held in float64, asked for each layer's update."""

    def __init__(self, config: dict, base: str, where: str) -> None:
        import peft

        self.config, self.where = config, where
        peft_config, self.dropped = peft_config_object(config, where)
        model = _load_base(config, base, where)  # float32: some types' inits (PSOFT, PiSSA) refuse float64
        self.original = {name: module.weight.detach().double() for name, module in model.named_modules()
                         if getattr(module, "weight", None) is not None and module.weight.ndim == 2}
        with torch.random.fork_rng():  # peft draws initial adapter weights that the loaded ones replace
            torch.manual_seed(0)
            try:
                self.model = peft.get_peft_model(model, peft_config, adapter_name=ADAPTER).to(torch.float64)
            except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as err:
                raise InputError(f"{where}: peft cannot build this adapter on {base} ({' '.join(str(err).split())[:200]}); "
                                 "is it the adapter's base model?") from err
        self.expected = set(peft.get_peft_model_state_dict(self.model, adapter_name=ADAPTER))
        self.layers = tuner_layers(self.model)
        buffers = {name for name, _ in self.model.named_buffers()}
        self.frozen_keys = {key for key in self.expected if any(b.replace(f".{ADAPTER}", "").endswith(key.removeprefix("base_model."))
                                                                for b in buffers)}
        """The adapter's saved tensors that are buffers, not parameters: frozen numbers (random projections), never trained."""

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        """Put one state's adapter tensors (keys as in ``adapter_model.safetensors``) into the model."""
        from peft import set_peft_model_state_dict

        given = set(tensors)
        missing = sorted(self.expected - given)
        if missing:
            raise InputError(f"{self.where}: holds no tensor {missing[0]!r} that its adapter_config.json implies "
                             f"({len(missing)} missing); the weights and the config do not belong together")
        result = set_peft_model_state_dict(self.model, {k: tensors[k] for k in self.expected}, adapter_name=ADAPTER)
        if result.unexpected_keys:
            raise InputError(f"{self.where}: tensor {result.unexpected_keys[0]!r} has no place in the adapter its config describes")

    def deltas(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """ΔW of every layer whose weight the adapter changes: the layer merged alone, minus W0 (float64)."""
        self.load(tensors)
        return {name: self._delta(name, layer) for name, layer in self.layers.items()}

    def _delta(self, name: str, layer) -> Tensor:
        base_layer = layer.get_base_layer()
        saved = {k: p.detach().clone() for k, p in base_layer.named_parameters(recurse=False)}
        try:
            with torch.no_grad():
                layer.merge(adapter_names=[ADAPTER])
            merged = base_layer.weight.detach().clone()
        except (NotImplementedError, ValueError, RuntimeError) as err:
            raise InputError(f"{self.where}: peft cannot merge layer {name!r} ({' '.join(str(err).split())[:160]})") from err
        finally:
            with torch.no_grad():
                for key, value in saved.items():
                    getattr(base_layer, key).copy_(value)
            layer.merged_adapters.clear()
        delta = merged - self.original[name]
        return delta.T.contiguous() if getattr(layer, "fan_in_fan_out", False) else delta


def tuner_layers(model) -> dict[str, object]:
    """peft's tuner layers over a 2-D weight, by the module names adapter files use."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not isinstance(getattr(module, "base_layer", None), BaseTunerLayer):
            weight = getattr(module.get_base_layer(), "weight", None)
            if weight is not None and weight.ndim == 2:
                layers[name.removeprefix(PEFT_PREFIX)] = module
    return layers


def delta_shape(layer) -> tuple[int, int]:
    """(d_out, d_in) of a tuner layer's ΔW (GPT-2's Conv1D stores its weight transposed: ``fan_in_fan_out``)."""
    shape = tuple(layer.get_base_layer().weight.shape)
    return shape[::-1] if getattr(layer, "fan_in_fan_out", False) else shape


def _load_base(config: dict, base: str, where: str):
    """The base model, as the class the adapter was made on (``auto_mapping``, else its task type)."""
    import transformers

    from ..models import _pretrained, quiet_loading

    mapping = config.get("auto_mapping") if isinstance(config.get("auto_mapping"), dict) else {}
    class_name = mapping.get("base_model_class")
    factory = getattr(transformers, class_name, None) if isinstance(class_name, str) and class_name.isidentifier() else None
    if factory is None or not hasattr(factory, "from_pretrained"):
        factory = getattr(transformers, TASK_MODEL_CLASSES.get(str(config.get("task_type")), "AutoModelForSequenceClassification"))
    with quiet_loading():
        return _pretrained(factory, base, use_safetensors=True, dtype=torch.float32).eval()
