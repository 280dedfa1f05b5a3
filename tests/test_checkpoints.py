"""inspect and export: agreement with peft itself, identical logits after export, and clean errors on bad input."""

import hashlib
import json
import math
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import cli
from tlora_analysis.checkpoints import inspect_checkpoint
from tlora_analysis.cli import main
from tlora_analysis.export import export, load_exported
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.training import TrainConfig, restore_model, train

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("trained")
    kwargs = dict(model=tiny_model_dir, epochs=2, max_train_samples=64, max_eval_samples=16, batch_size=16, max_length=24, rank=4)
    return {m: train(TrainConfig(method=m, **kwargs), root / m, progress=False, log=lambda _: None) for m in ("lora", "tlora")}


def make_peft_adapter(path, model_dir, **config):
    torch.manual_seed(1)
    model = peft.get_peft_model(load_model(model_dir), peft.LoraConfig(target_modules=["query", "value"], init_lora_weights=False, **config))
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize(
    "config",
    [
        dict(r=4, lora_alpha=8),
        dict(r=4, lora_alpha=8, use_rslora=True),
        dict(r=4, lora_alpha=8, rank_pattern={"value": 2}, alpha_pattern={"query": 16}),
    ],
)
def test_inspect_agrees_with_peft_get_delta_weight(tmp_path, tiny_model_dir, config):
    model = make_peft_adapter(tmp_path / "adapter", tiny_model_dir, **config)
    table = inspect_checkpoint(tmp_path / "adapter").set_index("name")
    checked = 0
    for name, module in model.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            dense = module.get_delta_weight("default").detach().double().numpy()
            ours = table.loc[name.removeprefix("base_model.model.")]
            s = np.linalg.svd(dense, compute_uv=False)
            assert ours.frobenius == pytest.approx(np.linalg.norm(dense), rel=1e-5)
            assert ours.spectral == pytest.approx(s[0], rel=1e-5)
            np.testing.assert_allclose([ours.s1, ours.s2], s[:2], rtol=1e-5)
            assert ours["rank"] == module.r["default"] and ours.scale == pytest.approx(module.scaling["default"])
            checked += 1
    assert checked == 4


