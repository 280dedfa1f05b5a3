"""The third hostile campaign's 17 defect classes, one test (or more) each: every case ends in a correct result or
in one line with exit 2, in bounded time and memory, with nothing already written changed or lost."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from helpers import HANG_GUARD_S, cli, expect_error, tree_digest
from tlora_analysis.errors import InputError
from tlora_analysis.store import load_run

LIMITS = dict(timeout=HANG_GUARD_S, memory_mb=3000)


def refused(args, watched, *fragments):
    before = tree_digest(*watched)
    err = expect_error(cli(*args, **LIMITS), *fragments)
    assert tree_digest(*watched) == before
    return err


def lora_adapter(folder, tensors, **config):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, **config}))
    return folder


# --------------------------------------------------------------------------- 1. readers that trust sizes
@pytest.mark.parametrize("tensors, config, fragment", [
    ({"base_model.model.m.lora_A.weight": torch.zeros(70000, 1), "base_model.model.m.lora_B.weight": torch.zeros(1, 70000)},
     {"r": 70000}, "the rank must be from 1 to 65,536"),
    ({"base_model.model.m.lora_A.weight": torch.zeros(0, 8), "base_model.model.m.lora_B.weight": torch.zeros(8, 0)},
     {"r": 1}, "the rank must be from 1"),
    ({"base_model.model.m.lora_A.weight": torch.zeros(2, 8), "base_model.model.m.lora_B.weight": torch.zeros(0, 2)},
     {"r": 2}, "for a 0x8 layer"),
], ids=["r beyond any model", "zero rank", "zero d_out"])
def test_sizes_are_checked_against_the_layer(tmp_path, tensors, config, fragment):
    refused(["inspect", lora_adapter(tmp_path / "a", tensors, **config)], [tmp_path], fragment)


def test_a_rank_beyond_the_layer_is_read_with_memory_that_follows_the_layer(tmp_path):
    """r = 30000 on a 1 x 1 layer is a valid factorisation (#38: r above min(d_out, d_in) is what peft builds on a
    2-label head); it is read with memory of the layer's size, never an r x r core (7 GB in float64)."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(30000, 1, generator=generator), torch.randn(1, 30000, generator=generator)
    folder = lora_adapter(tmp_path / "a", {"base_model.model.m.lora_A.weight": a, "base_model.model.m.lora_B.weight": b},
                          r=30000, lora_alpha=30000)
    result = cli("inspect", folder, memory_mb=3000)
    assert result.returncode == 0, result.stderr[-1500:]
    assert f"{abs(float(b.double() @ a.double())):.4g}"[:4] in result.stdout


def test_a_vera_rank_of_a_million_is_refused_before_any_allocation(tmp_path):
    folder = tmp_path / "vera"
    folder.mkdir()
    module = "base_model.model.bert.encoder.layer.0.attention.self.query"
    save_file({f"{module}.vera_lambda_d": torch.zeros(10**6), f"{module}.vera_lambda_b": torch.zeros(384)},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "VERA", "r": 10**6, "save_projection": False}))
    refused(["inspect", folder, "--base", "default"], [tmp_path], "exceeds")


def test_a_rank_pattern_of_a_hundred_thousand_keys_is_refused_at_once(tmp_path):
    tensors = {"base_model.model.m.lora_A.weight": torch.zeros(4, 8), "base_model.model.m.lora_B.weight": torch.zeros(8, 4)}
    pattern = {f"x{i}(a|b)*c": 4 for i in range(10**5)}
    refused(["inspect", lora_adapter(tmp_path / "a", tensors, rank_pattern=pattern)], [tmp_path], "100,000 keys")


# --------------------------------------------------------------------------- 2. float8
def test_float8_snapshots_read_upcast(tmp_path, toy_runs):
    run = shutil.copytree(toy_runs / "lora", tmp_path / "lora")
    snapshot = run / "snapshots" / "epoch_002.safetensors"
    save_file({k: v.to(torch.float8_e5m2) for k, v in load_file(str(snapshot)).items()}, str(snapshot))
    result = cli("inspect", run, **LIMITS)
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- 3. several dense layers per block
@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory, tiny_model_dir):
    from tlora_analysis.training import TrainConfig, train

    root = tmp_path_factory.mktemp("dense")
    for method in ("lora", "tlora"):
        train(TrainConfig(method=method, model=tiny_model_dir, targets=["dense"], epochs=1, max_train_samples=16, max_eval_samples=8,
                          max_length=16), root / method, progress=False, log=lambda _: None)
    return root


