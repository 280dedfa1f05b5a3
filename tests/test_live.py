"""Live update geometry in TensorBoard (read back with tensorboard's own event reader), one
meaning of train_loss, and labels that say what was computed."""

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import HANG_GUARD_S, make_run, read_events
from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.analysis import compare_runs, intruder_counts, paper_claims
from tlora_analysis.config import TrainConfig
from tlora_analysis.integrations.trainer import DeltaRecorderCallback, _mean_logged_loss
from tlora_analysis.live import update_geometry
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.store import load_run
from tlora_analysis.training import train

pytest.importorskip("tensorboard")


def test_update_geometry_matches_dense_numbers(tmp_path):
    make_run(tmp_path / "run", "tlora", epochs=2)
    run = load_run(tmp_path / "run")
    metrics = update_geometry(run.deltas(2), run.scales(2), run.deltas(1))
    for name, delta in run.deltas(2).items():
        dense, before = delta.dense(torch.float64).numpy(), run.deltas(1)[name].dense(torch.float64).numpy()
        s = np.linalg.svd(dense, compute_uv=False)
        assert metrics[f"geometry/frobenius/{name}"] == pytest.approx(np.linalg.norm(dense), rel=1e-9)
        assert metrics[f"geometry/sigma1/{name}"] == pytest.approx(s[0], rel=1e-9)
        assert metrics[f"geometry/stable_rank/{name}"] == pytest.approx((s**2).sum() / s[0] ** 2, rel=1e-9)
        cosine = (dense * before).sum() / np.linalg.norm(dense) / np.linalg.norm(before)
        assert metrics[f"geometry/cosine_to_previous/{name}"] == pytest.approx(cosine, rel=1e-9)
        assert metrics[f"geometry/scale/{name}"] == run.scales(2)[name]
    zero = update_geometry(run.deltas(0), None, None)
    assert not any(key.startswith(("geometry/stable_rank", "geometry/cosine")) for key in zero)  # undefined: left out


def test_cli_train_reports_geometry_to_tensorboard(tmp_path, tiny_model_dir):
    config = TrainConfig(method="tlora", model=tiny_model_dir, epochs=2, max_train_samples=32, max_eval_samples=8, batch_size=8,
                         max_length=16, report_to=["tensorboard"], log_every_steps=2)
    run = train(config, tmp_path / "run", progress=False, log=lambda _: None)
    scalars, histograms = read_events(tmp_path / "run" / "tensorboard")
    name = run.layer_names[0]
    frobenius = scalars[f"geometry/frobenius/{name}"]
    assert sorted(frobenius) == [0, 2, 4, 6, 8]  # every 2 steps, and at the snapshots (steps 0, 4, 8)
    for epoch, step in ((1, 4), (2, 8)):
        assert frobenius[step] == pytest.approx(run.deltas(epoch)[name].frobenius_norm(), rel=1e-5)
        assert scalars[f"geometry/scale/{name}"][step] == pytest.approx(run.scales(epoch)[name], rel=1e-6)
    assert 8 in scalars[f"geometry/cosine_to_previous/{name}"]
    assert sorted(histograms[f"core/tlora_B/{name}"]) == [0, 4, 8]
    assert run.meta["config"]["report_to"] == ["tensorboard"]


