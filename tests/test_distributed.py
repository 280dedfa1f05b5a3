"""One run over two processes with torchrun (gloo, CPU): it equals the single-process run and only rank 0 writes."""

import json
import subprocess
import sys

import pytest
import torch

from helpers import ENV, cli
from tlora_analysis.store import load_run


def train_args(model_dir, method):
    return ["train", "--method", method, "--model", model_dir, "--epochs", "2", "--max-train-samples", "28", "--max-eval-samples", "8",
            "--batch-size", "8", "--max-length", "24", "--no-progress"]


def files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_torchrun_ddp_equals_a_single_process_run(tmp_path, tiny_model_without_dropout_dir, method):
    single = cli(*train_args(tiny_model_without_dropout_dir, method), "--out", tmp_path / "single", timeout=180)
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tlora_analysis",
               *map(str, train_args(tiny_model_without_dropout_dir, method)), "--out", str(tmp_path / "ddp")]
    ddp = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b = load_run(tmp_path / "single"), load_run(tmp_path / "ddp")
    assert a.epochs == b.epochs == [0, 1, 2]
    # The last batch of 28 examples holds 4: each process takes 2 and weights its loss by its share.
    for epoch in a.epochs:
        for key, tensor in a.snapshot_tensors(epoch).items():
            torch.testing.assert_close(b.snapshot_tensors(epoch)[key], tensor, rtol=1e-4, atol=1e-5, msg=f"epoch {epoch} {key}")
        assert b.metrics[epoch].get("train_loss", 0) == pytest.approx(a.metrics[epoch].get("train_loss", 0), rel=1e-4)
    meta = json.loads((tmp_path / "ddp" / "run.json").read_text())
    assert meta["world_size"] == 2 and json.loads((tmp_path / "single" / "run.json").read_text())["world_size"] == 1
    # Written once, by rank 0: the same files as the single-process run, no leftovers from a second writer.
    assert files(tmp_path / "ddp") == files(tmp_path / "single")
    assert ddp.stdout.count("wrote ") == 2  # each process reports the one run rank 0 wrote


def test_batch_that_cannot_be_shared_is_refused_before_anything_is_written(tmp_path, tiny_model_without_dropout_dir):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "tlora_analysis",
               *map(str, train_args(tiny_model_without_dropout_dir, "tlora")), "--batch-size", "7", "--out", str(tmp_path / "run")]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=180)
    assert result.returncode != 0 and "must be a multiple of the 2 processes" in result.stderr
    assert not (tmp_path / "run").exists()


TRAINER_SCRIPT = """
import sys, torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from tlora_analysis import inject_adapters
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.recording import DeltaRecorderCallback
model_dir, out = sys.argv[1], sys.argv[2]
tokenizer = load_tokenizer(model_dir)
torch.manual_seed(0)
model = inject_adapters(load_model(model_dir), "tlora", 4, ["query", "value"], modules_to_save=["classifier"])
sentences = [f"the movie is {w}." for w in ["good", "bad", "great", "dull"] * 4]
encoded = tokenizer(sentences)
data = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": i % 2} for i in range(16)]
args = TrainingArguments(output_dir=out + "/hf", num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-2,
                         save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, ddp_backend="gloo")
Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[DeltaRecorderCallback(out + "/run")]).train()
"""


def test_trainer_callback_under_torchrun_writes_once_from_rank_0(tmp_path, tiny_model_without_dropout_dir):
    script = tmp_path / "train.py"
    script.write_text(TRAINER_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
               tiny_model_without_dropout_dir, str(tmp_path)]
    result = subprocess.run(command, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(tmp_path / "run")
    assert run.epochs == [0, 1, 2] and run.meta["world_size"] == 2 and run.meta["status"] == "finished"
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == [f"epoch_00{i}.safetensors" for i in range(3)]