def test_figures_and_report_key_modules_by_their_path_in_the_block(tmp_path, dense_runs):
    run = load_run(dense_runs / "lora")
    from tlora_analysis.analysis import norms

    assert {"attention.output.dense", "intermediate.dense", "output.dense"} <= set(norms(run).module)
    result = cli("report", dense_runs / "lora", dense_runs / "tlora", "--out", tmp_path / "r" / "report.html", **LIMITS)
    assert result.returncode == 0, result.stderr[-3000:]


# --------------------------------------------------------------------------- 4. labels drawn literally, file names safe
def test_labels_are_drawn_literally_whatever_their_length(tmp_path, toy_runs):
    long = "x" * 300
    result = cli("figures", f"$\\frac{{a}}{{b$={toy_runs / 'lora'}", f"{long}={toy_runs / 'tlora'}", "--out", tmp_path / "f",
                 "--no-base", "--formats", "png", **LIMITS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(len(p.name) < 255 for p in (tmp_path / "f").rglob("*"))


# --------------------------------------------------------------------------- 5. zero updates
def test_zero_updates_are_drawn_or_skipped_and_their_ratios_undefined(tmp_path, toy_runs):
    zero = {}
    for method in ("lora", "tlora"):
        zero[method] = tmp_path / method
        shutil.copytree(toy_runs / method, zero[method])
    result = cli("figures", zero["lora"] / "snapshots" / "epoch_000.safetensors", zero["tlora"] / "snapshots" / "epoch_000.safetensors",
                 "--out", tmp_path / "f", "--no-base", "--formats", "png", **LIMITS)
    assert result.returncode == 0, result.stderr[-3000:]
    result = cli("report", zero["lora"] / "snapshots" / "epoch_000.safetensors", zero["tlora"] / "snapshots" / "epoch_000.safetensors",
                 "--out", tmp_path / "r.html", "--no-base", **LIMITS)
    assert result.returncode == 0, result.stderr[-3000:]
    claims = json.loads((tmp_path / "r.claims.json").read_text())
    ratio = next(c for c in claims if c["reading"].startswith("ratio of mean Frobenius"))
    assert ratio["holds"] is None and "undefined" in ratio["reason"]


def test_an_adapter_beside_a_run_meets_its_last_epoch_in_the_claims(tmp_path, toy_runs):
    from tlora_analysis.analysis import compare_runs, paper_claims
    from tlora_analysis.export import export

    adapter = export(toy_runs / "lora", tmp_path / "export")  # the run's last epoch, as a one-state peft adapter
    lora_adapter_only = tmp_path / "peft"
    lora_adapter_only.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(adapter / name, lora_adapter_only / name)
    claims = paper_claims(compare_runs([lora_adapter_only, toy_runs / "tlora"]))
    reference = paper_claims(compare_runs([toy_runs / "lora", toy_runs / "tlora"]))
    ratio = "ratio of mean Frobenius norms ‖ΔW‖_F, TLoRA / LoRA"
    assert claims.set_index("reading").value[ratio] == pytest.approx(reference.set_index("reading").value[ratio], rel=1e-6)


# --------------------------------------------------------------------------- 6. report reuses only what was made for it
def test_report_recomputes_what_figures_left_unless_it_was_made_for_these_sources(tmp_path, toy_runs):
    out = tmp_path / "f"
    sources = [f"NA={toy_runs / 'lora'}", f"nan={toy_runs / 'tlora'}"]
    assert cli("figures", *sources, "--out", out, "--no-base", "--formats", "png", **LIMITS).returncode == 0
    assert cli("report", *sources, "--out", out / "report.html", "--no-base", **LIMITS).returncode == 0
    assert "NA" in (out / "report.html").read_text()
    made = shutil.copytree(out, tmp_path / "made")  # each damage to a fresh copy of what figures wrote
    for damage in (lambda: (out / "figures.json").write_text("{not json"), lambda: (out / "tables" / "norms.csv").unlink(),
                   lambda: (out / "tables" / "norms.csv").write_text(""), lambda: (out / "tables" / "spectra.csv").write_text("a,b\n1,2\n")):
        shutil.rmtree(out)
        shutil.copytree(made, out)
        damage()
        result = cli("report", *sources, "--out", out / "report.html", "--no-base", **LIMITS)
        assert result.returncode == 0 and "reusing" not in result.stdout, result.stderr[-3000:]
    other = cli("report", f"NA={toy_runs / 'tlora'}", f"nan={toy_runs / 'lora'}", "--out", out / "report.html", "--no-base", **LIMITS)
    assert other.returncode == 0 and "reusing" not in other.stdout


# --------------------------------------------------------------------------- 7. run.json validated as adapter configs are
@pytest.mark.parametrize("change, fragment", [
    (lambda m: m["epochs"][1].update(metrics=[1, 2]), "'metrics' should be a JSON object"),
    (lambda m: m["epochs"][1].update(metrics={"accuracy": "high"}), "metric 'accuracy' should be a number"),
    (lambda m: m.update(parameter_counts=7), "'parameter_counts' should be a JSON object"),
    (lambda m: m.update(rank="eight"), "'rank' should be a whole number"),
    (lambda m: m.update(rank=10**9), "'rank' should be a whole number"),
])
def test_run_json_fields_are_checked(tmp_path, toy_runs, change, fragment):
    run = shutil.copytree(toy_runs / "lora", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    change(meta)
    (run / "run.json").write_text(json.dumps(meta))
    refused(["inspect", run], [tmp_path], fragment)
    refused(["export", run, "--out", tmp_path / "x"], [tmp_path], fragment)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "peft_type", "init_lora_weights", "use_dora"]),
       value=JSON)
def test_any_adapter_config_value_is_read_or_refused_in_one_line(tmp_path_factory, key, value):
    from tlora_analysis.sources import open_updates

    folder = tmp_path_factory.mktemp("cfg")
    tensors = {"base_model.model.l.0.m.lora_A.weight": torch.ones(4, 8), "base_model.model.l.0.m.lora_B.weight": torch.ones(8, 4)}
    lora_adapter(folder, tensors, **{key: value})
    try:
        source = open_updates(folder)
        assert all(d.frobenius_norm() >= 0 for d in source.deltas().values())
    except InputError as err:
        assert "\n" not in str(err).strip()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["rank", "method", "layers", "epochs", "parameter_counts", "model", "format_version"]), value=JSON)
def test_any_run_json_value_is_read_or_refused_in_one_line(tmp_path_factory, toy_runs, key, value):
    from tlora_analysis.analysis import norms

    run = shutil.copytree(toy_runs / "lora", tmp_path_factory.mktemp("run") / "run")
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, key: value}))
    try:
        norms(load_run(run))
    except InputError as err:
        assert "\n" not in str(err).strip()


# --------------------------------------------------------------------------- 10. names in files are never fetched
def test_exporting_a_full_fine_tune_never_fetches_a_model_named_in_run_json(tmp_path, tiny_model_dir):
    from tlora_analysis.training import TrainConfig, train

    run = train(TrainConfig(method="full", model=tiny_model_dir, epochs=1, max_train_samples=8, max_eval_samples=8, max_length=16),
                tmp_path / "run", progress=False, log=lambda _: None)
    meta = json.loads((run.path / "run.json").read_text())
    (run.path / "run.json").write_text(json.dumps({**meta, "model": "attacker/repo"}))
    refused(["export", run.path, "--out", tmp_path / "x"], [tmp_path], "never fetched")