def test_cli_train_loss_is_the_mean_of_the_step_losses(tmp_path, tiny_model_dir, monkeypatch):
    import tlora_analysis.training as training

    seen = []
    original = torch.Tensor.backward

    def spy(self, *args, **kwargs):
        seen.append(float(self.detach()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    config = TrainConfig(method="lora", model=tiny_model_dir, epochs=1, max_train_samples=20, max_eval_samples=8, batch_size=8,
                         max_length=16)
    run = training.train(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert len(seen) == 3  # 8 + 8 + 4 examples: the short last batch counts as one step, like any other
    assert run.metrics[1]["train_loss"] == pytest.approx(sum(seen) / 3, rel=1e-6)


def test_trainer_callback_sends_geometry_to_report_to_integrations_quietly(tmp_path, tiny_model_dir, capfd):
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer = load_tokenizer(tiny_model_dir)
    model = inject_adapters(load_model(tiny_model_dir), "tlora", 4, ["query", "value"], modules_to_save=["classifier"])
    sentences, labels = ["a fine film", "a dull film", "not bad at all", "truly awful"] * 4, [1, 0, 1, 0] * 4
    encoded = tokenizer(sentences)
    dataset = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": labels[i]}
               for i in range(len(labels))]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2, per_device_train_batch_size=4, learning_rate=1e-2,
                             save_strategy="no", report_to=["tensorboard"], use_cpu=True, logging_steps=2, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.add_callback(DeltaRecorderCallback(tmp_path / "run", trainer=trainer, log_every_steps=2))
    trainer.train()
    run = load_run(tmp_path / "run")
    name = run.layer_names[0]
    scalars, histograms = read_events(tmp_path / "hf")  # the Trainer's own TensorBoard writer got them; it adds train/
    logged = scalars[f"train/geometry/frobenius/{name}"]
    assert sorted(logged) == [0, 2, 4, 6, 8]  # the snapshots (0, 4, 8) and every second step in between
    assert logged[8] == pytest.approx(run.deltas(2)[name].frobenius_norm(), rel=1e-5)
    assert f"core/tlora_B/{name}" in histograms
    assert "geometry/" not in capfd.readouterr().out  # the console printer gets the Trainer's own logs only
    assert not any("geometry/frobenius/" + name in entry for entry in trainer.state.log_history)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e and 4 < e["step"] <= 8]
    assert run.metrics[2]["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)


def test_mean_logged_loss_weights_each_log_by_the_steps_it_covers():
    history = [{"loss": 1.0, "step": 2}, {"loss": 4.0, "step": 3}, {"eval_loss": 9.0, "step": 3}, {"loss": 2.0, "step": 6}]
    assert _mean_logged_loss(history, 0, 3) == pytest.approx((1.0 * 2 + 4.0 * 1) / 3)
    assert _mean_logged_loss(history, 3, 6) == pytest.approx(2.0)
    assert _mean_logged_loss(history, 6, 9) is None


# --------------------------------------------------------------------------- labels that say what was computed
def test_claims_name_the_normality_test_that_gave_each_p_value(tmp_path):
    make_run(tmp_path / "lora", "lora")
    model = make_run(tmp_path / "tlora", "tlora")
    weights = {name: layer.base.weight.detach() for name, layer in adapter_layers(model).items()}
    tables = compare_runs([load_run(tmp_path / "lora"), load_run(tmp_path / "tlora")], weights, baseline_samples=4)
    stats = tables["weight_stats"]
    big = stats.method.eq("tlora") & stats.matrix.eq("B")
    tables["weight_stats"] = stats.assign(normality_test=np.where(big, "dagostino", stats.normality_test), n=np.where(big, 6000, stats.n))
    statistic = paper_claims(tables).set_index("reading").loc["normality test of TLoRA's B", "statistic"]
    assert "D'Agostino–Pearson, n = 6000" in statistic and "Shapiro" not in statistic


def test_intruder_figure_says_how_many_vectors_it_looked_at():
    from tlora_analysis.figures.geometry import intruders

    rows = [{"run": m, "method": m, "module": "query", "layer": 0, "epoch": 1, "j": j, "max_similarity": 0.9, "is_intruder": False}
            for m in ("lora", "tlora") for j in range(1, 6)]
    counts = intruder_counts(pd.DataFrame(rows))
    amplification = pd.DataFrame([{"run": m, "method": m, "module": "query", "layer": 0, "epoch": 1, "amplification": 2.0}
                                  for m in ("lora", "tlora")])
    figure = intruders(counts, amplification)
    assert figure.axes[0].get_ylabel() == "intruder dimensions (of top 5)"
    assert not math.isnan(counts.k.iloc[0])


def test_trainer_callback_reaches_weights_and_biases_offline(tmp_path, tiny_model_dir, monkeypatch):
    """W&B through the Trainer's own report_to integration, offline: the run file holds our geometry keys and values."""
    pytest.importorskip("wandb")
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true", "WANDB_PROJECT": "tlora-test"}.items():
        monkeypatch.setenv(key, value)
    tokenizer = load_tokenizer(tiny_model_dir)
    model = inject_adapters(load_model(tiny_model_dir), "tlora", 4, ["query"], modules_to_save=["classifier"])
    encoded = tokenizer(["a fine film", "a dull film"] * 4)
    dataset = [{"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i], "labels": i % 2} for i in range(8)]
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=1, per_device_train_batch_size=4, learning_rate=1e-2,
                             save_strategy="no", report_to=["wandb"], use_cpu=True, logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.add_callback(DeltaRecorderCallback(tmp_path / "run", trainer=trainer))
    trainer.train()
    import wandb

    wandb.finish()
    key = f"geometry/frobenius/{load_run(tmp_path / 'run').layer_names[0]}".encode()
    deadline = time.time() + HANG_GUARD_S  # wandb's service process may still be flushing under load
    while not any(key in f.read_bytes() for f in tmp_path.rglob("*.wandb")) and time.time() < deadline:
        time.sleep(0.5)
    files = list(tmp_path.rglob("*.wandb"))
    assert len(files) == 1, files
    assert key in files[0].read_bytes()  # W&B stores history keys as plain text
