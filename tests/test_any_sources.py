"""Whatever a user brings: any set of runs, snapshot files, peft adapters and exports, of any methods, seeds,
lengths and module subsets, through analyze, figures and report; each set built here from small random models."""

import itertools
import json

import numpy as np
import pytest
import torch

from helpers import ToyModel, make_run
from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.analysis import compare_runs, update_similarity
from tlora_analysis.cli import main
from tlora_analysis.errors import InputError
from tlora_analysis.export import export
from tlora_analysis.recording import DeltaRecorder
from tlora_analysis.sources import open_sources

peft = pytest.importorskip("peft")


def peft_adapter(path, targets):
    torch.manual_seed(3)
    model = peft.get_peft_model(ToyModel(3), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(path)
    return str(path)


def query_only_run(path):
    model = inject_adapters(ToyModel(3), "lora", 4, ["query"], seed=5)
    with DeltaRecorder(model, path, metadata={"task": "toy", "main_metric": "accuracy"}) as recorder:
        recorder.snapshot(0, {"accuracy": 0.5})
        with torch.no_grad():
            for layer in adapter_layers(model).values():
                layer.lora_B.normal_(generator=torch.Generator().manual_seed(1))
        recorder.snapshot(1, {"accuracy": 0.6})
        recorder.finish()
    return str(path)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """Every kind of source: runs of three methods, two seeds and two lengths, a snapshot file, peft
    adapters on all or some modules, and exports."""
    root = tmp_path_factory.mktemp("sources")
    paths = {}
    for method, seed, epochs in itertools.product(("lora", "tlora", "vera"), (0, 1), (1, 2)):
        name = f"{method}-s{seed}-e{epochs}"
        make_run(root / name, method, epochs=epochs, seed=seed)
        paths[name] = str(root / name)
    paths["snapshot"] = str(root / "lora-s0-e2" / "snapshots" / "epoch_001.safetensors")
    paths["peft"] = peft_adapter(root / "peft", ["query", "value"])
    paths["peft-value"] = peft_adapter(root / "peft-value", ["value"])
    paths["query-only"] = query_only_run(root / "query-only")
    for method in ("lora", "tlora", "vera"):
        paths[f"{method}-export"] = str(export(root / f"{method}-s0-e2", root / f"{method}-export"))
    return paths


SETS = {
    "two seeds of one method": ["lora-s0-e2", "lora-s1-e2"],
    "different lengths": ["lora-s0-e2", "tlora-s0-e1"],
    "a run beside a peft adapter": ["lora-s0-e2", "peft"],
    "a peft adapter alone": ["peft"],
    "a run and its export": ["tlora-s0-e2", "tlora-export"],
    "module subsets": ["lora-s0-e2", "peft-value", "peft"],
    "everything": ["lora-s0-e2", "lora-s1-e1", "tlora-s1-e2", "vera-s0-e1", "snapshot", "peft", "lora-export", "vera-export"],
}


@pytest.mark.parametrize("name", SETS)
def test_analyze_figures_and_report_write_their_outputs(tmp_path, kinds, name, capsys):
    sources = [kinds[k] for k in SETS[name]]
    assert main(["analyze", *sources, "--out", str(tmp_path / "tables"), "--no-base"]) == 0
    assert (tmp_path / "tables" / "norms.csv").stat().st_size > 0
    formats = ["png", "pdf"] if name == "everything" else ["png"]  # what the report embeds; PDFs once
    assert main(["figures", *sources, "--out", str(tmp_path / "figures"), "--no-base", "--formats", *formats]) == 0
    manifest = json.loads((tmp_path / "figures" / "figures.json").read_text())
    assert all(len(e["files"]) == len(formats) for e in manifest["figures"])
    assert manifest["figures"] and all((tmp_path / "figures" / f).is_file() for e in manifest["figures"] for f in e["files"])
    assert all(entry["reason"] for entry in manifest["skipped"])
    assert main(["report", *sources, "--out", str(tmp_path / "figures" / "report.html"), "--no-base"]) == 0  # reuses the figures
    assert (tmp_path / "figures" / "report.html").read_text().count("data:image/png;base64,") == len(manifest["figures"])


@pytest.mark.parametrize("first, second", [("lora-s0-e2", "lora-s1-e2"), ("lora-s0-e2", "peft"), ("tlora-s0-e1", "vera-s0-e2"),
                                           ("snapshot", "tlora-s1-e2"), ("peft-value", "lora-s0-e2"), ("vera-export", "lora-s1-e1")])
def test_update_similarity_is_symmetric(kinds, first, second):
    ab, ba = update_similarity(kinds[first], kinds[second]), update_similarity(kinds[second], kinds[first])
    ab, ba = ab.set_index(["name", "epoch"]).sort_index(), ba.set_index(["name", "epoch"]).sort_index()
    np.testing.assert_allclose(ab.cosine, ba.cosine, rtol=1e-12, atol=1e-15)
    assert (ab.epoch_a.to_numpy() == ba.epoch_b.to_numpy()).all() and ab.cosine.notna().all()


@pytest.mark.parametrize("method", ["lora", "tlora", "vera"])
def test_a_run_against_its_own_export_has_cosine_one_at_its_last_epoch(kinds, method):
    table = update_similarity(kinds[f"{method}-s0-e2"], kinds[f"{method}-export"])
    assert set(table.epoch_a) == {2} and set(table.epoch_b) == {2}
    np.testing.assert_allclose(table.cosine, 1.0, rtol=1e-6)


def test_a_run_meets_a_one_state_source_at_its_last_epoch_and_the_source_at_its_final_state(kinds):
    table = update_similarity(kinds["lora-s0-e2"], kinds["peft"])
    assert set(zip(table.epoch_a, table.epoch_b)) == {(2, -1)} and (table.note == "").all() and table.cosine.abs().gt(0).all()


def test_a_zero_update_is_reported_as_zero_with_a_note(tmp_path, kinds):
    zero = kinds["lora-s0-e2"].replace("lora-s0-e2", "lora-s0-e2") + "/snapshots/epoch_000.safetensors"
    table = update_similarity(kinds["tlora-s0-e2"], zero)
    assert (table.cosine == 0.0).all() and table.note.str.contains("zero update in lora-s0-e2").all()


def test_every_pair_is_compared_and_same_method_pairs_are_marked(kinds):
    tables = compare_runs([kinds[k] for k in ("lora-s0-e2", "lora-s1-e2", "tlora-s0-e2")], baseline_samples=2)
    pairs = tables["similarity_pairs"][["run_a", "run_b", "same_method"]].drop_duplicates()
    assert len(pairs) == 3 and pairs.same_method.sum() == 1
    assert "similarity" in tables and set(tables["norms"].run) == {"lora-s0-e2", "lora-s1-e2", "tlora-s0-e2"}


def test_labels_from_what_differs_or_given(tmp_path, kinds):
    class Fake:
        def __init__(self, name, method, seed, rank):
            self.path, self.method, self.name, self.layers = tmp_path / name, method, name, {}
            self.meta = {"config": {"seed": seed, "rank": rank, "lr": 1e-3}}

    fakes = [Fake("a", "lora", 0, 8), Fake("b", "lora", 1, 8), Fake("c", "tlora", 0, 8)]
    assert [s.name for s in open_sources(fakes)] == ["lora-s0", "lora-s1", "tlora-s0"]
    assert [s.name for s in open_sources({"mine": fakes[0], "theirs": fakes[2]})] == ["mine", "theirs"]
    assert fakes[0].name == "a"  # labelling never renames the caller's objects
    same = [Fake("x", "lora", 0, 8), Fake("y", "lora", 0, 8)]
    assert [s.name for s in open_sources(same)] == ["x", "y"]  # nothing tells them apart but their directories


def test_bad_sets_are_refused_in_one_line(tmp_path, kinds):
    with pytest.raises(InputError, match="given twice"):
        open_sources([kinds["peft"], kinds["peft"]])
    with pytest.raises(InputError, match="share no adapted module.*peft-value.*query-only"):
        update_similarity(kinds["peft-value"], kinds["query-only"])
    assert main(["figures", f"a={kinds['peft']}", f"a={kinds['lora-s0-e2']}", "--out", str(tmp_path / "f"), "--no-base"]) == 2
    assert not (tmp_path / "f").exists()
