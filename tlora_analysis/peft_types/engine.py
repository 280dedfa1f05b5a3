"""peft as the engine: an adapter loaded on its base model, and each layer's update asked of peft itself.

For every peft type whose update is not read from its factors (IA³, OFT, BOFT, HRA, FourierFT, ...),
ΔW is whatever peft merges into W0: the engine merges one layer at a time, takes the merged weight
minus the original W0 (captured before peft touched the model, since some types rewrite W0 when they
are built), and puts the layer back as it was. That is ``merge_and_unload()`` minus W0, layer by layer,
exact by construction; it is computed in float64 so that subtracting W0 loses nothing.

The engine is built once per adapter and reused for every state (a trajectory's epochs): only the
adapter's tensors change between states. A type that can be built without W0 (``streams`` in the registry:
IA³, BOFT, HRA, FourierFT, ...) is never loaded on the whole base: peft is built on a skeleton of the model
on the meta device (no memory), and each layer's W0 is read from the base's safetensors while that layer is
merged, then dropped, so a 7B base is read in the memory of one layer and a Hub base gives only the shards
of the adapted layers. Types that build parts of themselves from W0 when they are created (OFT, OSF, FRoD,
PSOFT, ...) load the base whole, up to :data:`WHOLE_BASE_BYTES` (in float32), and say so beyond it.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..errors import InputError
from ..methods.peft_format import PEFT_PREFIX, resolve_module_patterns
from .spec import PEFT_TYPES

__all__ = ["PeftEngine", "peft_config_object", "TASK_MODEL_CLASSES", "tuner_layers", "delta_shape"]

ADAPTER = "default"
WHOLE_BASE_BYTES = 2 << 30
"""Largest base (its weights in float32) loaded whole; a larger one is streamed one layer at a time."""
TASK_MODEL_CLASSES = {
    "SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM", "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering", "FEATURE_EXTRACTION": "AutoModel",
}
"""The transformers class peft's ``task_type`` wraps; module names depend on it (``bert.encoder`` vs ``encoder``)."""


def peft_config_object(config: dict, where: str, training: bool = False):
    """A peft config object from an adapter_config.json mapping. For reading (the default) it leaves out
    ``modules_to_save`` (a trained copy of a module is no update of W0) and is inference-only; for ``training``
    it is kept as given. Fields this peft does not know are dropped, as peft's own loader drops them; they are
    returned so that the caller can name them."""
    import dataclasses

    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(config.get("peft_type", "LORA")).upper())
    if config_class is None:
        raise InputError(f"{where}: the installed peft does not know peft_type {config.get('peft_type')!r:.40}")
    known = {f.name for f in dataclasses.fields(config_class)}
    dropped = sorted(set(config) - known)
    left_out = ("inference_mode",) if training else ("modules_to_save", "inference_mode")
    fields = {k: v for k, v in config.items() if k in known and k not in left_out}
    try:
        return config_class(**fields, inference_mode=not training), dropped
    except (TypeError, ValueError) as err:
        raise InputError(f"{where}: peft refuses this adapter_config.json ({' '.join(str(err).split())[:200]})") from err


