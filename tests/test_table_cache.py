"""A study's per-cell tables are stored beside it and reused only while every input is the same (issue #39)."""

import json
import multiprocessing
import shutil

import pandas as pd
import pytest
import torch

from helpers import make_run
from tlora_analysis import analysis as A
from tlora_analysis.analysis import table_cache
from tlora_analysis.study import load_study


def make_study(root, seeds=(0, 1)):
    for method in ("lora", "tlora"):
        for seed in seeds:
            make_run(root / "runs" / f"{method}-s{seed}", method, seed=seed)
    spec = {"method": ["lora", "tlora"], "seed": list(seeds)}
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    return root


def counts(root):
    table_cache._cache_of.cache_clear()  # a new command: a new store object, the same folder
    study = load_study(root)
    tables = {"spectra": A.spectra(study), "norms": A.norms(study)}
    return tables, table_cache._cache_of(root.resolve())


def test_a_second_read_reuses_every_cells_tables_and_they_are_equal(tmp_path):
    root = make_study(tmp_path / "study")
    cold, store = counts(root)
    assert (store.hits, store.misses) == (0, 8)
    warm, store = counts(root)
    assert (store.hits, store.misses) == (8, 0)
    for name in cold:
        pd.testing.assert_frame_equal(cold[name], warm[name], check_exact=True)


def test_one_changed_snapshot_byte_recomputes_that_cell_only(tmp_path):
    root = make_study(tmp_path / "study")
    counts(root)
    snapshot = sorted((root / "runs" / "lora-s1" / "snapshots").glob("*.safetensors"))[-1]
    data = bytearray(snapshot.read_bytes())
    data[-3] ^= 1  # a value's low bit: still a readable file
    snapshot.write_bytes(bytes(data))
    tables, store = counts(root)
    assert (store.hits, store.misses) == (6, 2)


def test_a_tampered_entry_is_recomputed_not_trusted(tmp_path):
    root = make_study(tmp_path / "study")
    cold, _ = counts(root)
    entry = next((root / table_cache.CACHE_FOLDER / "norms").glob("*.parquet"))
    table = pd.read_parquet(entry)
    table["frobenius"] = 0.0
    table.to_parquet(entry, index=False)
    warm, store = counts(root)
    assert store.misses == 1
    pd.testing.assert_frame_equal(cold["norms"], warm["norms"], check_exact=True)


def test_other_code_or_other_w0_makes_other_keys(tmp_path, monkeypatch):
    root = make_study(tmp_path / "study", seeds=(0,))
    study = load_study(root)
    run = study.run("lora-s0")
    store = table_cache._cache_of(root.resolve())
    w0 = {name: torch.eye(*record["shape"]) for name, record in run.layers.items()}
    other = {name: 2 * w for name, w in w0.items()}
    key = store.key("amplification", run, (w0,), {})
    assert key == store.key("amplification", run, ({n: w.clone() for n, w in w0.items()},), {})
    assert key != store.key("amplification", run, (other,), {})
    assert key != store.key("amplification", run, (w0,), {"epochs": [1]})
    monkeypatch.setattr(table_cache, "code_version", lambda: "other code")
    assert key != store.key("amplification", run, (w0,), {})


def test_a_killed_write_leaves_no_entry_that_reads_as_whole(tmp_path, monkeypatch):
    root = make_study(tmp_path / "study", seeds=(0,))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(table_cache.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        counts(root)
    monkeypatch.undo()
    folder = root / table_cache.CACHE_FOLDER
    assert not list(folder.rglob("*.parquet")) and not list(folder.rglob("*.json"))
    _, store = counts(root)
    assert store.hits == 0


def _read(root):
    counts(root)


def test_two_commands_on_one_study_do_not_corrupt_it(tmp_path):
    root = make_study(tmp_path / "study")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_read, args=(root,)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    _, store = counts(root)
    assert (store.hits, store.misses) == (8, 0)


def test_cells_read_by_workers_give_the_tables_read_here_and_a_warm_read_starts_none(tmp_path, monkeypatch):
    """--jobs 2: workers compute and store each cell's tables, the command reads them from the store (its lookups are
    hits); the tables equal a one-process read exactly. W0 travels to the workers as files, not tensors."""
    from tlora_analysis.analysis.cell_workers import cell_workers
    from tlora_analysis.base_weights import SafetensorsWeights
    from tlora_analysis.models import default_model_path

    one = make_study(tmp_path / "one")
    sequential, store = counts(one)
    assert store.hits == 0
    two = make_study(tmp_path / "two")
    with cell_workers(2):
        parallel, store = counts(two)
    assert (store.hits, store.misses) == (8, 0)  # every cell's tables came from the workers through the store
    for name in sequential:
        pd.testing.assert_frame_equal(sequential[name], parallel[name], check_exact=True)
    started = []
    monkeypatch.setattr("tlora_analysis.analysis.cell_workers._Workers.get", lambda self: started.append(1))
    with cell_workers(2):
        counts(two)
    assert not started  # nothing left to compute: no worker starts
    weights = SafetensorsWeights(default_model_path(), ["encoder.layer.0.attention.self.query"])
    weights["encoder.layer.0.attention.self.query"]
    assert len(__import__("pickle").dumps(weights)) < 100_000  # the kept W0 stays here


def test_jobs_below_one_is_one_line(tmp_path):
    from helpers import cli

    root = make_study(tmp_path / "study")
    result = cli("figures", root, "--out", tmp_path / "f", "--no-base", "--jobs", "0")
    assert result.returncode == 2 and "--jobs" in result.stderr and "Traceback" not in result.stderr


def test_figures_with_jobs_writes_what_one_process_writes(tmp_path):
    from helpers import cli

    for jobs in ("1", "2"):
        root = make_study(tmp_path / f"study{jobs}")
        result = cli("figures", root, "--out", tmp_path / f"f{jobs}", "--no-base", "--formats", "png", "--jobs", jobs)
        assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "f1" / "results.json").read_text() == (tmp_path / "f2" / "results.json").read_text()
    drawn = json.loads((tmp_path / "f2" / "figures.json").read_text())["figures"]
    inputs_aside = [[{k: v for k, v in e.items() if k != "inputs_sha256"} for e in json.loads((tmp_path / f / "figures.json").read_text())["figures"]]
                    for f in ("f1", "f2")]  # the two studies' tables name their own folders: other inputs, the same pictures
    assert inputs_aside[0] == inputs_aside[1]
    assert all((tmp_path / "f1" / f).read_bytes() == (tmp_path / "f2" / f).read_bytes() for e in drawn for f in e["files"])


def test_subspace_drift_is_stored_per_cell_and_equals_the_direct_table(tmp_path):
    from tlora_analysis.analysis.similarity import subspace_drift, subspace_similarity_table

    root = make_study(tmp_path / "study")
    table_cache._cache_of.cache_clear()
    run = load_study(root).run("lora-s0")
    direct = subspace_similarity_table(run, run, epochs=[e for e in run.epochs if e != 0], epoch_b=run.epochs[-1]).query("i == j")
    assert len(direct) and (direct.i == direct.j).all()  # the full grid's diagonal, which the drift computes alone
    store = table_cache._cache_of(root.resolve())
    store.hits = store.misses = 0
    stored = subspace_drift(run)
    again = subspace_drift(run)
    assert (store.hits, store.misses) == (1, 2)  # made: the drift and the diagonal table inside it; read again: the drift's
    pd.testing.assert_frame_equal(direct.reset_index(drop=True), again.reset_index(drop=True), check_exact=True)
    pd.testing.assert_frame_equal(stored.reset_index(drop=True), again.reset_index(drop=True), check_exact=True)


CROSS_CELL = ("controls", "rank_similarity", "claims_per_seed", "ladder_layers", "ladder")