def logits(model, model_dir):
    batch = load_tokenizer(model_dir)(["although the plot is dull, the cast is superb.", "a boring film."], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def test_exported_lora_loads_in_peft_with_identical_logits(tmp_path, trained, tiny_model_dir):
    export(trained["lora"].path, tmp_path / "peft")
    base = load_model(tiny_model_dir)
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    torch.testing.assert_close(logits(peft_model, tiny_model_dir), logits(restore_model(trained["lora"]), tiny_model_dir), rtol=1e-5, atol=1e-6)
    ours = inspect_checkpoint(tmp_path / "peft").set_index("name")
    theirs = inspect_checkpoint(trained["lora"].path).set_index("name")
    np.testing.assert_allclose(ours.frobenius, theirs.frobenius, rtol=1e-6)


def test_exported_tlora_reloads_with_identical_logits(tmp_path, trained, tiny_model_dir):
    export(trained["tlora"].path, tmp_path / "tlora", epoch=1)
    reloaded = load_exported(tmp_path / "tlora")
    torch.testing.assert_close(logits(reloaded, tiny_model_dir), logits(restore_model(trained["tlora"], epoch=1), tiny_model_dir), rtol=0, atol=0)
    record = json.loads((tmp_path / "tlora" / "run.json").read_text())
    assert record["exported_from"] == {"run": "tlora", "epoch": 1} and [e["epoch"] for e in record["epochs"]] == [1]


def test_full_fine_tune_through_the_dense_path(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    changed = "bert.encoder.layer.1.attention.self.value"
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(32, 3, generator=generator) @ torch.randn(3, 32, generator=generator)
    with torch.no_grad():
        model.get_submodule(changed).weight.add_(delta)
    model.save_pretrained(tmp_path / "tuned")
    table = inspect_checkpoint(tmp_path / "tuned", base=tiny_model_dir).set_index("name")
    assert list(table.index) == [changed]
    assert table.loc[changed].frobenius == pytest.approx(float(delta.double().norm()), rel=1e-5)
    assert table.loc[changed].energy_rank_90 <= 3 and table.attrs["totals"]["method"] == "full"


def test_inspect_json_cli(capsys, trained):
    assert main(["inspect", str(trained["tlora"].path), "--json", "--epoch", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epoch"] == 1 and len(report["layers"]) == 4
    assert report["totals"]["update_trainable_params"] == 4 * (16 + 1)


# ----------------------------------------------------------------------- broken inputs
def tree_digest(path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def expect_clean_error(args, pattern):
    """The CLI as a user runs it, in a process of its own: exit 2, one `error:` line, no traceback."""
    result = cli(*args)
    err = result.stderr
    assert result.returncode == 2, (args, err)
    assert err.startswith("tlora-analysis: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    if pattern:
        assert pattern in err, err
    return err


@pytest.fixture()
def run_copy(tmp_path, trained):
    import shutil

    return lambda method: shutil.copytree(trained[method].path, tmp_path / f"{method}_copy")


def test_broken_inputs_give_one_line_errors_and_change_nothing(tmp_path, run_copy, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    expect_clean_error(["inspect", str(tmp_path / "missing")], "no such file or directory")
    expect_clean_error(["inspect", str(tmp_path / "empty")], "empty directory")

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    err = expect_clean_error(["inspect", str(pickled)], "pickle")
    assert "executes code" in err and "safetensors" in err
    expect_clean_error(["inspect", str(pickled / "adapter_model.bin")], "refusing to read a pickle")

    ia3 = tmp_path / "ia3"
    ia3.mkdir()
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    expect_clean_error(["inspect", str(ia3)], "adapter_model.safetensors: missing")
    save_file({"prompt_embeddings": torch.zeros(4, 8)}, str(ia3 / "adapter_model.safetensors"))
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    expect_clean_error(["inspect", str(ia3)], "a prompt tuning adapter (peft_type PROMPT_TUNING) has no ΔW to read")
    (ia3 / "adapter_config.json").write_text(json.dumps({"peft_type": "NOT_A_TYPE"}))
    expect_clean_error(["inspect", str(ia3)], "peft_type 'NOT_A_TYPE' is not one this tlora-analysis knows")

    adapter = tmp_path / "adapter"
    make_peft_adapter(adapter, tiny_model_dir, r=2, lora_alpha=4)
    (adapter / "adapter_config.json").write_text("{not json")
    expect_clean_error(["inspect", str(adapter)], "adapter_config.json: not valid JSON")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 4}))
    expect_clean_error(["inspect", str(adapter)], "missing field 'r'")

    run = run_copy("tlora")
    before = tree_digest(run)
    snapshot = run / "snapshots" / "epoch_002.safetensors"
    good = snapshot.read_bytes()
    snapshot.write_bytes(good[: len(good) // 2])
    expect_clean_error(["inspect", str(run)], "epoch_002.safetensors: not a readable safetensors file")
    tensors = load_file(str(snapshot.with_name("epoch_001.safetensors")))
    key = next(k for k in tensors if k.endswith("tlora_B"))
    broken = dict(tensors, **{key: torch.full_like(tensors[key], math.nan)})
    save_file(broken, str(snapshot))
    expect_clean_error(["inspect", str(run)], "holds NaN values")
    save_file(dict(tensors, **{key: torch.zeros(3, 3)}), str(snapshot))
    expect_clean_error(["inspect", str(run)], "has shape (3, 3), run.json implies (4, 4)")
    snapshot.write_bytes(good)

    meta = json.loads((run / "run.json").read_text())
    name = next(iter(meta["layers"]))
    meta["layers"][name]["frozen_sha256"]["tlora_A"] = "0" * 64
    (run / "run.json").write_text(json.dumps(meta))
    expect_clean_error(["inspect", str(run)], "does not match its recorded checksum")
    del meta["layers"][name]["seed"]
    (run / "run.json").write_text(json.dumps(meta))
    expect_clean_error(["inspect", str(run)], "missing field 'seed'")
    (run / "run.json").write_text("[1, 2]")
    expect_clean_error(["inspect", str(run)], "expected a JSON object")
    expect_clean_error(["inspect", str(run_copy("lora")), "--epoch", "9"], "no epoch 9")
    expect_clean_error(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")], "no such run directory")
    # the failing commands added or removed no file (the fuzz test below also checks contents)
    after = tree_digest(run)
    assert set(after) == set(before)


def test_fuzzed_snapshots_never_crash_or_hang(tmp_path, capsys, run_copy):
    run = run_copy("lora")
    snapshot = run / "snapshots" / "epoch_002.safetensors"
    good = snapshot.read_bytes()
    rng = random.Random(0)
    outcomes = {0: 0, 2: 0}
    for trial in range(60):
        data = bytearray(good)
        if trial % 2:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        snapshot.write_bytes(bytes(data))
        before = tree_digest(run)
        # In-process for speed (60 trials): an exception escaping main() is what a user would
        # see as a traceback, and it fails this test; a user error returns 2 with one line.
        code = main(["inspect", str(run)])
        err = capsys.readouterr().err
        assert code in (0, 2), (trial, err)
        assert code == 0 or (err.startswith("tlora-analysis: error: ") and err.count("\n") == 1), err
        assert tree_digest(run) == before
        outcomes[code] += 1
    assert outcomes[2] > 30  # truncations and most header flips are caught


def test_cli_user_errors_exit_2_without_traceback_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tlora_analysis", "inspect", str(tmp_path / "nothing")], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"tlora-analysis: error: {tmp_path / 'nothing'}: no such file or directory"