class PeftEngine:
    """A peft model of one adapter on its base, built in float32 and then held in float64, asked for each layer's update.

    ``stream`` reads W0 one layer at a time from the base's safetensors instead of loading the model
    (default: where the base is larger than :data:`WHOLE_BASE_BYTES`).
    """

    def __init__(self, config: dict, base: str, where: str, stream: bool | None = None, tensors: Mapping[str, Tensor] | None = None) -> None:
        import peft

        from ..models import resolve_model

        skeleton = _skeleton(config, base, where)
        config = resolve_module_patterns(config, [name for name, _ in skeleton.named_modules() if name], where)
        self.config, self.where = config, where
        peft_config, self.dropped = peft_config_object(config, where)
        if tensors is not None:  # before anything is allocated: a config may imply far more than its file holds
            _check_planned_shapes(_planned_shapes(config, base, where, peft_config), tensors, where)
        size = 4 * sum(p.numel() for p in skeleton.parameters())
        spec = PEFT_TYPES.get(str(config.get("peft_type")).upper())
        self.stream = (bool(spec and spec.streams) or size > WHOLE_BASE_BYTES) if stream is None else stream
        if self.stream and not (spec and spec.streams):
            raise InputError(f"{where}: a {spec.label if spec else config.get('peft_type')} adapter derives parts of itself from W0 when peft "
                             f"builds it, so it is read on the base loaded whole; {base} holds {size / 2**30:.1f} GiB of float32 "
                             f"weights, more than the {WHOLE_BASE_BYTES >> 30} GiB loaded whole")
        model = skeleton if self.stream else _load_base(config, base, where)  # float32: PSOFT, PiSSA need it
        self.original = {} if self.stream else {name: module.weight.detach().double() for name, module in model.named_modules()
                                                if getattr(module, "weight", None) is not None and module.weight.ndim == 2}
        with torch.random.fork_rng():  # peft draws initial adapter weights that the loaded ones replace
            torch.manual_seed(0)
            try:
                self.model = peft.get_peft_model(model, peft_config, adapter_name=ADAPTER, low_cpu_mem_usage=self.stream)
            except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError) as err:
                reason = ("; it cannot be built on a skeleton of the base, so read it on a base loaded whole (at most "
                          f"{WHOLE_BASE_BYTES >> 30} GiB of safetensors)") if self.stream else "; is it the adapter's base model?"
                raise InputError(f"{where}: peft cannot build this adapter on {base} ({' '.join(str(err).split())[:200]}){reason}") from err
        self.layers = tuner_layers(self.model)
        self.unloaded = _adapter_storage(self.layers) if self.stream else set()
        """Adapter tensors a skeleton left without values: each must come from the file, or the type needs W0 to be built."""
        self.model.to(torch.float64)
        self.expected = set(peft.get_peft_model_state_dict(self.model, adapter_name=ADAPTER))
        buffers = {name for name, _ in self.model.named_buffers()}
        self.frozen_keys = {key for key in self.expected if any(b.replace(f".{ADAPTER}", "").endswith(key.removeprefix("base_model."))
                                                                for b in buffers)}
        """The adapter's saved tensors that are buffers, not parameters: frozen numbers (random projections), never trained."""
        if self.stream:
            from ..base_weights import SafetensorsWeights

            self.weights = SafetensorsWeights(resolve_model(base, list(self.layers)), list(self.layers),
                                              {n: delta_shape(m) for n, m in self.layers.items()})

    def load(self, tensors: Mapping[str, Tensor]) -> None:
        """Put one state's adapter tensors (keys as in ``adapter_model.safetensors``) into the model."""
        from peft import set_peft_model_state_dict

        missing = sorted(self.expected - set(tensors))
        if missing:
            raise InputError(f"{self.where}: holds no tensor {missing[0]!r} that its adapter_config.json implies "
                             f"({len(missing)} missing); the weights and the config do not belong together")
        state = {k: tensors[k].to(torch.float64) if tensors[k].is_floating_point() else tensors[k] for k in self.expected}
        result = set_peft_model_state_dict(self.model, state, adapter_name=ADAPTER)
        if result.unexpected_keys:
            raise InputError(f"{self.where}: tensor {result.unexpected_keys[0]!r} has no place in the adapter its config describes")
        left = sorted(self.unloaded & {k.removeprefix(PEFT_PREFIX) for k in result.missing_keys})
        if left:
            raise InputError(f"{self.where}: this adapter type builds {left[0]} from the base weights or at random when it is "
                             "created, so it cannot be read one layer at a time; read it on a base loaded whole "
                             f"(at most {WHOLE_BASE_BYTES >> 30} GiB of safetensors)")

    def deltas(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """ΔW of every layer whose weight the adapter changes: the layer merged alone, minus W0 (float64)."""
        self.load(tensors)
        return {name: self._delta(name, layer) for name, layer in self.layers.items()}

    def _delta(self, name: str, layer) -> Tensor:
        base_layer = layer.get_base_layer()
        original = self._materialize(name, layer) if self.stream else self.original[name]
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
            if self.stream:  # back to the skeleton: one layer's W0 is alive at a time
                for key, param in base_layer.named_parameters(recurse=False):
                    setattr(base_layer, key, torch.nn.Parameter(torch.empty_like(param, device="meta"), requires_grad=False))
        delta = merged - original
        return delta.T.contiguous() if getattr(layer, "fan_in_fan_out", False) else delta

    def _materialize(self, name: str, layer) -> Tensor:
        """Put W0 (from the safetensors, float64) and a zero bias into a skeleton layer; return W0 as stored there."""
        base_layer = layer.get_base_layer()
        weight = self.weights[name].double()
        weight = weight.T.contiguous() if getattr(layer, "fan_in_fan_out", False) else weight  # Conv1D stores Wᵀ
        base_layer.weight = torch.nn.Parameter(weight.clone(), requires_grad=False)
        if getattr(base_layer, "bias", None) is not None:
            base_layer.bias = torch.nn.Parameter(torch.zeros(base_layer.bias.shape, dtype=torch.float64), requires_grad=False)
        return weight


def _planned_shapes(config: dict, base: str, where: str, peft_config) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor the adapter's file must hold, from peft built on a skeleton of the base: with every
    tensor on the meta device (nothing allocated), or, for types that compute while they are built (BOFT's
    permutations), with only the adapter's parameters there. None for a type that cannot be built on a skeleton."""
    import contextlib
    import copy

    import peft

    for device in (torch.device("meta"), contextlib.nullcontext()):
        try:
            with device, torch.random.fork_rng():
                model = peft.get_peft_model(_skeleton(config, base, where), copy.deepcopy(peft_config), adapter_name=ADAPTER,
                                            low_cpu_mem_usage=True)
                return {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(model, adapter_name=ADAPTER).items()}
        except (ValueError, TypeError, KeyError, RuntimeError, NotImplementedError):
            continue
    return None


def _check_planned_shapes(planned: dict[str, tuple[int, ...]] | None, tensors: Mapping[str, Tensor], where: str) -> None:
    for key, shape in (planned or {}).items():
        if key in tensors and tuple(tensors[key].shape) != shape:
            raise InputError(f"{where}: tensor {key!r} has shape {list(tensors[key].shape)}, but its adapter_config.json implies "
                             f"{list(shape)[:4]}; the weights and the config do not belong together")


def _adapter_storage(layers: dict) -> set[str]:
    """Give every adapter tensor that a skeleton built on the meta device real (zero) storage; return their names.
    The base layers stay on the meta device until each is merged."""
    names = set()
    for layer_name, layer in layers.items():
        for child_name, child in layer.named_children():
            if child_name != "base_layer" and any(t.is_meta for t in (*child.parameters(), *child.buffers())):
                names |= {f"{layer_name}.{child_name}.{k}" for k, t in (*child.named_parameters(), *child.named_buffers()) if t.is_meta}
                child.to_empty(device="cpu")
                for tensor in (*child.parameters(), *child.buffers()):
                    tensor.data.zero_()
    return names


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


def _model_class(config: dict, where: str):
    """The transformers class the adapter was made on: its ``auto_mapping``, else its task type's Auto class (also for a
    class transformers does not have: peft records custom classes there, whose weights the task's class reads the same).
    A name transformers has that is no model class (a tokenizer, a config, a function) is refused in one line."""
    import transformers
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    mapping = config.get("auto_mapping") if isinstance(config.get("auto_mapping"), dict) else {}
    class_name = mapping.get("base_model_class")
    factory = getattr(transformers, class_name, None) if isinstance(class_name, str) and class_name.isidentifier() else None
    if factory is None:
        return getattr(transformers, TASK_MODEL_CLASSES.get(str(config.get("task_type")), "AutoModelForSequenceClassification"))
    if not (isinstance(factory, type) and issubclass(factory, (transformers.PreTrainedModel, _BaseAutoModelClass))):
        raise InputError(f"{where}: auto_mapping.base_model_class {str(class_name)[:60]!r} is not a model class of transformers "
                         f"{transformers.__version__} (expected e.g. BertModel or T5ForConditionalGeneration)")
    return factory


def _load_base(config: dict, base: str, where: str):
    """The base model, loaded whole, as the class the adapter was made on."""
    from ..models import _pretrained, quiet_loading

    with quiet_loading():
        return _pretrained(_model_class(config, where), base, use_safetensors=True, dtype=torch.float32).eval()


def _skeleton(config: dict, base: str, where: str):
    """The base model's modules on the meta device: its architecture from config.json, no weights."""
    from transformers import AutoConfig

    from ..models import _pretrained, quiet_loading, resolve_model

    model_config = _pretrained(AutoConfig, resolve_model(base, []))  # a Hub base: its config, no shard yet
    factory = _model_class(config, where)
    with quiet_loading(), torch.device("meta"):
        make = factory.from_config if hasattr(factory, "from_config") else factory._from_config
        return make(model_config).eval()
