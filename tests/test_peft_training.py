"""Methods trained through peft itself: ``train --method loha`` and friends, ``--method peft --peft-config``,
recorded by the same recorder as a Trainer's peft model, resumed, exported and restored exactly."""

from __future__ import annotations

import json

import peft
import pytest
import torch

from helpers import HANG_GUARD_S, cli, expect_error
from tlora_analysis.checkpoints import inspect_checkpoint
from tlora_analysis.errors import InputError
from tlora_analysis.export import export
from tlora_analysis.methods import METHOD_SPECS
from tlora_analysis.models import load_model, load_tokenizer
from tlora_analysis.store import PeftRun, load_run
from tlora_analysis.training import TrainConfig, restore_model, resume, train

SMALL = dict(epochs=2, max_train_samples=32, max_eval_samples=16, batch_size=16, max_length=24)
QUIET = dict(progress=False, log=lambda _: None)


def logits(model, model_dir):
    batch = load_tokenizer(model_dir)(["although the plot is dull, the cast is superb.", "a boring film."], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("method", ["dora", "loha", "adalora", "ia3"])
def test_a_peft_method_trains_records_exports_and_restores(tmp_path, tiny_model_dir, method):
    run = train(TrainConfig(method=method, model=tiny_model_dir, **SMALL), tmp_path / "run", **QUIET)
    assert isinstance(run, PeftRun) and run.method == method and run.epochs == [0, 1, 2]
    assert all(d.frobenius_norm() < 1e-6 for d in run.deltas(0).values())
    assert all(d.frobenius_norm() > 0 for d in run.deltas(2).values())
    settings = {k: v for k, v in run.peft_config.items() if k in METHOD_SPECS[method].peft}
    assert settings.items() <= {**METHOD_SPECS[method].peft_settings(8, None, 4), "peft_type": settings["peft_type"]}.items()
    restored = restore_model(run)
    out = export(run.path, tmp_path / "export")
    reloaded = peft.PeftModel.from_pretrained(load_model(tiny_model_dir), out).eval()
    torch.testing.assert_close(logits(reloaded, tiny_model_dir), logits(restored, tiny_model_dir), rtol=1e-4, atol=1e-5)
    exported = inspect_checkpoint(out, base=tiny_model_dir).set_index("name")
    recorded = inspect_checkpoint(run.path).set_index("name")
    torch.testing.assert_close(torch.tensor(exported.frobenius.values), torch.tensor(recorded.frobenius.values), rtol=1e-5, atol=1e-9)
    before = {name: d.frobenius_norm() for name, d in run.deltas(2).items()}
    if method in ("ia3", "dora"):  # read with W0
        assert run._context._engine is not None or run._context._weights is not None
    run.release()  # a study releases cells it is not reading: peft's model on the base goes with them (IA³ is read through it)
    assert run._context._engine is None and run._context._weights is None
    assert {name: d.frobenius_norm() for name, d in run.deltas(2).items()} == before


def test_adalora_allocates_its_ranks_and_its_snapshots_keep_the_update_it_trains_with(tmp_path, tiny_model_dir):
    run = train(TrainConfig(method="adalora", model=tiny_model_dir, **SMALL), tmp_path / "run", **QUIET)
    final = run.trainable(2)
    assert all(t["E"].numel() == 12 for t in final.values())  # init_r: whole, not cut to the kept ranks
    assert any(int((t["E"] == 0).sum()) > 0 for t in final.values())  # the allocation masked some of them


def test_any_peft_config_trains_with_method_peft(tmp_path, tiny_model_dir):
    config = tmp_path / "c3a.json"
    config.write_text(json.dumps({"peft_type": "C3A", "block_size": 8, "target_modules": ["query"]}))
    run = train(TrainConfig(method="peft", peft_config=str(config), model=tiny_model_dir, **SMALL), tmp_path / "run", **QUIET)
    assert run.method == "c3a" and len(run.layers) == 2 and {r["form"] for r in run.layers.values()} == {"dense"}
    assert all(d.frobenius_norm() > 0 for d in run.deltas(2).values())
    resumed = resume(run.path, epochs=3, **QUIET)
    assert resumed.epochs == [0, 1, 2, 3]
    expect_error(cli("train", "--method", "peft", "--model", tiny_model_dir, "--out", tmp_path / "x"), "--method peft trains the config")
    config.write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(InputError, match="a prefix tuning adapter has no ΔW to record"):
        TrainConfig(method="peft", peft_config=str(config))


def test_a_peft_run_resumes_exactly(tmp_path, tiny_model_dir):
    whole = train(TrainConfig(method="loha", model=tiny_model_dir, **SMALL), tmp_path / "whole", **QUIET)
    train(TrainConfig(method="loha", model=tiny_model_dir, **{**SMALL, "epochs": 1}), tmp_path / "split", **QUIET)
    split = resume(tmp_path / "split", epochs=2, **QUIET)
    for name, delta in whole.deltas(2).items():
        torch.testing.assert_close(split.deltas(2)[name].dense(), delta.dense(), rtol=1e-6, atol=1e-8)


def test_a_study_sweeps_peft_methods_beside_our_own(tmp_path, tiny_model_dir):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'method = ["lora", "hra"]\nseed = 0\nmodel = "{tiny_model_dir}"\nepochs = 1\nmax_train_samples = 16\n'
                    f'max_eval_samples = 8\nmax_length = 16\nlr = {{ hra = 1e-2 }}\n')
    result = cli("study", spec, "--out", tmp_path / "study", "--jobs", "1", "--no-progress", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
    cells = sorted(p.name for p in (tmp_path / "study" / "runs").iterdir())
    assert cells == ["hra-lr1e-2", "lora"] and load_run(tmp_path / "study" / "runs" / "hra-lr1e-2").method == "hra"
    result = cli("analyze", tmp_path / "study", "--out", tmp_path / "tables", "--no-base", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr
