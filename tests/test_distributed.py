"""One run over two processes with torchrun (gloo, CPU), DDP and FSDP: it equals the single-process run and only rank 0 writes.

``train`` runs on the default model (pretrained all-MiniLM-L6-v2), the Trainer-callback runs on a 2-layer
BERT; both with dropout off, because dropout masks differ between layouts."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from helpers import ENV, HANG_GUARD_S, cli, read_events
from tlora_analysis.store import load_run


def train_args(model_dir, method):
    return ["train", "--method", method, "--model", model_dir, "--epochs", "2", "--max-train-samples", "28", "--max-eval-samples", "8",
            "--batch-size", "8", "--max-length", "24", "--no-progress"]


def files(run_dir):
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def torchrun(*args, timeout=HANG_GUARD_S):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *map(str, args)]
    return subprocess.run(command, env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def single_runs(tmp_path_factory, default_model_without_dropout_dir):
    """The single-process reference run of each method (made once, read-only)."""
    root, made = tmp_path_factory.mktemp("single"), {}

    def run(method):
        if method not in made:
            result = cli(*train_args(default_model_without_dropout_dir, method), "--out", root / method, timeout=HANG_GUARD_S)
            assert result.returncode == 0, result.stderr[-2000:]
            made[method] = root / method
        return made[method]

    return run


def assert_same_run(a, b):
    """Same epochs, snapshots, training loss and gradient norms, up to float rounding.

    Each entry may differ by 1% of the learning rate: Adam divides by the gradient's running
    RMS, so an entry whose gradient is near zero moves by up to lr per step whatever its size,
    and a rounding difference in such a gradient (the processes sum in another order) shows
    at that scale. Losses and gradient norms agree to 1e-4 relative.
    """
    a, b = load_run(a), load_run(b)
    assert a.epochs == b.epochs == [0, 1, 2]
    tolerance = 1e-2 * (a.meta["config"]["lr"] if "config" in a.meta else 1e-2)  # the callback runs here use lr 1e-2
    for epoch in a.epochs:
        for key, tensor in a.snapshot_tensors(epoch).items():
            torch.testing.assert_close(b.snapshot_tensors(epoch)[key], tensor, rtol=1e-4, atol=tolerance)
        assert b.metrics[epoch].get("train_loss", 0) == pytest.approx(a.metrics[epoch].get("train_loss", 0), rel=1e-4)
        if epoch:
            assert b.record(epoch)["grad_norm_rms"] == pytest.approx(a.record(epoch)["grad_norm_rms"], rel=1e-4)


def check_torchrun_run(result, run_dir, single, sharding):
    """The run equals the single-process one and rank 0 alone wrote it. The last batch of 28 examples
    holds 4: each process takes 2 and weights its loss by its share. The gradient norms are those of
    the reduced gradient (FSDP: summed over the shards), as in one process."""
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(single, run_dir)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["world_size"] == 2 and meta["config"]["sharding"] == sharding
    assert json.loads((single / "run.json").read_text())["world_size"] == 1
    # Written once, by rank 0: the same files as the single-process run, no leftovers from a second writer.
    assert [f for f in files(run_dir) if not f.startswith("tensorboard/")] == files(single)
    assert result.stdout.count("wrote ") == 1


@pytest.mark.parametrize(("method", "sharding"), [("tlora", "ddp"), ("lora", "fsdp")])  # TLoRA under FSDP: below
def test_torchrun_equals_a_single_process_run(tmp_path, default_model_without_dropout_dir, single_runs, method, sharding):
    result = torchrun("-m", "tlora_analysis", *train_args(default_model_without_dropout_dir, method), "--sharding", sharding,
                      "--out", tmp_path / "run")
    check_torchrun_run(result, tmp_path / "run", single_runs(method), sharding)


def test_fsdp_run_equals_a_single_process_run_and_resumes_from_its_gathered_state(tmp_path, default_model_without_dropout_dir, single_runs):
    """TLoRA under FSDP: as above; the geometry logged between snapshots is read from the whole
    parameters; the resume state is saved whole (gathered from the shards) and sharded again on resuming."""
    run_dir = tmp_path / "run"
    args = train_args(default_model_without_dropout_dir, "tlora")
    result = torchrun("-m", "tlora_analysis", *args, "--sharding", "fsdp", "--report-to", "tensorboard", "--log-every-steps", "2",
                      "--out", run_dir)
    check_torchrun_run(result, run_dir, single_runs("tlora"), "fsdp")
    scalars, _ = read_events(run_dir / "tensorboard")
    name = load_run(run_dir).layer_names[0]
    assert sorted(scalars[f"geometry/frobenius/{name}"]) == [0, 2, 4, 6, 8]  # 4 steps an epoch: snapshots at 0, 4, 8
    assert scalars[f"geometry/frobenius/{name}"][4] == pytest.approx(load_run(run_dir).deltas(1)[name].frobenius_norm(), rel=1e-5)
    with safe_open(str(run_dir / "resume" / "epoch_001.safetensors"), "pt") as handle:  # whole tensors, not one process's shard
        b = next(k for k in handle.keys() if k.startswith("param.") and k.endswith("tlora_B"))
        assert tuple(handle.get_tensor(b).shape) == (8, 8) and tuple(handle.get_tensor(f"optim.{b[6:]}.exp_avg").shape) == (8, 8)
    # Cut the run back to epoch 1, as a kill during epoch 2 would leave it.
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**meta, "epochs": meta["epochs"][:2], "status": "running"}))
    (run_dir / "snapshots" / "epoch_002.safetensors").unlink()
    (run_dir / "resume" / "epoch_002.safetensors").unlink()
    result = torchrun("-m", "tlora_analysis", "train", "--resume", run_dir, "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(single_runs("tlora"), run_dir)


@pytest.mark.parametrize(("model", "method", "sharding"), [("llama", "tlora", "fsdp"), ("gpt2", "lora", "ddp")])
def test_torchrun_causal_lm_weights_each_share_by_its_predicted_tokens(tmp_path, request, model, method, sharding):
    """Token-level loss: each process's slice of a batch holds a different number of predicted tokens,
    so its share is its tokens' fraction, and the run equals one process's (GPT-2: Conv1D, tied embeddings)."""
    lines = [" ".join(["the film was", *["truly"] * (i % 7), "good"][: 2 + i % 9]) for i in range(40)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
    args = ["train", "--method", method, "--task", "lm", "--data-file", tmp_path / "data.jsonl", "--targets", "all-linear",
            "--model", request.getfixturevalue(f"tiny_{model}_dir"), "--epochs", "2", "--max-train-samples", "24",
            "--max-eval-samples", "8", "--batch-size", "8", "--max-length", "24", "--no-progress"]
    assert cli(*args, "--out", tmp_path / "single", timeout=HANG_GUARD_S).returncode == 0
    result = torchrun("-m", "tlora_analysis", *args, "--sharding", sharding, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_run(tmp_path / "single", tmp_path / "run")


def test_batch_that_cannot_be_shared_is_refused_before_anything_is_written(tmp_path, default_model_without_dropout_dir):
    result = torchrun("-m", "tlora_analysis", *train_args(default_model_without_dropout_dir, "tlora"), "--batch-size", "7", "--out", tmp_path / "run")
    assert result.returncode != 0 and "must be a multiple of the 2 processes" in result.stderr
    assert result.stderr.count("error:") == 1  # rank 0 speaks for both; torchrun adds its own table after it
    assert not (tmp_path / "run").exists()


def test_nproc_per_node_launches_torchrun_and_equals_a_single_process_run(tmp_path, default_model_without_dropout_dir, single_runs):
    result = cli(*train_args(default_model_without_dropout_dir, "tlora"), "--nproc-per-node", "2", "--out", tmp_path / "run",
                 timeout=HANG_GUARD_S)
    check_torchrun_run(result, tmp_path / "run", single_runs("tlora"), "ddp")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("mistake", [["--device", "cuda"], ["--batch-size", "7"]])
def test_nproc_per_node_failures_are_one_line_and_write_nothing(tmp_path, default_model_without_dropout_dir, mistake):
    """--device is checked before any process starts, the batch inside them: either way one line, no traceback."""
    result = cli(*train_args(default_model_without_dropout_dir, "tlora"), "--nproc-per-node", "2", *mistake, "--out", tmp_path / "run",
                 timeout=HANG_GUARD_S)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "error:" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


TRAINER_SCRIPT = """
import sys, torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments
from tlora_analysis import inject_adapters
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.integrations.trainer import DeltaRecorderCallback
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
        callbacks=[DeltaRecorderCallback(out + "/run", record_grad_norms=True)]).train()
