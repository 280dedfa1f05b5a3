"""Snapshots: written by a plain loop, the Trainer callback and the CLI; reloaded exactly; never lost."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import HANG_GUARD_S
from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.integrations.trainer import DeltaRecorderCallback
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.store import load_run
from tlora_analysis.training import TrainConfig, restore_model, train

SENTENCES = ["the film is not good", "a truly wonderful story", "the plot was hardly dull", "a boring mess"] * 4
LABELS = [0, 1, 1, 0] * 4


def plain_loop(model, tokenizer, recorder, epochs=2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    live = {0: {n: layer.delta().dense().clone() for n, layer in adapter_layers(model).items()}}
    recorder.snapshot(0)
    for epoch in range(1, epochs + 1):
        for _ in range(3):
            loss = model(**batch, labels=torch.tensor(LABELS)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        recorder.snapshot(epoch, {"train_loss": loss.item()})
        live[epoch] = {n: layer.delta().dense().clone() for n, layer in adapter_layers(model).items()}
    return live


@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_plain_loop_snapshots_reload_to_the_live_deltas(tmp_path, tiny_model_dir, method):
    model = inject_adapters(load_model(tiny_model_dir), method, 4, ["query", "value"], modules_to_save=["classifier"], seed=5)
    with DeltaRecorder(model, tmp_path / "run", metadata={"task": "toy"}, record_grad_norms=True) as recorder:
        live = plain_loop(model, load_tokenizer(tiny_model_dir), recorder)
    run = load_run(tmp_path / "run")
    assert run.method == method and run.epochs == [0, 1, 2]
    assert run.meta["task"] == "toy"
    for epoch in run.epochs:
        deltas = run.deltas(epoch)
        assert list(deltas) == list(adapter_layers(model))
        for name, delta in deltas.items():
            torch.testing.assert_close(delta.dense(), live[epoch][name], rtol=1e-6, atol=1e-7)
    assert all(d.frobenius_norm() == 0 for d in run.deltas(0).values())
    assert all(d.frobenius_norm() > 0 for d in run.deltas(2).values())
    assert set(run.record(1)["grad_norm_rms"]) == set(run.layer_names)
    assert all(v > 0 for v in run.record(1)["grad_norm_rms"].values())
    scales = run.scales(2)
    if method == "tlora":
        assert scales == {n: pytest.approx(layer.tlora_alpha.item()) for n, layer in adapter_layers(model).items()}
        assert set(next(iter(run.trainable(2).values()))) == {"B"}
        assert not (tmp_path / "run" / "frozen.safetensors").exists()  # regenerated from seeds
    else:
        assert set(scales.values()) == {1.0}
        assert set(next(iter(run.trainable(2).values()))) == {"A", "B"}
    snapshot = tmp_path / "run" / "snapshots" / "epoch_002.safetensors"
    assert snapshot.stat().st_size < 64 * 1024  # factors and the head, never dense ΔW


def test_frozen_matrices_that_seeds_cannot_rebuild_are_stored(tmp_path, tiny_model_dir):
    model = inject_adapters(load_model(tiny_model_dir), "tlora", 4, ["query"], seed=1)
    layer = next(iter(adapter_layers(model).values()))
    layer.tlora_A.mul_(2.0)  # e.g. a user's custom initialization
    recorder = DeltaRecorder(model, tmp_path / "run")
    with torch.no_grad():
        layer.tlora_B.fill_(0.1)
    recorder.snapshot(1)
    run = load_run(tmp_path / "run")
    assert run.meta["frozen_file"] == "frozen.safetensors"
    torch.testing.assert_close(run.deltas(1)[next(iter(adapter_layers(model)))].dense(), layer.delta().dense())


def test_trainer_callback_writes_the_same_layout(tmp_path, tiny_model_dir):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer = load_tokenizer(tiny_model_dir)
    model = inject_adapters(load_model(tiny_model_dir), "tlora", 4, ["query", "value"], modules_to_save=["classifier"])
    encoded = tokenizer(SENTENCES)
    dataset = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": LABELS[i]} for i in range(len(LABELS))]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-2,
                             eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, logging_steps=1, disable_tqdm=True)
    callback = DeltaRecorderCallback(tmp_path / "run", metadata={"task": "toy"})
    Trainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset,
            data_collator=DataCollatorWithPadding(tokenizer), callbacks=[callback]).train()
    run = load_run(tmp_path / "run")
    assert run.epochs == [0, 1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir()) == [f"epoch_00{i}.safetensors" for i in range(3)]
    assert "eval_loss" in run.metrics[2] and "train_loss" in run.metrics[2]
    assert run.meta["status"] == "finished"
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(run.deltas(2)[name].dense(), layer.delta().dense(), rtol=1e-6, atol=1e-7)


def small_config(**overrides):
    values = dict(method="tlora", epochs=2, max_train_samples=64, max_eval_samples=32, batch_size=16, max_length=24)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "tlora"])
def test_train_on_the_default_model(tmp_path, method):
    """Both methods, 2 epochs, a small slice of the default task, the real pretrained MiniLM."""
    run = train(small_config(method=method), tmp_path / method, progress=False, log=lambda _: None)
    assert run.epochs == [0, 1, 2]
    assert all(d.frobenius_norm() == 0 for d in run.deltas(0).values())
    norms = [{n: d.frobenius_norm() for n, d in run.deltas(e).items()} for e in (1, 2)]
    assert all(v > 0 for v in norms[0].values()) and norms[0] != norms[1]
    assert set(run.metrics[2]) >= {"train_loss", "eval_loss", "accuracy"}
    assert len(run.layer_names) == 12
    # The model rebuilt from the last snapshot is the live model: same deltas, same accuracy.
    model = restore_model(run)
    for name, layer in adapter_layers(model).items():
        torch.testing.assert_close(layer.delta().dense(), run.deltas(2)[name].dense(), rtol=1e-6, atol=1e-7)
    from tlora_analysis.data import load_task
    from tlora_analysis.data.encode import encode
    from tlora_analysis.training import evaluate

    tokenizer = load_tokenizer("default")
    data = load_task("default", max_eval_samples=32)
    features = encode(tokenizer, data.validation, data.spec, 24)
    assert evaluate(model, tokenizer, features, "default", 16, "cpu")["accuracy"] == pytest.approx(run.metrics[2]["accuracy"])


def snapshot_tensors(run_dir, epoch):
    return load_run(run_dir).snapshot_tensors(epoch)


def test_same_seed_gives_identical_snapshots(tmp_path, tiny_model_dir):
    for name in ("a", "b"):
        train(small_config(model=tiny_model_dir), tmp_path / name, progress=False, log=lambda _: None)
    for epoch in (0, 1, 2):
        a, b = snapshot_tensors(tmp_path / "a", epoch), snapshot_tensors(tmp_path / "b", epoch)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_keeps_finished_epochs_and_resumes_exactly(tmp_path, tiny_model_dir):
    args = ["--method", "tlora", "--model", tiny_model_dir, "--epochs", "3", "--max-train-samples", "600",
            "--max-eval-samples", "32", "--batch-size", "8", "--max-length", "24", "--no-progress"]
    run_dir = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tlora_analysis", "train", *args, "--out", str(run_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD_S
    while time.time() < deadline:
        try:
            finished = [r["epoch"] for r in json.loads((run_dir / "run.json").read_text())["epochs"]]
        except (FileNotFoundError, json.JSONDecodeError):
            finished = []
        if 1 in finished:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = load_run(run_dir)
    assert run.epochs[:2] == [0, 1] and max(run.epochs) < 3, "killed after epoch 1, mid-epoch 2"
    for epoch in run.epochs:
        run.deltas(epoch)  # every listed epoch is readable
    assert not list(run_dir.rglob("*.tmp"))

    subprocess.run([sys.executable, "-m", "tlora_analysis", "train", "--resume", str(run_dir), "--no-progress"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "tlora_analysis", "train", *args, "--out", str(tmp_path / "whole")], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    assert load_run(run_dir).epochs == [0, 1, 2, 3]
    resumed, whole = snapshot_tensors(run_dir, 3), snapshot_tensors(tmp_path / "whole", 3)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=1e-5, atol=1e-7, msg=key)


def test_train_refuses_to_overwrite_a_run(tmp_path, tiny_model_dir):
    from tlora_analysis.errors import InputError

    train(small_config(model=tiny_model_dir, epochs=1), tmp_path / "r", progress=False, log=lambda _: None)
    before = (tmp_path / "r" / "run.json").read_bytes()
    with pytest.raises(InputError, match="already holds a run"):
        train(small_config(model=tiny_model_dir, epochs=1), tmp_path / "r", progress=False, log=lambda _: None)
    assert (tmp_path / "r" / "run.json").read_bytes() == before


def test_recorded_gradient_norms_match_the_gradients(tmp_path, tiny_model_dir):
    """grad_norm_rms is √(mean over steps of Σ_params ‖grad‖²) per layer, checked against p.grad."""
    model = inject_adapters(load_model(tiny_model_dir), "lora", 4, ["query", "value"], seed=2)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 0.1)  # so that A gets gradients too
    recorder = DeltaRecorder(model, tmp_path / "run", record_grad_norms=True)
    batch = load_tokenizer(tiny_model_dir)(SENTENCES, padding=True, return_tensors="pt")
    expected = {name: 0.0 for name in adapter_layers(model)}
    for step in range(3):
        loss = model(**batch, labels=torch.tensor(LABELS)).loss * (step + 1)
        loss.backward()
        for name, layer in adapter_layers(model).items():
            expected[name] += float(layer.lora_A.grad.norm() ** 2 + layer.lora_B.grad.norm() ** 2)
        model.zero_grad(set_to_none=True)
    recorder.snapshot(1)
    recorded = load_run(tmp_path / "run").record(1)["grad_norm_rms"]
    for name, total in expected.items():
        assert recorded[name] == pytest.approx((total / 3) ** 0.5, rel=1e-5)


def test_cli_resume_extends_a_finished_run(tmp_path, tiny_model_dir):
    from tlora_analysis.cli import main

    args = ["--model", tiny_model_dir, "--max-train-samples", "32", "--max-eval-samples", "16", "--batch-size", "16",
            "--max-length", "24", "--no-progress"]
    assert main(["train", "--method", "lora", "--epochs", "1", "--out", str(tmp_path / "r"), *args]) == 0
    assert load_run(tmp_path / "r").epochs == [0, 1]
    assert main(["train", "--resume", str(tmp_path / "r"), "--epochs", "2", "--no-progress"]) == 0
    assert load_run(tmp_path / "r").epochs == [0, 1, 2]
    assert load_run(tmp_path / "r").meta["config"]["epochs"] == 2


def test_bf16_training_records_float32_factors(tmp_path, tiny_model_dir):
    config = TrainConfig(method="tlora", model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=8, batch_size=8,
                         precision="bf16")
    run = train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert run.meta["precision"] == "bf16" and run.meta["recorded_dtype"] == "float32"
    tensors = run.snapshot_tensors(1)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    assert any(float(t.abs().sum()) > 0 for k, t in tensors.items() if k.endswith("tlora_B"))
    assert math.isfinite(run.metrics[1]["train_loss"])


@pytest.mark.parametrize("scheduler, reference", [("linear", "get_linear_schedule_with_warmup"),
                                                  ("constant", "get_constant_schedule_with_warmup"),
                                                  ("cosine", "get_cosine_schedule_with_warmup")])
def test_schedules_match_transformers_after_the_warm_up(scheduler, reference):
    """After the warm-up each schedule is transformers' own (the warm-up itself starts one step later
    here, so that the first step never has a rate of zero)."""
    import transformers

    from tlora_analysis.training.batches import lr_at

    config, total = TrainConfig(method="lora", lr=2e-3, scheduler=scheduler, warmup_ratio=0.1), 97
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    kwargs = {} if scheduler == "constant" else {"num_training_steps": total}
    schedule = getattr(transformers, reference)(optimizer, num_warmup_steps=int(0.1 * total), **kwargs)
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    ours = [lr_at(step, total, config) for step in range(total)]
    warmup = int(0.1 * total)
    assert ours[warmup:] == pytest.approx(expected[warmup:], rel=1e-12, abs=1e-15)
    assert ours[:warmup] == pytest.approx([config.lr * (s + 1) / warmup for s in range(warmup)])


def test_unknown_scheduler_is_one_line():
    from tlora_analysis.errors import InputError

    with pytest.raises(InputError, match="--scheduler must be one of linear, constant, cosine"):
        TrainConfig(method="lora", scheduler="step")


def test_head_only_is_a_linear_probe_whose_record_is_the_whole_model(tmp_path, tiny_model_dir):
    """The probe trains the head on cached encoder outputs; the run it records, rebuilt as a whole
    model and evaluated through the encoder, gives the metrics the probe recorded, and the head
    changed from its initialisation."""
    from tlora_analysis.data import load_task
    from tlora_analysis.data.encode import encode
    from tlora_analysis.training import evaluate

    lines = []
    config = small_config(method="head", model=str(tiny_model_dir), epochs=2, lr=0.05)
    run = train(config, tmp_path / "head", progress=False, log=lines.append)
    assert any("linear probe" in line for line in lines)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    data = load_task("default", max_eval_samples=32)
    features = encode(tokenizer, data.validation, data.spec, 24)
    for epoch in run.epochs:
        measured = evaluate(restore_model(run, epoch), tokenizer, features, "default", 16, "cpu")
        assert measured["eval_loss"] == pytest.approx(run.metrics[epoch]["eval_loss"], rel=1e-5)
        assert measured["accuracy"] == pytest.approx(run.metrics[epoch]["accuracy"])
    first, last = (run.snapshot_tensors(e)["trainable.classifier.weight"] for e in (0, 2))
    assert not torch.equal(first, last)


def test_probe_loss_is_the_models_loss_in_eval_mode(tiny_model_dir):
    from tlora_analysis.data import load_task
    from tlora_analysis.data.encode import encode
    from tlora_analysis.training.batches import make_batch
    from tlora_analysis.training.probe import LinearProbe

    model, tokenizer = load_model(str(tiny_model_dir), 2), load_tokenizer(str(tiny_model_dir))
    data = load_task("default", max_train_samples=40, max_eval_samples=8)
    train_features, eval_features = (encode(tokenizer, split, data.spec, 24) for split in (data.train, data.validation))
    probe = LinearProbe.build(model, tokenizer, "default", train_features, eval_features, 16, "cpu")
    indices = [3, 17, 29, 5]
    batch, labels = make_batch(tokenizer, [train_features[i] for i in indices], "cpu")
    with torch.no_grad():
        expected = model.eval()(**batch, labels=labels).loss
    torch.testing.assert_close(probe.loss(indices), expected, rtol=1e-5, atol=1e-6)