def read_study(root):
    from tlora_analysis.analysis.compare import compare_study

    table_cache._cache_of.cache_clear()
    tables = compare_study(load_study(root), function_examples=0)
    return tables, table_cache._cache_of(root.resolve())


def test_cross_cell_tables_are_stored_and_read_back_equal(tmp_path):
    """The controls, the claims' pair tables and the ladder's rows are stored too: a second read computes nothing."""
    root = make_study(tmp_path / "study")
    cold, store = read_study(root)
    assert store.misses > 0 and {"similarity_controls", "ladder_layers", "update_similarity"} <= {
        p.name for p in (root / table_cache.CACHE_FOLDER).iterdir()}
    warm, store = read_study(root)
    assert store.misses == 0 and store.hits > 0
    for name in CROSS_CELL:
        pd.testing.assert_frame_equal(cold[name], warm[name], check_exact=True, obj=name)


def test_a_pair_table_is_recomputed_for_the_pairs_a_changed_cell_enters_only(tmp_path):
    from tlora_analysis.analysis.similarity import update_similarity

    root = make_study(tmp_path / "study")
    study = load_study(root)
    update_similarity(study.run("lora-s0"), study.run("tlora-s0"))
    update_similarity(study.run("lora-s1"), study.run("tlora-s1"))
    snapshot = sorted((root / "runs" / "tlora-s1" / "snapshots").glob("*.safetensors"))[-1]
    data = bytearray(snapshot.read_bytes())
    data[-3] ^= 1
    snapshot.write_bytes(bytes(data))
    table_cache._cache_of.cache_clear()
    study = load_study(root)
    update_similarity(study.run("lora-s0"), study.run("tlora-s0"))
    store = table_cache._cache_of(root.resolve())
    assert (store.hits, store.misses) == (1, 0)
    changed = update_similarity(study.run("lora-s1"), study.run("tlora-s1"))
    assert (store.hits, store.misses) == (1, 1)
    table_cache._cache_of.cache_clear()
    direct = update_similarity(str(root / "runs" / "lora-s1"), str(root / "runs" / "tlora-s1"))  # paths: no cache
    pd.testing.assert_frame_equal(changed, direct, check_exact=True)


def test_arguments_known_only_by_address_are_never_keyed_and_settings_are_not_weights(tmp_path):
    root = make_study(tmp_path / "study")
    run = load_study(root).run("lora-s0")
    store = table_cache._cache_of(root.resolve())
    assert store.key("spectra", run, (iter([1]),), {}) is None  # two iterators can share an address: never a key
    settings = store.key("ladder_layers", (run, run), ({"method": "lora", "seed": 0},), {})
    assert settings is not None and settings != store.key("ladder_layers", (run, run), ({"method": "lora", "seed": 1},), {})
    weights = {"m": torch.ones(2, 2)}
    assert store.key("amplification", run, (weights,), {}) != store.key("amplification", run, ({"m": torch.zeros(2, 2)},), {})


