"""A new user's mistakes: one `error:` line, exit 2, nothing changed; and the habits of shared work
(locks, readable files, portable exports). Every CLI case runs in a subprocess, as a user would."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import ENV, HANG_GUARD_S, cli, expect_error, tree_digest
from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.errors import InputError
from tlora_analysis.io import atomic_write_json, umask
from tlora_analysis.lock import RunLock
from tlora_analysis.methods import METHOD_SPECS
from tlora_analysis.models import DEFAULT_MODEL_HUB_NAME, load_model
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.store import load_run


def copy_of(src, tmp_path, name="copy"):
    return shutil.copytree(src, tmp_path / name)


def edit_run_json(run, change):
    meta = json.loads((run / "run.json").read_text())
    change(meta)
    (run / "run.json").write_text(json.dumps(meta))


# --------------------------------------------------------------------------- train arguments
TRAIN = ["train", "--max-train-samples", "16", "--max-eval-samples", "8", "--max-length", "16", "--no-progress"]


@pytest.mark.parametrize("args, fragments", [
    (["--method", "lora", "--targets", "nope"], ["target 'nope' matches no linear layer", "query"]),
    (["--method", "tlora", "--rank", "999"], ["rank 999 exceeds"]),
    (["--method", "tlora", "--lr", "nan"], ["--lr must be a finite number"]),
    (["--method", "tlora", "--max-train-samples", "-5"], ["--max-train-samples must be a whole number of at least 1, got -5"]),
])
def test_bad_train_arguments_write_nothing(tmp_path, tiny_model_dir, args, fragments):
    expect_error(cli(*TRAIN, "--model", tiny_model_dir, *args, "--out", tmp_path / "run"), *fragments)
    assert not (tmp_path / "run").exists()


def test_resume_takes_only_epochs_and_device(tmp_path, toy_runs):
    expect_error(cli("train", "--resume", toy_runs / "lora", "--rank", "4"), "drop --rank")


# --------------------------------------------------------------------------- run.json validation
@pytest.mark.parametrize("method, change, fragments", [
    ("lora", lambda m: m["epochs"][1].update(epoch="../../x"), ["field 'epoch' should be int, got str"]),
    ("lora", lambda m: m["epochs"][1].update(snapshot="../../other/snapshots/epoch_001.safetensors"), ["must be 'snapshots/epoch_001.safetensors'"]),
    ("lora", lambda m: next(iter(m["layers"].values())).pop("scaling"), ["missing field 'scaling'"]),
    ("lora", lambda m: m.update(format_version=7), ["format_version 7 is newer", "(version 1)"]),
    ("tlora", lambda m: next(iter(m["layers"].values())).update(shape=[100_000_000, 1]), ["'shape' should be [d_out, d_in]"]),
    ("tlora", lambda m: next(iter(m["layers"].values())).update(rank=0), ["'rank' should be between 1"]),
])
def test_bad_run_json_is_refused(tmp_path, toy_runs, method, change, fragments):
    run = copy_of(toy_runs / method, tmp_path)
    edit_run_json(run, change)
    before = tree_digest(run)
    expect_error(cli("inspect", run), *fragments)
    assert tree_digest(run) == before


def test_frozen_file_without_a_key_and_with_tampered_values(tmp_path, tiny_model_dir):
    model = inject_adapters(load_model(tiny_model_dir), "tlora", 2, ["query"])
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.tlora_A.mul_(2.0)  # not what the seed regenerates: the recorder stores them
    with DeltaRecorder(model, tmp_path / "run") as recorder:
        recorder.snapshot(0)
    frozen = tmp_path / "run" / "frozen.safetensors"
    tensors = load_file(str(frozen))
    save_file({k: v * 3 for k, v in tensors.items()}, str(frozen))
    expect_error(cli("inspect", tmp_path / "run"), "frozen.safetensors does not match its recorded checksum")
    save_file(dict(list(tensors.items())[1:]), str(frozen))
    expect_error(cli("inspect", tmp_path / "run"), "frozen.safetensors: missing tensor")


def test_non_float_snapshot_tensors_are_refused(tmp_path, toy_runs):
    run = copy_of(toy_runs / "lora", tmp_path)
    path = run / "snapshots" / "epoch_001.safetensors"
    tensors = load_file(str(path))
    key = next(iter(k for k in tensors if k.endswith("lora_A")))
    save_file({**tensors, key: tensors[key].view(torch.int32)}, str(path))
    expect_error(cli("inspect", run, "--epoch", "1"), "dtype torch.int32")


def test_inspect_base_that_is_not_a_model(tmp_path, toy_runs):
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "readme.txt").write_text("hello")
    expect_error(cli("inspect", toy_runs / "lora", "--base", tmp_path / "notamodel"), "notamodel: cannot load a model")


# --------------------------------------------------------------------------- --base for every source
def test_inspect_with_base_adds_amplification_and_intruders_for_a_peft_adapter(tmp_path, tiny_model_dir):
    peft = pytest.importorskip("peft")
    from tlora_analysis.checkpoints import inspect_checkpoint

    torch.manual_seed(3)
    model = peft.get_peft_model(load_model(tiny_model_dir), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["value"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    table = inspect_checkpoint(tmp_path / "adapter", base=tiny_model_dir, intruder_k=4).set_index("name")
    base = load_model(tiny_model_dir)
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            name = name.removeprefix("base_model.model.")
            w0 = base.get_submodule(name).weight.detach().double().numpy()
            delta = module.get_delta_weight("default").detach().double().numpy()
            u, _, vt = np.linalg.svd(delta)
            projection = np.linalg.norm(u[:, :2].T @ w0 @ vt[:2].T)
            assert table.loc[name, "amplification"] == pytest.approx(np.linalg.norm(delta) / projection, rel=1e-6)
            x = np.linalg.svd(w0)[0]
            y = np.linalg.svd(w0 + delta)[0][:, :4]
            assert table.loc[name, "intruders"] == int((np.abs(y.T @ x).max(axis=1) < 0.5).sum())
    assert table.attrs["intruder_k"] == 4


# --------------------------------------------------------------------------- locks and file modes
def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    lock = RunLock.acquire(out)
    try:
        err = expect_error(cli(*TRAIN, "--method", "tlora", "--model", tiny_model_dir, "--out", out), "another process")
        assert f"pid {os.getpid()}" in err
    finally:
        lock.release()
    assert not any(out.iterdir())  # the refused train wrote nothing


def test_a_lock_left_by_a_killed_process_is_not_in_the_way(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tlora_analysis.lock import RunLock; "
                               f"RunLock.acquire({str(tmp_path / 'run')!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    assert holder.stdout.readline().strip() == "locked"
    from tlora_analysis.errors import InputError

    with pytest.raises(InputError, match="another process"):
        RunLock.acquire(tmp_path / "run")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "run" / ".lock").exists()  # the stale file is still there ...
    RunLock.acquire(tmp_path / "run").release()  # ... and does not block


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic_write_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == mode


def test_two_trains_at_once_one_wins(tmp_path, tiny_model_dir):
    args = [*TRAIN, "--method", "tlora", "--model", tiny_model_dir, "--epochs", "1", "--out", tmp_path / "run"]
    procs = [subprocess.Popen([sys.executable, "-m", "tlora_analysis", *map(str, args)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=HANG_GUARD_S), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    err = next(e for code, e in results if code == 2)
    assert "another process" in err or "already holds a run" in err
    assert not (tmp_path / "run" / ".lock").exists()


# --------------------------------------------------------------------------- portable exports
def test_exports_name_the_base_model_portably(tmp_path, toy_runs):
    from tlora_analysis.export import export

    for model, expected in (("default", DEFAULT_MODEL_HUB_NAME), ("some/local-dir", "some/local-dir")):
        run = copy_of(toy_runs / "lora", tmp_path, f"run-{expected.replace('/', '_')}")
        edit_run_json(run, lambda m, model=model: m.update(model=model))
        export(run, tmp_path / f"out-{expected.replace('/', '_')}")
        config = json.loads((tmp_path / f"out-{expected.replace('/', '_')}" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == expected
        assert stat.S_IMODE((tmp_path / f"out-{expected.replace('/', '_')}").stat().st_mode) == 0o777 & ~umask()


def test_the_hub_name_of_the_default_resolves_to_the_embedded_copy():
    from tlora_analysis.models import default_model_path, resolve_model

    assert resolve_model(DEFAULT_MODEL_HUB_NAME) == str(default_model_path())


# --------------------------------------------------------------------------- a fast, quiet command line
def test_a_command_forked_from_the_preloaded_server_answers_as_a_fresh_interpreter(tmp_path, toy_runs, monkeypatch):
    """helpers.cli forks commands from a server that imported torch and the toolkit once: the same exit status, output
    and files as ``python -m tlora_analysis`` started afresh, from the caller's working folder and umask."""
    from helpers import _fresh_interpreter

    shutil.copytree(toy_runs / "lora", tmp_path / "lora")
    monkeypatch.chdir(tmp_path)
    assert cli("inspect", "missing").returncode == 2  # the server started under the usual umask, before it changes
    old = os.umask(0o077)
    try:
        for args in (["inspect", "lora", "--epoch", "1"], ["inspect", "missing"], ["export", "lora", "--out", "exported"]):
            fresh = _fresh_interpreter(args, ENV, HANG_GUARD_S, 3000)
            shutil.rmtree("exported", ignore_errors=True)
            forked = cli(*args)  # the files checked below are the forked command's
            assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "exported" / "adapter_config.json").stat().st_mode) == 0o600


def test_help_and_argument_errors_import_no_heavy_library():
    code = ("import sys, tlora_analysis.cli as c\n"
            "try:\n    c.main(['train', '--rank', 'x'])\nexcept SystemExit as e:\n    assert e.code == 2\n"
            "heavy = [m for m in ('torch', 'transformers', 'scipy', 'pandas', 'matplotlib', 'numpy') if m in sys.modules]\n"
            "print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_loading_the_model_prints_nothing_and_sets_no_environment(tiny_model_dir):
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"}
    code = ("import os; from tlora_analysis.models import base_weights, load_model\n"
            f"load_model({tiny_model_dir!r}); base_weights('default', ['bert.encoder.layer.0.attention.self.query'])\n"
            "print('HF_HUB_OFFLINE' in os.environ)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "False" and result.stderr == "", result.stderr


def test_broken_pipe_is_quiet(toy_runs):
    result = subprocess.run(f"{sys.executable} -m tlora_analysis inspect {toy_runs / 'lora'} | head -c 10", shell=True,
                            capture_output=True, text=True, env=ENV)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_output_os_errors_are_one_line(tmp_path, toy_runs):
    if os.geteuid() == 0:  # root ignores file modes; a path under a regular file fails for everyone
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "export"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        out = tmp_path / "ro" / "export"
    expect_error(cli("export", toy_runs / "lora", "--out", out))


# --------------------------------------------------------------------------- docs
def test_docstrings_cite_the_projects_own_docs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert (root / "docs" / "quantities.md").is_file()
    offenders = [str(p) for p in (root / "tlora_analysis").rglob("*.py") if "reference.md" in p.read_text()]
    assert not offenders
    assert "docs/quantities.md" in (root / "README.md").read_text()  # the README links it


def test_an_unknown_method_is_refused_with_the_known_ones():
    result = cli("train", "--method", "dorra", "--out", "x")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "invalid choice: 'dorra'" in result.stderr and ", ".join(METHOD_SPECS) in result.stderr.replace("'", "")


# --------------------------------------------------------------------------- the surface a user meets
def test_version_and_registry_driven_help():
    from tlora_analysis import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"tlora-analysis {__version__}"
    top = cli("--help").stdout
    assert all(label in top for label in ("LoRA-FA", "VeRA", "LoRA-XS"))
    train_help = " ".join(cli("train", "--help").stdout.split())
    assert "attention, mlp, all-linear" in train_help and "--task lm" in train_help


def test_train_without_method_uses_the_documented_default(tmp_path, tiny_model_dir):
    result = cli("train", "--model", tiny_model_dir, "--out", tmp_path / "run", "--max-train-samples", "16", "--max-eval-samples", "8",
                 "--batch-size", "8", "--max-length", "16", "--epochs", "1", "--no-progress", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-1500:]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["method"] == "tlora"


def test_a_study_directory_where_a_run_is_expected_says_what_it_is(tmp_path):
    (tmp_path / "S").mkdir()
    (tmp_path / "S" / "study.json").write_text("{}")
    with pytest.raises(InputError, match="it is a study directory: open it with load_study"):
        load_run(tmp_path / "S")
    expect_error(cli("inspect", tmp_path / "S"), "a study directory, not one source")


def test_glue_offline_points_to_data_dir(tmp_path):
    expect_error(cli("train", "--method", "lora", "--task", "rte", "--out", tmp_path / "run", "--no-progress", timeout=HANG_GUARD_S),
                 "offline, pass --data-dir")
    assert not (tmp_path / "run").exists()