# --------------------------------------------------------------------------- 12. outputs never inside a source
@pytest.mark.parametrize("make_args, fragment", [
    (lambda run, tmp: ["report", run, "--out", run / "run.json"], "inside the source"),
    (lambda run, tmp: ["report", run, "--out", run / "new.html"], "inside the source"),
    (lambda run, tmp: ["report", run, "--out", "."], "a directory"),
    (lambda run, tmp: ["report", run, "--out", "/"], "a directory"),
    (lambda run, tmp: ["figures", run, "--out", run / "figs", "--no-base"], "inside the source"),
    (lambda run, tmp: ["export", run, "--out", run / "snapshots" / "x"], "inside the source"),
    (lambda run, tmp: ["analyze", run, "--out", run, "--no-base"], "inside the source"),
])
def test_an_output_inside_or_equal_to_a_source_is_refused(tmp_path, toy_runs, make_args, fragment):
    run = shutil.copytree(toy_runs / "lora", tmp_path / "run")
    refused(make_args(run, tmp_path), [tmp_path], fragment)


def test_report_checks_that_it_can_write_before_any_work(tmp_path, toy_runs):
    (tmp_path / "a-file").write_text("not a folder")
    refused(["report", toy_runs / "lora", toy_runs / "tlora", "--out", tmp_path / "a-file" / "r.html", "--no-base"], [tmp_path],
            "cannot write there")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:  # root writes anywhere: the read-only folder is checked only as another user
        if not os.access(locked, os.W_OK):
            refused(["report", toy_runs / "lora", toy_runs / "tlora", "--out", locked / "r.html", "--no-base"], [tmp_path], "cannot write")
    finally:
        locked.chmod(stat.S_IRWXU)


# --------------------------------------------------------------------------- 13. a study reuses only readable cells
def test_a_study_rerun_retrains_a_cell_whose_snapshot_is_damaged(tmp_path, tiny_model_dir):
    spec = tmp_path / "spec.toml"
    spec.write_text(f'method = "lora"\nseed = [0, 1]\nmodel = "{tiny_model_dir}"\nepochs = 1\nmax_train_samples = 8\n'
                    'max_eval_samples = 8\nmax_length = 16\n')
    assert cli("study", spec, "--out", tmp_path / "s", "--jobs", "1", "--no-progress", timeout=HANG_GUARD_S).returncode == 0
    snapshot = tmp_path / "s" / "runs" / "lora-s0" / "snapshots" / "epoch_001.safetensors"
    snapshot.write_bytes(snapshot.read_bytes()[:100])
    (tmp_path / "s" / "runs" / "lora-s1" / "snapshots" / "epoch_000.safetensors").unlink()
    result = cli("study", spec, "--out", tmp_path / "s", "--jobs", "1", "--no-progress", timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "0 to run" not in result.stderr + result.stdout
    for cell in ("lora-s0", "lora-s1"):
        run = load_run(tmp_path / "s" / "runs" / cell)
        assert run.epochs == [0, 1] and run.deltas(1)


# --------------------------------------------------------------------------- 14. a failed export leaves nothing
def test_a_failed_export_leaves_no_directory_it_created(tmp_path, toy_runs):
    run = shutil.copytree(toy_runs / "lora", tmp_path / "run")
    (run / "snapshots" / "epoch_003.safetensors").write_bytes(b"broken")
    refused(["export", run, "--out", tmp_path / "a" / "b" / "c"], [tmp_path], "not a readable safetensors file")
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- 16. only regular files, at once
def test_a_fifo_among_a_sharded_bases_files_is_refused_before_it_is_opened(tmp_path, toy_runs):
    base = tmp_path / "base"
    base.mkdir()
    os.mkfifo(base / "model-00001-of-00001.safetensors")
    names = [f"layers.{i}.{m}.weight" for i in range(3) for m in ("query", "value")]
    (base / "model.safetensors.index.json").write_text(json.dumps({"weight_map": dict.fromkeys(names, "model-00001-of-00001.safetensors")}))
    (base / "config.json").write_text("{}")
    err = refused(["inspect", toy_runs / "lora", "--base", base], [tmp_path], "not a regular file")
    assert "model-00001-of-00001.safetensors" in err


# --------------------------------------------------------------------------- 17. equal runs, equal bytes
def test_equal_runs_write_byte_identical_snapshots(tmp_path, toy_runs):
    from helpers import make_run

    make_run(tmp_path / "again", "lora")
    for epoch in range(3):
        name = f"snapshots/epoch_00{epoch}.safetensors"
        assert (tmp_path / "again" / name).read_bytes() == (toy_runs / "lora" / name).read_bytes()
