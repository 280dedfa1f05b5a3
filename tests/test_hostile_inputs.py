"""Runs and adapters from a stranger: nothing read decides what code runs, what is fetched or
how much memory is used, and no command destroys data or writes outside its output.

Each case runs the CLI in a subprocess with a time limit and an address-space limit
(``resource.setrlimit`` in the child), and compares SHA-256 digests of every file it could
touch before and after.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import ENV, HANG_GUARD_S, cli, expect_error, tree_digest
from tlora_analysis.errors import InputError
from tlora_analysis.models import load_model
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.training import TrainConfig, train

LIMITS = dict(timeout=HANG_GUARD_S, memory_mb=3000)


@pytest.fixture()
def runs(tmp_path, toy_runs):
    """Fresh copies of a LoRA and a TLoRA run, free to tamper with."""
    return {m: shutil.copytree(toy_runs / m, tmp_path / m) for m in ("lora", "tlora")}


def edit_json(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def refused(args, watched, *fragments):
    before = tree_digest(*watched)
    err = expect_error(cli(*args, **LIMITS), *fragments)
    assert tree_digest(*watched) == before
    return err


# --------------------------------------------------------------------------- model names inside files
def test_a_pickled_model_named_in_run_json_is_never_unpickled(tmp_path, runs):
    evil = tmp_path / "evil-model"
    evil.mkdir()
    (evil / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (evil / "pytorch_model.bin").write_bytes(b"\x80\x04payload that must never be unpickled")
    for run in runs.values():
        edit_json(run / "run.json", lambda m: m.update(model=str(evil)))
    refused(["analyze", runs["lora"], runs["tlora"], "--out", tmp_path / "tables"], [tmp_path], "refusing to read a pickle")
    assert not (tmp_path / "tables").exists()


def test_a_hub_name_in_run_json_is_never_fetched(tmp_path, runs):
    for run in runs.values():
        edit_json(run / "run.json", lambda m: m.update(model="someone/evil-model"))
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"}  # online: the refusal, not the setting, stops it
    before = tree_digest(tmp_path)
    expect_error(cli("analyze", runs["lora"], runs["tlora"], "--out", tmp_path / "t", env=env, **LIMITS), "never fetched", "--base")
    assert tree_digest(tmp_path) == before


# --------------------------------------------------------------------------- sizes, depth and numbers from headers
@pytest.mark.parametrize("change, fragment", [
    (lambda m: next(iter(m["layers"].values())).update(shape=[10**8, 1]), "'shape' should be"),
    (lambda m: next(iter(m["layers"].values())).update(shape=[10**9, 1]), "'shape' should be"),
    (lambda m: next(iter(m["layers"].values())).update(rank=0), "'rank' should be between 1"),
    (lambda m: next(iter(m["layers"].values())).update(seed=-1), "'seed' should be"),
    (lambda m: m["epochs"][1].update(snapshot="/etc/passwd"), "must be 'snapshots/epoch_001.safetensors'"),
    (lambda m: m["epochs"][1].update(snapshot="../lora/snapshots/epoch_001.safetensors"), "must be 'snapshots/epoch_001.safetensors'"),
    (lambda m: m.update(frozen_file="../lora/frozen.safetensors"), "'frozen_file' must be"),
])
def test_run_json_headers_are_checked_before_anything_is_allocated(runs, change, fragment):
    edit_json(runs["tlora"] / "run.json", change)
    refused(["inspect", runs["tlora"]], runs.values(), fragment)


def test_huge_and_deeply_nested_json_is_refused(runs):
    with open(runs["tlora"] / "run.json", "r+b") as handle:  # sparse: 70 MiB on paper, nothing read
        handle.truncate(70 << 20)
    refused(["inspect", runs["tlora"]], runs.values(), "more than the")
    (runs["lora"] / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    refused(["inspect", runs["lora"]], runs.values(), "nested too deeply")


@pytest.mark.parametrize("tamper, fragment", [
    (lambda t, k: {**t, k: t[k].to(torch.float64) * 1e300}, "magnitude above"),
    (lambda t, k: {**t, k: t[k].view(torch.int32)}, "dtype torch.int32"),
    (lambda t, k: {**t, k: torch.complex(t[k], t[k])}, "dtype torch.complex64"),
    (lambda t, k: {**t, k: torch.full_like(t[k], math.inf)}, "holds inf values"),
])
def test_snapshot_values_that_would_break_the_math(runs, tamper, fragment):
    path = runs["tlora"] / "snapshots" / "epoch_003.safetensors"  # the last epoch, which inspect reads
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("tlora_alpha")) if "magnitude" in fragment else next(k for k in tensors if k.endswith("tlora_B"))
    save_file(tamper(tensors, key), str(path))
    refused(["inspect", runs["tlora"]], runs.values(), fragment)


# --------------------------------------------------------------------------- PEFT adapters from a stranger
def peft_adapter(folder, module="bert.encoder.layer.0.attention.self.query", rank=2, **config):
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    save_file({f"base_model.model.{module}.lora_A.weight": torch.randn(rank, 8, generator=generator),
               f"base_model.model.{module}.lora_B.weight": torch.randn(8, rank, generator=generator)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 4, **config}))
    return folder


@pytest.mark.parametrize("config, module, fragment", [
    ({"rank_pattern": {"(a|a)+": 2}}, "a" * 40 + "!", "backtracks catastrophically"),  # the regex package defuses (a+)+ itself
    ({"alpha_pattern": {"(": 2}}, "query", "not a valid regular expression"),
    ({"r": 0}, "query", "'r' should be a whole number from 1"),
    ({"lora_alpha": math.nan}, "query", "NaN is not a number"),
    ({"lora_alpha": 1e308}, "query", "lora_alpha = 1e+308 is beyond"),
    ({"alpha_pattern": {"query": 1e308}}, "query", "alpha_pattern.query = 1e+308 is beyond"),
])
def test_peft_configs_that_would_hang_or_break_the_math(tmp_path, config, module, fragment):
    adapter = peft_adapter(tmp_path / "adapter", module=module, **config)
    refused(["inspect", adapter], [adapter], fragment)


# --------------------------------------------------------------------------- paths and links
def test_links_that_leave_the_run_are_not_followed(runs, tmp_path):
    snapshot = runs["lora"] / "snapshots" / "epoch_001.safetensors"
    snapshot.unlink()
    snapshot.symlink_to(runs["tlora"] / "snapshots" / "epoch_001.safetensors")
    refused(["inspect", runs["lora"], "--epoch", "1"], runs.values(), "outside")
    inner = runs["tlora"] / "snapshots" / "epoch_003.safetensors"  # a link that stays inside the run is fine
    inner.rename(runs["tlora"] / "kept.safetensors")
    inner.symlink_to(runs["tlora"] / "kept.safetensors")
    assert cli("inspect", runs["tlora"], **LIMITS).returncode == 0


def test_weight_map_entries_stay_in_the_model_folder(tmp_path, tiny_model_dir):
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    (tuned / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../elsewhere/model.safetensors"}}))
    refused(["inspect", tuned, "--base", tiny_model_dir], [tmp_path], "shards must be .safetensors files")


def test_a_snapshot_file_is_the_file_named_and_only_its_epoch(runs, tmp_path):
    snapshot = runs["lora"] / "snapshots" / "epoch_001.safetensors"
    single = json.loads(cli("inspect", snapshot, "--json", **LIMITS).stdout)
    whole = json.loads(cli("inspect", runs["lora"], "--epoch", "1", "--json", **LIMITS).stdout)
    assert single["epoch"] == 1 and single["layers"] == whole["layers"]
    loose = tmp_path / "epoch_001.safetensors"
    shutil.copy(snapshot, loose)
    (tmp_path / "run.json").write_text((runs["lora"] / "run.json").read_text())
    refused(["inspect", loose], [tmp_path], "read inside its run")
    tlora_snapshot = runs["tlora"] / "snapshots" / "epoch_001.safetensors"
    assert cli("analyze", snapshot, tlora_snapshot, "--no-base", "--out", tmp_path / "tables", **LIMITS).returncode == 0
    norms = (tmp_path / "tables" / "norms.csv").read_text().splitlines()
    assert {line.split(",")[4] for line in norms[1:]} == {"1"}  # only the epoch named, not the runs' 0..3


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_fifos_and_devices_are_refused_without_hanging(tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "pipe.safetensors"
        os.mkfifo(target)
    else:
        target = "/dev/zero"
    expect_error(cli("inspect", target, **LIMITS), "neither a regular file nor a directory")


def test_a_fifo_named_like_a_data_file_does_not_hang(tmp_path, tiny_model_dir):
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    os.mkfifo(data / "train.tsv")
    refused(["train", "--method", "lora", "--task", "sst2", "--data-dir", tmp_path / "glue", "--model", tiny_model_dir,
             "--out", tmp_path / "run", "--no-progress"], [tmp_path / "glue"], "not a regular file")
    assert not (tmp_path / "run").exists()


def test_a_head_only_run_is_inspected_without_a_crash(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    with DeltaRecorder(model, tmp_path / "head", head_only=True) as recorder:
        recorder.snapshot(0)
    refused(["inspect", tmp_path / "head"], [tmp_path], "no adapted layers")


# --------------------------------------------------------------------------- writing: nothing destroyed, nothing outside the output
def test_reproduce_never_deletes_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "runs").mkdir(parents=True)
    (tmp_path / "runs" / "thesis.tex").write_text("years of work")
    refused(["reproduce", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "figs", "--max-train-samples", "8", "--no-progress"],
            [tmp_path], "no tlora-analysis study")
    assert (tmp_path / "runs" / "thesis.tex").read_text() == "years of work"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("tiny-run")
    config = TrainConfig(method="tlora", model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=8, batch_size=8, max_length=16)
    train(config, root / "run", progress=False, log=lambda _: None)
    return root / "run"


def test_resume_does_not_follow_links_out_of_the_run(tmp_path, tiny_run):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "epoch_000.safetensors").write_bytes(b"someone else's file")
    shutil.rmtree(run / "resume")
    (run / "resume").symlink_to(victim)
    refused(["train", "--resume", run, "--epochs", "2", "--no-progress"], [run, victim], "refusing to follow it")


@pytest.mark.parametrize("tamper, fragment", [
    (lambda meta, path: edit_json(path, lambda m: m["config"].update(seed=99)), "records seed 0 but its config says 99"),
    (lambda meta, path: save_file(load_file(str(meta)), str(meta), {"epoch": "1", "step": "-100000"}), "records step -100000"),
])
def test_resume_checks_its_state_against_the_header(tmp_path, tiny_run, tamper, fragment):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    tamper(run / "resume" / "epoch_001.safetensors", run / "run.json")
    refused(["train", "--resume", run, "--epochs", "2", "--no-progress"], [run], fragment)


def test_a_label_out_of_range_leaves_no_run(tmp_path, tiny_model_dir):
    data = tmp_path / "glue" / "SST-2"
    data.mkdir(parents=True)
    (data / "train.tsv").write_text("sentence\tlabel\na fine film\t1\na dull film\t5\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    refused(["train", "--method", "lora", "--task", "sst2", "--data-dir", tmp_path / "glue", "--model", tiny_model_dir,
             "--out", tmp_path / "run", "--no-progress"], [tmp_path / "glue"], "label 5 is outside 0..1")
    assert not (tmp_path / "run").exists()


def test_outputs_replace_planted_links_instead_of_writing_through_them(tmp_path, toy_runs):
    out = tmp_path / "figs"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / "spectra.png").symlink_to(target)
    (out / "figures.json").symlink_to(target)
    assert cli("figures", toy_runs / "lora", toy_runs / "tlora", "--no-base", "--out", out, **LIMITS).returncode == 0
    assert target.read_text() == "keep me"  # (the report's own planted link: test_figures.py::test_claims_and_report)
    assert not (out / "spectra.png").is_symlink() and (out / "spectra.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "figures.json").is_symlink()


def test_a_failed_export_leaves_nothing_half_done(tmp_path, toy_runs):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    refused(["export", toy_runs / "lora", "--out", blocker / "adapter"], [tmp_path, toy_runs], "blocker")
    out = tmp_path / "out"
    assert cli("export", toy_runs / "lora", "--out", out, **LIMITS).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "out"]  # no staging folder left behind
    refused(["export", toy_runs / "lora", "--out", out], [tmp_path], "not an empty directory")


def test_the_suite_runs_each_case_under_limits():
    """The limits are real: a child that tries to allocate past them fails instead of taking the machine."""
    code = "import numpy; numpy.ones(1 << 30)"  # 8 GiB
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMITS["memory_mb"] << 20, LIMITS["memory_mb"] << 20))

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit, timeout=HANG_GUARD_S)
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_reproduce_swaps_in_a_new_study_only_after_it_finished(tmp_path, tiny_model_dir, monkeypatch):
    import tlora_analysis.reproduce as reproduce
    from tlora_analysis.study import Executor

    quiet = dict(executor=Executor(), progress=False, log=lambda _: None)
    spec = reproduce.reproduce_spec(1, 1, model=tiny_model_dir, max_train_samples=8, max_eval_samples=4, batch_size=4)
    old = tmp_path / "study"
    reproduce._run_or_reuse({**spec, "method": ["tlora"]}, old, False, **quiet)
    before = tree_digest(old)
    with pytest.raises(InputError, match="--retrain"):
        reproduce._run_or_reuse(spec, old, False, **quiet)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed mid-way

    monkeypatch.setattr(reproduce, "run_study", crash)
    with pytest.raises(KeyboardInterrupt):
        reproduce._run_or_reuse(spec, old, True, **quiet)
    assert tree_digest(old) == before and sorted(p.name for p in tmp_path.iterdir()) == ["study"]
    monkeypatch.undo()
    study = reproduce._run_or_reuse(spec, old, True, **quiet)
    assert sorted(study.cells) == ["head-s0", "lora-s0", "tlora-s0"] and sorted(p.name for p in tmp_path.iterdir()) == ["study"]


# --------------------------------------------------------------------------- second campaign: studies, links, environment, values
TINY = ["--max-train-samples", "16", "--max-eval-samples", "8", "--batch-size", "8", "--max-length", "16", "--epochs", "1", "--no-progress"]


def test_tensorboard_events_never_go_through_a_planted_link(tmp_path, tiny_model_dir):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(precious)
    refused(["train", "--method", "lora", "--model", tiny_model_dir, "--out", tmp_path / "run", "--report-to", "tensorboard", *TINY],
            [precious], "tensorboard: is a symbolic link")
    assert list(precious.iterdir()) == [precious / "notes.txt"]


def study_spec(path, tiny_model_dir, **extra):
    lines = ['method = "lora"', f'model = "{tiny_model_dir}"', "epochs = 1", "max_train_samples = 16", "max_eval_samples = 8",
             "batch_size = 8", "max_length = 16", *(f"{k} = {v}" for k, v in extra.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_study_never_writes_through_planted_links(tmp_path, tiny_model_dir):
    spec = study_spec(tmp_path / "spec.toml", tiny_model_dir)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    assert cli("study", spec, "--out", tmp_path / "S", "--no-progress", timeout=HANG_GUARD_S).returncode == 0
    shutil.rmtree(tmp_path / "S" / "runs" / "lora")  # the example: the cell runs again, its log is a planted link
    (tmp_path / "S" / "logs" / "lora.log").unlink()
    (tmp_path / "S" / "logs" / "lora.log").symlink_to(precious)
    result = cli("study", spec, "--out", tmp_path / "S", "--no-progress", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert precious.read_text() == "keep me" and not (tmp_path / "S" / "logs" / "lora.log").is_symlink()
    elsewhere = tmp_path / "elsewhere"
    shutil.move(tmp_path / "S" / "runs", elsewhere)
    (tmp_path / "S" / "runs").symlink_to(elsewhere)
    refused(["study", spec, "--out", tmp_path / "S", "--no-progress"], [elsewhere, precious], "runs: is a symbolic link")
    (tmp_path / "S" / "runs").unlink()
    (tmp_path / "S" / "runs").mkdir()
    (tmp_path / "S" / "runs" / "lora").symlink_to(elsewhere / "lora")  # a cell that leads out of the study
    refused(["figures", tmp_path / "S", "--out", tmp_path / "figs", "--no-base"], [elsewhere], "lora: is a symbolic link")


@pytest.mark.parametrize("variables, fragment", [
    ({"WORLD_SIZE": "2", "RANK": "5"}, "RANK=5 with WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "abc", "RANK": "0"}, "WORLD_SIZE='abc'"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, "WORLD_SIZE='0'"),
    ({"WORLD_SIZE": "-2", "RANK": "0"}, "WORLD_SIZE='-2'"),
])
def test_inconsistent_torchrun_variables_are_refused_at_once(tmp_path, tiny_model_dir, variables, fragment):
    env = {**ENV, **variables}
    before = tree_digest(tmp_path)
    expect_error(cli("train", "--method", "lora", "--model", tiny_model_dir, "--out", tmp_path / "run", *TINY, env=env, timeout=HANG_GUARD_S), fragment)
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(spec=5), "'spec' should be the study's spec as a JSON object"),
    (lambda m: m.update(spec="/etc/passwd"), "'spec' should be the study's spec as a JSON object"),
    (lambda m: m.update(cells=[1]), "'cells' should map cell names to JSON objects"),
])
def test_study_json_fields_of_the_wrong_type(tmp_path, change, fragment):
    (tmp_path / "S").mkdir()
    meta = {"format": "tlora-analysis-study", "format_version": 1, "spec": {"method": "lora"}, "cells": {}}
    change(meta)
    (tmp_path / "S" / "study.json").write_text(json.dumps(meta))
    refused(["figures", tmp_path / "S", "--out", tmp_path / "figs", "--no-base"], [tmp_path], fragment)


@pytest.mark.parametrize("text, fragment", [
    ('method = "lora"\nseed = ' + str(list(range(1000))) + "\nrank = " + str(list(range(1, 1001))) + "\n", "1,000,000 cells"),
    ('method = "lora"\nseed = 1979-05-27\n', "'seed' should be a string, number or boolean"),
    ('method = "lora"\nmodel = "a\\u0000b"\n', "'model' should be a string"),
    ('method = "lora"\nseed = [[1, 2]]\n', "--seed must be a whole number"),
    ('method = "lora"\nseed = "abc"\n', "--seed must be a whole number"),
    ('method = "lora"\nseed = 1.5\n', "--seed must be a whole number"),
    ('method = "lora"\nseed = true\n', "--seed must be a whole number"),
    ('method = "lora"\ndevice = "foo"\n', "--device must be cpu"),
    ('method = "lora"\nweight_decay = -1\n', "--weight-decay must be 0 or more"),
    ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
])
def test_study_specs_that_crashed_give_one_line_and_leave_nothing(tmp_path, text, fragment):
    (tmp_path / "spec.toml").write_text(text)
    refused(["study", tmp_path / "spec.toml", "--out", tmp_path / "S", "--no-progress"], [tmp_path], fragment)
    assert not (tmp_path / "S").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--device", "foo"], "--device must be cpu"),
    (["--seed", "99999999999999999999"], "--seed must be a whole number"),
    (["--seed", "-1"], "--seed must be a whole number"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    (["--alpha", "1e300"], "--alpha must be at most"),
    (["--max-length", "100000"], "beyond the model's 128 positions"),
])
def test_cli_values_are_checked_before_anything_is_written(tmp_path, tiny_model_dir, args, fragment):
    tiny = [*TINY[:6], *TINY[8:]] if "--max-length" in args else TINY  # without TINY's own --max-length 16
    refused(["train", "--method", "vera", "--model", tiny_model_dir, "--out", tmp_path / "run", *tiny, *args], [tmp_path], fragment)
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_ends_in_one_line_and_keeps_its_finished_epochs(tmp_path, tiny_model_dir):
    from tlora_analysis.store import load_run

    expect_error(cli("train", "--method", "lora", "--model", tiny_model_dir, "--out", tmp_path / "run", "--lr", "1e30", *TINY),
                 "training diverged in epoch 1", "epochs up to 0 are kept")
    assert load_run(tmp_path / "run").epochs == [0]
    refused(["inspect", tmp_path / "run", "--max-rank", "-1"], [tmp_path], "--max-rank must be a whole number")


def test_a_run_json_config_that_is_not_an_object(tmp_path, runs):
    edit_json(runs["lora"] / "run.json", lambda m: m.update(config=[1, 2]))
    edit_json(runs["tlora"] / "run.json", lambda m: m.update(config="x"))
    assert cli("report", runs["lora"], runs["tlora"], "--out", tmp_path / "r.html", "--no-base", **LIMITS).returncode == 0
    assert cli("export", runs["lora"], "--out", tmp_path / "export", **LIMITS).returncode == 0


def _random_value(rng, depth=0):
    import datetime

    kinds = ["int", "neg", "float", "nan", "inf", "bool", "str", "empty", "nul", "date", "none", "big", *(["list", "list", "table"] if depth < 2 else [])]
    kind = rng.choice(kinds)
    return {"int": lambda: rng.randint(0, 40), "neg": lambda: -rng.randint(1, 10**20), "float": lambda: rng.random() * 10,
            "nan": lambda: math.nan, "inf": lambda: math.inf, "bool": lambda: rng.random() < 0.5,
            "str": lambda: rng.choice(["lora", "tlora", "cpu", "abc", "query"]), "empty": lambda: "", "nul": lambda: "a\x00b",
            "date": lambda: datetime.date(1979, 5, 27), "none": lambda: None, "big": lambda: 10**30,
            "list": lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
            "table": lambda: {rng.choice(["lora", "tlora", "x"]): _random_value(rng, depth + 1)}}[kind]()


def test_random_study_specs_give_a_grid_or_one_input_error():
    """A property test of the spec parser: values of every type at every key (strings, numbers, NaN, huge
    integers, dates, NULs, nested lists, method tables) give a valid grid or an InputError, nothing else."""
    import random

    from tlora_analysis.study.spec import SPEC_KEYS, parse_spec

    outcomes = {"grid": 0, "refused": 0}
    for case in range(1500):
        rng = random.Random(case)
        raw = {k: _random_value(rng) for k in rng.sample(SPEC_KEYS, rng.randint(0, 4))}
        if rng.random() < 0.7:
            raw["method"] = rng.choice(["lora", "tlora", ["lora", "tlora"], _random_value(rng)])
        try:
            parse_spec(raw)
            outcomes["grid"] += 1
        except InputError:
            outcomes["refused"] += 1
    assert outcomes["grid"] > 50 and outcomes["refused"] > 500, outcomes  # both kinds of outcome are exercised


# --------------------------------------------------------------------------- the W0-SVD cache and sharded W0
@pytest.fixture(scope="module")
def sharded_base(tmp_path_factory):
    """A tiny Llama saved in several shards, and a peft LoRA adapter on it with nonzero B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    root = tmp_path_factory.mktemp("sharded")

    def tiny():
        torch.manual_seed(0)
        config = LlamaConfig(hidden_size=32, intermediate_size=48, num_key_value_heads=1, vocab_size=64, num_hidden_layers=2,
                             num_attention_heads=2)
        return AutoModelForCausalLM.from_config(config).eval()

    tiny().save_pretrained(root / "base", max_shard_size="20KB")
    model = get_peft_model(tiny(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(generator=torch.Generator().manual_seed(len(name)))
    model.save_pretrained(root / "adapter")
    return root


def _inspect(root, base=None):
    from tlora_analysis.checkpoints import inspect_checkpoint

    table = inspect_checkpoint(root / "adapter", base=str(base or root / "base"), intruder_k=3)
    return table[["name", "amplification", "intruders"]].reset_index(drop=True)


@pytest.mark.parametrize("tamper", ["values", "nan", "integers", "shape", "garbage"])
def test_w0_svd_cache_entries_are_checked_against_w0_and_recomputed(tmp_path, sharded_base, monkeypatch, tamper):
    """A cache entry with wrong values, NaN, an integer dtype, a wrong shape or no safetensors at all
    changes nothing: it fails the checks against W0 and is recomputed."""
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    expected = _inspect(sharded_base)
    entries = sorted((tmp_path / "cache" / "w0_svd").glob("*.safetensors"))
    assert len(entries) == 4
    for entry in entries:
        tensors = load_file(entry)
        u, s = tensors["U"], tensors["S"]
        if tamper == "values":  # orthonormal, the right shape and dtype, and unrelated to W0
            tensors = {"U": torch.linalg.qr(torch.randn(u.shape, generator=torch.Generator().manual_seed(1)))[0].contiguous(), "S": s}
        elif tamper == "nan":
            tensors = {"U": u.clone().fill_(math.nan), "S": s}
        elif tamper == "integers":
            tensors = {"U": (u * 100).to(torch.int32), "S": s.to(torch.int32)}
        elif tamper == "shape":
            tensors = {"U": u[:, :2].contiguous(), "S": s[:2].contiguous()}
        if tamper == "garbage":
            entry.write_bytes(b"not a safetensors file")
        else:
            save_file(tensors, entry)
    pd_equal = _inspect(sharded_base).equals(expected)
    assert pd_equal
    for entry in entries:  # and each entry was rewritten with the right decomposition
        assert torch.isfinite(load_file(entry)["U"]).all()


def test_a_shard_replaced_with_the_same_size_and_mtime_never_meets_a_stale_entry(tmp_path, sharded_base, monkeypatch):
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    base = shutil.copytree(sharded_base / "base", tmp_path / "base")
    _inspect(sharded_base, base)
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    shard = base / index["model.layers.0.self_attn.q_proj.weight"]
    stat = shard.stat()
    tensors = load_file(shard)
    generator = torch.Generator().manual_seed(7)
    tensors = {k: torch.randn(v.shape, generator=generator).to(v.dtype) if k.endswith("q_proj.weight") else v for k, v in tensors.items()}
    save_file(tensors, shard, metadata={"format": "pt"})
    assert shard.stat().st_size == stat.st_size
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p or rsync -t would leave it
    stale = _inspect(sharded_base, base)  # the old entries are still in the cache
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "fresh-cache"))
    pd_equal = stale.equals(_inspect(sharded_base, base))
    assert pd_equal


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unwritable_cache_means_computing_without_it(tmp_path, sharded_base, monkeypatch, kind):
    cache = tmp_path / "cache"
    if kind == "file":
        cache.write_text("a file where the cache folder should be")
    else:
        cache.mkdir()
        cache.chmod(0o500)
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(cache))
    try:
        table = _inspect(sharded_base)
    finally:
        if cache.is_dir():
            cache.chmod(0o700)
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "writable"))
    pd_equal = table.equals(_inspect(sharded_base))
    assert pd_equal


@pytest.mark.parametrize("change, fragment", [("nan", "holds NaN or infinite values"), ("inf", "holds NaN or infinite values"),
                                              ("huge", "has shape (600, 500), the adapter's module")])
def test_sharded_w0_values_and_shapes_are_checked_first(tmp_path, sharded_base, change, fragment):
    """NaN or inf in W0 is one line, and a W0 of another shape is refused from the shard's header,
    before the tensor is read (under a memory limit that reading it would break)."""
    base = shutil.copytree(sharded_base / "base", tmp_path / "base")
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    shard = base / index["model.layers.0.self_attn.q_proj.weight"]
    tensors = load_file(shard)
    key = "model.layers.0.self_attn.q_proj.weight"
    if change == "huge":
        tensors[key] = torch.zeros(600, 500)
    else:
        tensors[key] = tensors[key].clone()
        tensors[key][3, 4] = math.nan if change == "nan" else math.inf
    save_file(tensors, shard, metadata={"format": "pt"})
    refused(["inspect", sharded_base / "adapter", "--base", base], [base, sharded_base], fragment, key)


def test_resume_trains_only_on_the_data_the_run_was_trained_on(tmp_path, tiny_llama_dir):
    """The data's digest is recorded at training time: a resumed run whose recorded data file now
    holds other text is refused in one line; the original data, passed on the command line, resumes it."""
    data = tmp_path / "data.txt"
    lines = [f"example number {i} of a small causal LM task" for i in range(12)]
    data.write_text("\n".join(lines) + "\n")
    original = tmp_path / "original.txt"
    shutil.copyfile(data, original)
    run = tmp_path / "run"
    args = ["--task", "lm", "--model", tiny_llama_dir, "--targets", "attention", "--batch-size", "4", "--no-progress"]
    result = cli("train", "--method", "lora", "--data-file", data, "--epochs", "1", "--out", run, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(json.loads((run / "run.json").read_text())["data_sha256"]) == 64
    data.write_text("\n".join(reversed(lines)) + "\n")
    refused(["train", "--resume", run, "--epochs", "2", "--no-progress"], [run], "is not the data this run was trained on",
            "--data-file")
    result = cli("train", "--resume", run, "--epochs", "2", "--data-file", original, "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    from tlora_analysis.store import load_run

    assert load_run(run).epochs == [0, 1, 2]


@pytest.mark.parametrize("name, content, fragment", [
    ("bytes.txt", b"fine line\n\xff\xfe not utf-8\nmore\n", "line 2 is not UTF-8"),
    ("deep.jsonl", b'{"text": "ok"}\n' + b"[" * 100_000 + b"]" * 100_000 + b"\n", "line 2: JSON nested too deeply"),
    ("surrogate.jsonl", b'{"text": "ok"}\n{"text": "half a pair \\ud800 here"}\n', "line 2 holds a lone surrogate"),
    ("many.txt", b"x\n" * 250_001, "more than 250,000 examples"),
])
def test_lm_data_files_that_crashed_give_one_line(tmp_path, tiny_llama_dir, name, content, fragment):
    data = tmp_path / name
    data.write_bytes(content)
    refused(["train", "--method", "lora", "--task", "lm", "--model", tiny_llama_dir, "--data-file", data, "--out", tmp_path / "run"],
            [tmp_path], fragment)
    assert not (tmp_path / "run").exists()


def test_report_never_replaces_a_claims_file_it_did_not_write(tmp_path, toy_runs):
    """report --out x.html writes its claims to x.claims.json; a file of that name that a report did not
    write (or a link there) is refused before any work, and one a report wrote is replaced."""
    sibling = tmp_path / "x.claims.json"
    args = ["report", toy_runs / "lora", toy_runs / "tlora", "--no-base", "--out", tmp_path / "x.html"]
    sibling.write_text("my notes, not a report's claims\n")
    refused(args, [tmp_path], "x.claims.json: exists and was not written by report")
    sibling.unlink()
    (tmp_path / "elsewhere.json").write_text("[]\n")
    sibling.symlink_to(tmp_path / "elsewhere.json")
    refused(args, [tmp_path], "x.claims.json: exists and was not written by report")
    assert not (tmp_path / "x.html").exists()
    sibling.unlink()
    sibling.write_text(json.dumps([{"finding": 6, "reading": "an earlier report's"}], indent=2))
    assert cli(*args, **LIMITS).returncode == 0
    assert json.loads(sibling.read_text())[0]["finding"] == 1
