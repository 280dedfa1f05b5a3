"""Studies: the spec, the grid, resumable execution through local processes and submitit, and analysis over seeds."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from helpers import ENV, HANG_GUARD_S, cli, expect_error, make_run, tree_digest
from tlora_analysis import analysis as A
from tlora_analysis.analysis.seed_statistics import aggregate
from tlora_analysis.methods import METHOD_SPECS
from tlora_analysis.store import load_run
from tlora_analysis.study import Executor, load_study, parse_spec, run_study

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def spec_for(model_dir, **extra):
    """A 2 x 2 x 2 grid (method x rank x seed) on a tiny BERT and a handful of examples."""
    return {"method": ["lora", "tlora"], "rank": [2, 4], "seed": [0, 1], "model": model_dir, "epochs": 2, "batch_size": 8,
            "max_train_samples": 16, "max_eval_samples": 8, **extra}


def write_spec(path, spec):
    lines = []
    for key, value in spec.items():
        lines.append(f"{key} = {json.dumps(value)}" if not isinstance(value, dict) else
                     f"{key} = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in value.items())} }}")
    path.write_text("\n".join(lines) + "\n")
    return path


def final_tensors(study_dir):
    study = load_study(study_dir)
    out = {}
    for name in study.cells:
        run = load_run(study.run_dir(name))
        out[name] = (run.epochs, run.snapshot_tensors(run.epochs[-1]))
    return out


def assert_same_results(a, b):
    """Every cell of ``b`` equal to its namesake in ``a`` (the reference may hold more cells)."""
    assert b.keys() and b.keys() <= a.keys()
    for name in b:
        assert a[name][0] == b[name][0], name
        for key, tensor in a[name][1].items():
            torch.testing.assert_close(b[name][1][key], tensor, rtol=0, atol=1e-6, msg=f"{name} {key}")


def test_grid_names_and_per_method_values():
    spec = parse_spec({"method": ["lora", "tlora", "head"], "seed": [0, 1], "rank": 8, "lr": {"lora": 1e-3, "tlora": [1e-2, 3e-2]}})
    cells = spec.cells()
    assert list(cells) == ["lora-lr1e-3-s0", "lora-lr1e-3-s1", "tlora-lr1e-2-s0", "tlora-lr1e-2-s1", "tlora-lr3e-2-s0",
                           "tlora-lr3e-2-s1", "head-s0", "head-s1"]
    assert cells["tlora-lr3e-2-s1"] == {"method": "tlora", "lr": 0.03, "seed": 1}
    assert spec.config(cells["head-s0"]).lr == METHOD_SPECS["head"].default_lr and spec.config(cells["lora-lr1e-3-s0"]).rank == 8
    # a list of strings is one value of targets; a list of lists sweeps it
    assert parse_spec({"method": "lora", "targets": ["query", "value"]}).fixed["targets"] == ["query", "value"]
    assert list(parse_spec({"method": "lora", "targets": [["query"], ["query", "value"]]}).cells()) == ["lora-tquery", "lora-tquery+value"]


@pytest.mark.parametrize("text, fragments", [
    ("method = [\"lora\"\nrank = 4\n", ["not valid TOML", "line"]),
    ("method = \"lora\"\nranks = [4]\n", ["unknown key 'ranks'", "allowed keys are", "rank"]),
    ("method = \"lora\"\nseed = []\n", ["'seed' is an empty list", "grid is empty"]),
    ("method = [\"lora\"]\nlr = { tlora = 1e-2 }\n", ["'lr'", "method 'tlora'", "not in the grid"]),
    ("method = [\"lora\"]\nrank = [4, 0]\n", ["cell lora-r0", "--rank must be a whole number of at least 1"]),
])
def test_bad_specs_give_one_line_and_write_nothing(tmp_path, text, fragments):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    before = tree_digest(tmp_path)
    expect_error(cli("study", spec, "--out", tmp_path / "study", "--no-progress"), *fragments)
    assert tree_digest(tmp_path) == before and not (tmp_path / "study").exists()


def test_slurm_executor_without_slurm_is_refused_before_the_study_directory_is_made(tmp_path, tiny_model_dir):
    spec = write_spec(tmp_path / "spec.toml", spec_for(tiny_model_dir))
    before = tree_digest(tmp_path)
    env_path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if not (os.path.isdir(p) and "sbatch" in os.listdir(p)))
    result = subprocess.run([sys.executable, "-m", "tlora_analysis", "study", spec, "--out", tmp_path / "study", "--executor", "slurm",
                             "--no-progress"], env={**ENV, "PATH": env_path}, capture_output=True, text=True, timeout=HANG_GUARD_S)
    expect_error(result, "--executor slurm", "no sbatch")
    assert tree_digest(tmp_path) == before and not (tmp_path / "study").exists()


def _kill_midway(command, study_dir, env):
    """Start a study in its own process group and SIGKILL the group once some cell has finished an epoch."""
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD_S
    while time.time() < deadline:
        snapshots = list((study_dir / "runs").glob("*/snapshots/epoch_001.safetensors")) if (study_dir / "runs").exists() else []
        if snapshots:
            break
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return load_study(study_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("study") / "reference"
    study = run_study(spec_for(tiny_model_dir), out, executor=Executor(jobs=2), progress=False, log=lambda _: None)
    assert (study.runs.status == "finished").all()
    return out


def test_local_study_killed_midway_resumes_to_the_same_results(tmp_path, tiny_model_dir, reference):
    spec = write_spec(tmp_path / "spec.toml", spec_for(tiny_model_dir, rank=[2]))  # the reference's rank-2 cells
    out = tmp_path / "study"
    command = [sys.executable, "-m", "tlora_analysis", "study", str(spec), "--out", str(out), "--jobs", "2", "--no-progress"]
    killed = _kill_midway(command, out, ENV)
    assert (killed.runs.status != "finished").any(), "the study should have been killed before it finished"
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_results(final_tensors(reference), final_tensors(out))
    meta = json.loads((out / "study.json").read_text())
    assert {c["status"] for c in meta["cells"].values()} == {"finished"}


def test_submitit_local_executor_killed_midway_resumes_to_the_same_results(tmp_path, tiny_model_dir, reference):
    pytest.importorskip("submitit")
    spec = write_spec(tmp_path / "spec.toml", spec_for(tiny_model_dir, rank=[2]))
    out = tmp_path / "study"
    command = [sys.executable, "-m", "tlora_analysis", "study", str(spec), "--out", str(out), "--jobs", "2",
               "--executor", "submitit-local", "--no-progress"]
    _kill_midway(command, out, ENV)
    study = run_study(spec, out, executor=Executor(executor="submitit-local", jobs=2), progress=False, log=lambda _: None)
    assert (study.runs.status == "finished").all()
    assert_same_results(final_tensors(reference), final_tensors(out))
    assert list((out / "logs" / "submitit").glob("*_log.err")), "submitit's own logs are kept beside the study"


def test_rerun_reuses_and_a_changed_spec_is_refused_unless_it_extends(tmp_path, tiny_model_dir, reference):
    before = tree_digest(reference / "runs")
    study = run_study(spec_for(tiny_model_dir), reference, progress=False, log=lambda _: None)
    assert tree_digest(reference / "runs") == before and len(study.runs) == 8
    spec = write_spec(tmp_path / "spec.toml", spec_for(tiny_model_dir, rank=[2, 4, 6]))
    expect_error(cli("study", spec, "--out", reference, "--no-progress"), "another spec", "rank: [2, 4] -> [2, 4, 6]", "--extend")
    shrunk = write_spec(tmp_path / "shrunk.toml", spec_for(tiny_model_dir, rank=[2]))
    expect_error(cli("study", shrunk, "--out", reference, "--extend", "--no-progress"), "may only add cells", "drops cell")
    assert tree_digest(reference / "runs") == before


def test_a_failed_cell_is_reported_and_the_rest_finish(tmp_path, tiny_model_dir):
    spec = spec_for(tiny_model_dir, rank=2, seed=0, targets={"lora": ["query"], "tlora": ["nope"]})
    lines = []
    study = run_study(spec, tmp_path / "study", progress=False, log=lines.append)
    runs = study.runs.set_index("run")
    assert runs.status.to_dict() == {"lora-tquery": "finished", "tlora-tnope": "failed"}
    assert "nope" in (tmp_path / "study" / "logs" / "tlora-tnope.log").read_text()
    assert any("FAILED" in line and "tlora-tnope.log" in line for line in lines)
    assert load_run(study.run_dir("lora-tquery")).epochs == [0, 1, 2]


def test_study_table_and_analyses_carry_the_settings(reference):
    study = load_study(reference)
    runs = study.runs
    assert list(runs.columns[:4]) == ["run", "method", "rank", "seed"]
    assert (runs.adapter_params[runs.method == "tlora"] == [4 * (2 * 2 + 1)] * 2 + [4 * (4 * 4 + 1)] * 2).all()  # 2 layers x q, v
    norms = A.norms(study)
    assert {"rank", "seed"} <= set(norms.columns) and norms.run.nunique() == 8
    one = A.norms(study.run("tlora-r4-s1"))
    pd.testing.assert_frame_equal(norms[norms.run == "tlora-r4-s1"].drop(columns=["rank", "seed"]).dropna(axis=1, how="all").reset_index(drop=True), one, check_like=True)
    listed = A.spectra([study.run("lora-r2-s0"), study.run("lora-r4-s0")])
    assert set(listed["rank"]) == {2, 4} and "seed" not in listed.columns  # only what differs between the listed runs


def test_aggregate_matches_scipy_bootstrap_and_numpy():
    rng = np.random.default_rng(1)
    table = pd.DataFrame({"method": np.repeat(["lora", "tlora"], 15), "layer": np.tile(np.repeat([0, 1, 2], 5), 2),
                          "seed": np.tile(range(5), 6), "run": [f"r{i}" for i in range(30)], "x": rng.normal(size=30)})
    agg = aggregate(table, resamples=2000)
    assert list(agg.columns) == ["method", "layer", "quantity", "mean", "std", "n", "ci_low", "ci_high"] and len(agg) == 6
    for row in agg.itertuples():
        values = table[(table.method == row.method) & (table.layer == row.layer)].sort_values("seed").x.to_numpy()
        assert row.mean == pytest.approx(values.mean()) and row.std == pytest.approx(values.std(ddof=1)) and row.n == 5
        ci = stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", random_state=np.random.default_rng(0)).confidence_interval
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    one = aggregate(table[table.seed == 0])
    assert one.n.eq(1).all() and one.ci_low.isna().all()


def test_controls_and_claims_over_seeds(tmp_path):
    for method in ("lora", "tlora"):
        for seed in (0, 1, 2):
            make_run(tmp_path / "runs" / f"{method}-s{seed}", method, seed=seed)
    spec = {"method": ["lora", "tlora"], "seed": [0, 1, 2]}
    (tmp_path / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    for name in load_study(tmp_path).cells:  # make_run records toy runs as finished
        assert load_study(tmp_path).status(name) == "finished"
    study = load_study(tmp_path)
    controls = A.similarity_controls(study, baseline_samples=4)
    kinds = controls.groupby("kind")[["run_a", "run_b"]].apply(lambda g: sorted(set(zip(g.run_a, g.run_b))))
    assert kinds["same method, other seed"] == sorted([("lora-s0", "lora-s1"), ("lora-s0", "lora-s2"), ("lora-s1", "lora-s2"),
                                                       ("tlora-s0", "tlora-s1"), ("tlora-s0", "tlora-s2"), ("tlora-s1", "tlora-s2")])
    assert kinds["other method, same seed"] == [("lora-s0", "tlora-s0"), ("lora-s1", "tlora-s1"), ("lora-s2", "tlora-s2")]
    row = controls[(controls.run_a == "lora-s0") & (controls.run_b == "lora-s1")].iloc[0]
    a, b = study.run("lora-s0").deltas(3)[row["name"]], study.run("lora-s1").deltas(3)[row["name"]]
    ua = np.linalg.svd(a.dense(torch.float64).numpy())[0][:, :4]
    ub = np.linalg.svd(b.dense(torch.float64).numpy())[0][:, :4]
    assert row.phi == pytest.approx(np.linalg.norm(ua.T @ ub) ** 2 / 4, rel=1e-8)
    per_seed = A.study_claims(study, controls=controls)
    assert sorted(per_seed.seed.unique()) == [0, 1, 2]
    summary = A.summarize_claims(per_seed)
    headline = summary[summary.headline & (summary.finding == 5)].iloc[0]
    values = per_seed[per_seed.headline & (per_seed.finding == 5)].value
    assert headline["mean"] == pytest.approx(values.mean())
    k = int(per_seed[per_seed.headline & (per_seed.finding == 5)].holds.sum())
    assert headline.holds_in == f"{k}/3"
    seed_rows = per_seed[per_seed.reading.str.startswith("against the same-method control")]
    assert len(seed_rows) == 3 and seed_rows.reason.str.len().gt(0).all()  # read from the study's own LoRA seed pairs


def test_figures_report_and_analyze_take_a_study_directory(tmp_path, reference):
    from tlora_analysis.figures import STUDY_FIGURES
    from tlora_analysis.report import verdict_classes

    result = cli("figures", reference, "--out", tmp_path / "figs", "--formats", "png", timeout=HANG_GUARD_S)  # PDFs: test_any_sources
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((tmp_path / "figs" / "figures.json").read_text())
    drawn = {e["name"] for e in manifest["figures"]}
    # seed bands, controls, verdict map, the ladder and ranks, and the seed-0 pair; one learning rate per method draws no sweep
    assert set(STUDY_FIGURES) - {"study_learning_rates"} <= drawn and "overview" in drawn
    assert {e["name"]: e["reason"] for e in manifest["skipped"]}["study_learning_rates"] == "no method was run at two or more learning rates"
    result = cli("report", reference, "--out", tmp_path / "figs" / "report.html", timeout=HANG_GUARD_S)  # computed afresh: test_reuse_and_studies
    assert result.returncode == 0 and "reusing the tables and figures" in result.stdout, result.stderr[-2000:]
    page = (tmp_path / "figs" / "report.html").read_text()
    assert "Claims audit" in page and "mean [95% CI] over seeds" in page and "Verdict map" in page and "Controls" in page
    claims = pd.read_csv(tmp_path / "figs" / "report.claims.csv")
    assert set(claims.tlora_group) == {"method=tlora rank=2", "method=tlora rank=4"}
    assert claims.holds_in.str.fullmatch(r"\d/2|—").all()
    classes = verdict_classes(claims)
    assert sum(len(v) for v in classes.values()) == claims.reading.nunique()
    result = cli("analyze", reference, "--out", tmp_path / "tables", "--no-base", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"runs.csv", "norms_over_seeds.csv", "controls.csv", "claims.csv", "claims_per_seed.csv"} <= {p.name for p in (tmp_path / "tables").iterdir()}


def test_a_finished_cell_whose_default_changed_is_not_reused(tmp_path, tiny_model_dir, monkeypatch):
    """A spec without an lr takes each method's default: when a default changes, the finished cells
    trained at the old one are refused by name instead of reused as if they were new."""
    import dataclasses

    from helpers import tree_digest
    from tlora_analysis.errors import InputError
    from tlora_analysis.methods import METHOD_SPECS

    spec = {"method": ["lora"], "seed": [0], "model": tiny_model_dir, "epochs": 1, "batch_size": 8, "max_train_samples": 16,
            "max_eval_samples": 8}
    run_study(spec, tmp_path / "study", progress=False, log=lambda _: None)
    before, trained_at = tree_digest(tmp_path / "study"), METHOD_SPECS["lora"].default_lr
    monkeypatch.setitem(METHOD_SPECS, "lora", dataclasses.replace(METHOD_SPECS["lora"], default_lr=0.5))
    with pytest.raises(InputError, match=rf"cell lora-s0 was trained with lr {trained_at!r}, the spec now gives 0.5"):
        run_study(spec, tmp_path / "study", progress=False, log=lambda _: None)
    assert tree_digest(tmp_path / "study") == before


def test_figures_runs_only_reads_no_update_and_keeps_the_accuracies(tmp_path, reference, monkeypatch):
    """A learning-rate sweep's figures need the cells' metrics alone: --runs-only rebuilds no update (the study
    still checks each cell's files) and its results.json gives the same accuracies as the full figures."""
    from tlora_analysis.store.peft_run import PeftRun
    from tlora_analysis.store.run import Run

    result = cli("figures", reference, "--out", tmp_path / "full", "--formats", "png", "--no-base", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    result = cli("figures", reference, "--out", tmp_path / "runs", "--formats", "png", "--runs-only", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    full, runs_only = (json.loads((tmp_path / d / "results.json").read_text())["methods"] for d in ("full", "runs"))
    assert {k: v["per_seed"] for k, v in runs_only.items()} == {k: v["per_seed"] for k, v in full.items()}
    drawn = {e["name"] for e in json.loads((tmp_path / "runs" / "figures.json").read_text())["figures"]}
    assert "study_metric" in drawn and "overview" not in drawn

    def no_update(*_):
        raise AssertionError("--runs-only rebuilt an update")

    for reader in (Run, PeftRun):
        monkeypatch.setattr(reader, "deltas", no_update)
    from tlora_analysis.analysis.compare import compare_study

    assert set(compare_study(load_study(reference), runs_only=True)) == {"runs", "metrics", "runs_over_seeds", "metrics_over_seeds"}


def test_a_study_keeps_only_the_recently_read_runs_tensors(reference, monkeypatch):
    """Memory stays bounded over many cells: beyond KEPT_RUNS, the runs read longest ago drop their cached
    tensors, and what is computed is the same as with every run's tensors kept."""
    from tlora_analysis.analysis import table_cache
    from tlora_analysis.store import run as run_store

    monkeypatch.setattr(table_cache, "cache_for", lambda run: None)  # every cell read, none answered from stored tables
    kept = A.norms(load_study(reference))
    monkeypatch.setattr(run_store, "KEPT_RUNS", 2)
    study = load_study(reference)
    bounded = A.norms(study)
    pd.testing.assert_frame_equal(bounded, kept)
    holding = [r() for r in run_store._recent.values() if r() is not None and r()._last_snapshot[0] is not None]
    assert 1 <= len(holding) <= 2 < len(study.cells)