torch.distributed.destroy_process_group()  # as torch asks: left to exit, gloo's threads once aborted a rank (load 8)
"""


def test_trainer_callback_under_torchrun_writes_once_from_rank_0(tmp_path, tiny_model_without_dropout_dir):
    script = tmp_path / "train.py"
    script.write_text(TRAINER_SCRIPT)
    result = torchrun(script, tiny_model_without_dropout_dir, tmp_path, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-3000:]
    run = load_run(tmp_path / "run")
    assert run.epochs == [0, 1, 2] and run.meta["world_size"] == 2 and run.meta["status"] == "finished"
    assert files(tmp_path / "run") == ["run.json"] + [f"snapshots/epoch_00{i}.safetensors" for i in range(3)]
    assert set(run.record(1)["grad_norm_rms"]) == set(run.layer_names)


# accelerate turns FSDP on for GPU process groups only, so on CPU the callback meets FSDP2's shards
# through the Trainer's events sent by hand: the same calls, in the same order, as Trainer makes them.
CALLBACK_LOOP = """
import sys, types, torch
from transformers import TrainerControl, TrainerState
from tlora_analysis import inject_adapters
from tlora_analysis.distributed import Processes
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.integrations.trainer import DeltaRecorderCallback
model_dir, out, sharding = sys.argv[1], sys.argv[2], sys.argv[3]
torch.distributed.init_process_group("gloo")
rank = torch.distributed.get_rank()
tokenizer = load_tokenizer(model_dir)
torch.manual_seed(0)
model = inject_adapters(load_model(model_dir), "tlora", 4, ["query", "value"], modules_to_save=["classifier"])
trained = Processes(rank, 2, False, sharding).wrap(model)
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
batch = tokenizer([f"the movie is {w}." for w in ["good", "bad", "great", "dull"]], padding=True, return_tensors="pt")
labels = torch.tensor([0, 1, 0, 1])
args, control = types.SimpleNamespace(world_size=2, seed=0), TrainerControl()
state = TrainerState(is_world_process_zero=rank == 0, epoch=0.0, global_step=0)
callback = DeltaRecorderCallback(out + "/run", record_grad_norms=True)
callback.on_train_begin(args, state, control, model=model)
for epoch in (1, 2):
    for step in range(2):
        mine = slice(2 * rank, 2 * rank + 2)
        trained(**{k: v[mine] for k, v in batch.items()}, labels=labels[mine]).loss.backward()
        callback.on_pre_optimizer_step(args, state, control, model=model)
        optimizer.step()
        optimizer.zero_grad()
        state.global_step += 1
        state.epoch = epoch - 1 + (step + 1) / 2
        callback.on_step_end(args, state, control, model=model)
    callback.on_epoch_end(args, state, control, model=model)
callback.on_train_end(args, state, control, model=model)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def test_trainer_callback_gathers_fsdp_shards_for_its_snapshots(tmp_path, tiny_model_without_dropout_dir):
    """Under FSDP2 the callback's snapshots and gradient norms (gathered from the shards) equal DDP's."""
    script = tmp_path / "loop.py"
    script.write_text(CALLBACK_LOOP)
    for sharding in ("ddp", "fsdp"):
        result = torchrun(script, tiny_model_without_dropout_dir, tmp_path / sharding, sharding)
        assert result.returncode == 0, result.stderr[-6000:]
        assert files(tmp_path / sharding / "run") == ["run.json"] + [f"snapshots/epoch_00{i}.safetensors" for i in range(3)]
    assert_same_run(tmp_path / "ddp" / "run", tmp_path / "fsdp" / "run")
