"""Shared fixtures: a tiny BERT built locally (fast) and the real offline MiniLM (slow, few tests)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Commands read studies and draw figures in this process: pytest-xdist already fills the cores, and worker start-ups
# would cost every small study seconds. Tests of --jobs ask for workers themselves.
os.environ.setdefault("TLORA_ANALYSIS_JOBS", "1")

import pytest
import torch


def _tiny_bert(path, **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    from tlora_analysis.models import load_tokenizer

    tokenizer = load_tokenizer("default")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, **overrides)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 32-wide BERT with random weights and the MiniLM tokenizer, saved like a Hub model."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_model_without_dropout_dir(tmp_path_factory):
    """The same tiny BERT with dropout off, so that runs over several processes can equal a single-process run."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert-nodrop"), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="session")
def default_model_without_dropout_dir(tmp_path_factory):
    """The embedded default model (all-MiniLM-L6-v2, pretrained) with dropout off in its config, so that
    runs over several processes can equal a single-process run."""
    import json
    import shutil

    from tlora_analysis.models import default_model_path

    path = tmp_path_factory.mktemp("minilm-nodrop")
    for file in default_model_path().iterdir():
        if file.is_file():
            shutil.copyfile(file, path / file.name)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    return str(path)


@pytest.fixture(scope="session")
def toy_runs(tmp_path_factory):
    """A LoRA and a TLoRA run of random factors on a toy model (``helpers.make_run``): read-only, copy to tamper."""
    from helpers import make_run

    root = tmp_path_factory.mktemp("toy")
    make_run(root / "lora", "lora")
    make_run(root / "tlora", "tlora")
    return root


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from tlora_analysis.models import load_model

    return load_model(tiny_model_dir, num_labels=2).eval()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A 2-layer Llama with random weights and the MiniLM tokenizer, saved like a Hub model (safetensors)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tlora_analysis.models import load_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = load_tokenizer("default")
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory):
    """A 2-layer GPT-2 (Conv1D layers, tied embeddings) with random weights, dropout off and the MiniLM tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlora_analysis.models import load_tokenizer

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = load_tokenizer("default")
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