def test_each_worker_takes_its_share_of_the_cores():
    """Analysis and drawing workers start limited to the cores divided by the jobs: two workers of two threads on two
    cores made every small float64 product wait for a descheduled thread (15 ms instead of 0.2 ms beside other work)."""
    from tlora_analysis.processes import cores, spawn_pool, threads_per_worker

    with spawn_pool(2) as pool:
        assert pool.submit(torch.get_num_threads).result() == threads_per_worker(2) == max(1, cores() // 2)


def test_new_cells_compute_only_the_control_pairs_they_enter_with_the_draws_of_a_full_pass(tmp_path):
    """Methods of three ranks draw three random baseline sets from one generator, in the order one pass meets them;
    after two new cells the stored pairs are reused and the new ones equal a study read from nothing."""
    from tlora_analysis.analysis.controls import similarity_controls

    root = tmp_path / "study"
    spec = {"method": ["lora", "tlora", "vera"], "seed": [0, 1]}
    for seed in (0, 1, 2):
        for method, rank in (("lora", 4), ("tlora", 2), ("vera", 3)):
            if seed < 2 or method != "vera":
                make_run(tmp_path / "cells" / f"{method}-s{seed}", method, rank=rank, seed=seed)
    (root / "runs").mkdir(parents=True)
    for cell in (tmp_path / "cells").iterdir():
        if not cell.name.endswith("s2"):
            shutil.copytree(cell, root / "runs" / cell.name)
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    similarity_controls(load_study(root))
    for cell in ("lora-s2", "tlora-s2"):
        shutil.copytree(tmp_path / "cells" / cell, root / "runs" / cell)
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1,
                                                 "spec": {**spec, "seed": [0, 1, 2]}, "cells": {}}))
    table_cache._cache_of.cache_clear()
    grown = similarity_controls(load_study(root))
    store = table_cache._cache_of(root.resolve())
    assert (store.hits, store.misses) == (9, 5)  # kept: 3 same-method and 6 same-seed pairs; new: 4 same-method (seed 2 with 0 and 1) and 1 same-seed
    fresh = tmp_path / "fresh"
    shutil.copytree(root, fresh, ignore=shutil.ignore_patterns("cache"))
    pd.testing.assert_frame_equal(grown, similarity_controls(load_study(fresh)), check_exact=True)


def test_the_function_space_cosine_is_stored_and_keyed_by_the_base_models_files(tmp_path, tiny_model_dir):
    """It reads the base model and the task's examples, beyond the cells' files: a model file changed, recomputed."""
    import os

    from tlora_analysis.analysis.function_space import function_similarity
    from tlora_analysis.training import TrainConfig, train

    root = tmp_path / "study"
    for method in ("lora", "tlora"):
        config = TrainConfig(method=method, model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=12, batch_size=8)
        train(config, root / "runs" / f"{method}-s0", progress=False, log=lambda _: None)
    spec = {"method": ["lora", "tlora"], "seed": [0]}
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))

    def read():
        table_cache._cache_of.cache_clear()
        study = load_study(root)
        table = function_similarity(study.run("lora-s0"), study.run("tlora-s0"), examples=12, batch_size=5)
        store = table_cache._cache_of(root.resolve())
        return table, (store.hits, store.misses)

    cold, counted = read()
    assert counted == (0, 1) and len(cold)
    warm, counted = read()
    assert counted == (1, 0)
    pd.testing.assert_frame_equal(cold, warm, check_exact=True)
    weights = next(p for p in sorted(os.scandir(tiny_model_dir), key=lambda e: e.name) if p.is_file())
    os.utime(weights.path, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    _, counted = read()
    assert counted == (0, 1)


def test_a_peft_models_cell_is_stored_too_and_keyed_by_its_base_models_files(tmp_path, tiny_model_dir):
    """IA³ is read through peft on its base: its cell's tables are stored (they were recomputed on every read), and a
    change to the base model's files makes other keys."""
    import os

    from tlora_analysis.training import TrainConfig, train

    root = tmp_path / "study"
    for seed in (0, 1):
        config = TrainConfig(method="ia3", model=tiny_model_dir, epochs=1, max_train_samples=16, max_eval_samples=8, batch_size=8, seed=seed)
        train(config, root / "runs" / f"ia3-s{seed}", progress=False, log=lambda _: None)
    spec = {"method": ["ia3"], "seed": [0, 1]}
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    cold, store = counts(root)
    assert (store.hits, store.misses) == (0, 4)
    warm, store = counts(root)
    assert (store.hits, store.misses) == (4, 0)
    pd.testing.assert_frame_equal(cold["norms"], warm["norms"], check_exact=True)
    weights = next(p for p in sorted(os.scandir(tiny_model_dir), key=lambda e: e.name) if p.name.endswith(".safetensors"))
    os.utime(weights.path, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    _, store = counts(root)
    assert (store.hits, store.misses) == (0, 4)
