"""Hub ids as sources and bases (issue #40), against a stand-in Hub on 127.0.0.1 (HF_ENDPOINT): fetched only with
--download, only JSON and safetensors, only the files the readers open, read exactly as the same files on disk."""

import shutil

import pytest
import torch
from hub_server import Hub

from tlora_analysis.cli import main
from tlora_analysis.errors import InputError
from tlora_analysis.hub import downloads, parse_hub_id
from tlora_analysis.models import base_weights, default_model_path, load_model
from tlora_analysis.sources import open_updates

peft = pytest.importorskip("peft")
BASE = "models/minilm"


def adapter(folder, kind):
    torch.manual_seed(0)
    config = (peft.IA3Config(target_modules=["query", "value"], feedforward_modules=[]) if kind == "IA3" else
              peft.LoraConfig(r=4, target_modules=["query", "value"], use_dora=kind == "DORA", init_lora_weights=False))
    model = peft.get_peft_model(load_model("default"), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and "classifier" not in name:
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
    model.peft_config["default"].base_model_name_or_path = BASE  # as published: the base by its Hub id
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    repos = {BASE: default_model_path(), **{f"me/{k.lower()}": adapter(root / k, k) for k in ("LORA", "DORA", "IA3")}}
    (root / "pickles").mkdir()
    (root / "pickles" / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    (root / "pickles" / "adapter_config.json").write_text("{}")
    repos["me/pickles"] = root / "pickles"
    nested = root / "nested"
    shutil.copytree(root / "LORA", nested / "adapters" / "lora")
    repos["me/nested"] = nested
    server = Hub(repos)
    yield server
    server.close()


@pytest.fixture()
def served(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("TLORA_ANALYSIS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("TLORA_ANALYSIS_DOWNLOAD", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this server is the one network allowed
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import: the user's cache stays untouched
    hub.requests.clear()
    return hub


def test_hub_ids_are_read_as_written_and_local_paths_are_never_one(tmp_path):
    assert parse_hub_id("me/lora@v1:adapters/a") == parse_hub_id("me/lora@v1:adapters/a")
    hub_id = parse_hub_id("me/lora@v1:adapters/a")
    assert (hub_id.repo, hub_id.revision, hub_id.subfolder) == ("me/lora", "v1", "adapters/a")
    (tmp_path / "me").mkdir()
    assert parse_hub_id(str(tmp_path / "me")) is None and parse_hub_id("../x/y") is None and parse_hub_id("a/b/c") is None


def test_without_download_a_hub_id_is_one_line_and_nothing_is_asked(served, capsys):
    assert main(["inspect", "me/lora"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "looks like a Hub id" in error and "--download" in error
    assert main(["inspect", str(default_model_path()), "--base", "models/minilm"]) == 2
    assert served.requests == []


@pytest.mark.parametrize("kind", ["LORA", "DORA", "IA3"])
def test_a_served_adapter_reads_as_the_same_files_on_disk_with_w0_from_the_served_base(served, kind, tmp_path):
    local = open_updates(_local(served, kind), base=str(default_model_path()))
    with downloads(True):
        fetched = open_updates(f"me/{kind.lower()}")  # its base, named in adapter_config.json, is fetched too
        names = list(fetched.layers)
        weights = base_weights(BASE, names, {n: tuple(fetched.layers[n]["shape"]) for n in names})
        read = fetched.deltas()  # DoRA and IA³ are computed on the base, fetched here
    expected = local.deltas()
    assert fetched.meta["hub"] == {"repo": f"me/{kind.lower()}", "revision": "main", "commit": served.sha(f"me/{kind.lower()}")}
    assert set(read) == set(expected)
    for name in expected:
        assert torch.equal(read[name].dense(), expected[name].dense()), name
    reference = base_weights(str(default_model_path()), names)
    assert all(torch.equal(weights[n], reference[n]) for n in names)
    asked = served.files_asked()
    assert {f for _, f in asked} <= {"adapter_config.json", "adapter_model.safetensors", "config.json", "model.safetensors"}
    assert (BASE, "model.safetensors") in asked and not any(f.endswith((".bin", ".py", ".pt")) for _, f in asked)


def _local(hub, kind):
    return hub.repos[f"me/{kind.lower()}"]


def test_what_was_fetched_is_read_offline_and_a_subfolder_is_read(served, capsys):
    assert main(["inspect", "me/nested:adapters/lora", "--download", "--base", str(default_model_path())]) == 0
    served.requests.clear()
    assert main(["inspect", "me/nested:adapters/lora", "--base", str(default_model_path())]) == 0
    assert served.requests == []
    assert "4 layers" not in capsys.readouterr().err


@pytest.mark.parametrize("source, fragment", [
    ("me/pickles", "holds no safetensors file"),
    ("me/lora@no-such-tag", "the Hub has no revision 'no-such-tag'"),
    ("me/missing", "no such repository on the Hub"),
])
def test_hostile_or_missing_hub_content_is_one_line_and_leaves_nothing_half_written(served, source, fragment, tmp_path):
    with downloads(True), pytest.raises(InputError, match=fragment):
        open_updates(source)
    assert not list((tmp_path / "cache").rglob(".fetch-*"))
    assert not any(p.endswith(".bin") for _, p in served.requests)


def test_no_network_or_offline_mode_is_one_line(served, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with downloads(True), pytest.raises(InputError, match="could not be reached"):
        open_updates("me/lora")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub's own offline mode is obeyed
    with downloads(True), pytest.raises(InputError, match="offline mode is enabled"):
        open_updates("me/lora")


def test_a_sharded_base_gives_only_the_shards_of_the_adapted_layers(served, tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="20KB")
    served.repos["models/sharded"] = sharded
    index = __import__("json").loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    name = "bert.encoder.layer.1.attention.self.query"
    with downloads(True):
        weights = base_weights("models/sharded", [name], {name: (32, 32)})
        assert torch.equal(weights[name], AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).get_submodule(name).weight)
    shards = {f for repo, f in served.files_asked() if repo == "models/sharded" and f.endswith(".safetensors")}
    assert shards == {index[name + ".weight"]} and len(set(index.values())) > 2


def test_a_fetch_over_the_announced_size_says_so_before_it_starts(served, capsys):
    assert main(["inspect", "me/lora", "--download", "--base", str(default_model_path())]) == 0
    assert "download:" not in capsys.readouterr().err  # small fetches say nothing
    served.sizes[("me/ia3", "adapter_model.safetensors")] = 5 * 10**9  # what the Hub says of a large file
    assert main(["inspect", "me/ia3", "--download", "--base", str(default_model_path())]) == 0
    announced = [line for line in capsys.readouterr().err.splitlines() if "download:" in line]
    assert len(announced) == 1 and "me/ia3" in announced[0] and "5.0 GB" in announced[0], announced


def _lying(served, tmp_path, tiny_model_dir, name, edit):
    """A sharded base served as ``models/NAME`` whose index ``edit`` rewrites."""
    import json

    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / name
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).save_pretrained(folder, max_shard_size="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    edit(index["weight_map"], folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    served.repos[f"models/{name}"] = folder
    return f"models/{name}"


LAYER = "bert.encoder.layer.1.attention.self.query"


@pytest.mark.parametrize("edit, fragment", [
    (lambda wm, f: wm.update({LAYER + ".weight": "../../outside.safetensors"}), "not a safetensors file beside the index"),
    (lambda wm, f: wm.update({LAYER + ".weight": "model-99999-of-99999.safetensors"}), "which the repository does not hold"),
    (lambda wm, f: wm.update({LAYER + ".weight": wm["bert.embeddings.word_embeddings.weight"]}), "does not contain tensor"),
    (lambda wm, f: wm.update({LAYER + ".weight": 7}), "should map tensor names to shard file names"),
])
def test_a_lying_index_on_the_hub_is_one_line(served, tmp_path, tiny_model_dir, edit, fragment):
    repo = _lying(served, tmp_path, tiny_model_dir, "lying", edit)
    with downloads(True), pytest.raises(InputError, match=fragment):
        base_weights(repo, [LAYER], {LAYER: (32, 32)})[LAYER]
    assert not list((tmp_path / "cache").rglob(".fetch-*"))
    assert not any("outside" in p for _, p in served.requests)


def test_a_huge_header_served_by_the_hub_is_one_line(served, tmp_path, capsys):
    folder = tmp_path / "huge"
    shutil.copytree(_local(served, "LORA"), folder)
    data = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes((2**60).to_bytes(8, "little") + data[8:])
    served.repos["me/huge"] = folder
    assert main(["inspect", "me/huge", "--download", "--base", str(default_model_path())]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "adapter_model.safetensors" in error and "Traceback" not in error, error


def test_what_the_hugging_face_cache_holds_is_read_without_download_and_nothing_is_asked(served, tmp_path):
    from huggingface_hub import snapshot_download

    snapshot_download("me/lora", endpoint=served.url)  # as peft's from_pretrained leaves it: links into blobs/
    served.requests.clear()
    with downloads(False):
        read = open_updates("me/lora", base=str(default_model_path()))
        expected = open_updates(_local(served, "LORA"), base=str(default_model_path()))
        assert all(torch.equal(read.deltas()[n].dense(), expected.deltas()[n].dense()) for n in expected.layers)
    assert served.requests == []
    assert not any(p.is_symlink() for p in (tmp_path / "cache" / "hub").rglob("*"))


@pytest.mark.parametrize("kind", ["DORA", "IA3"])
def test_a_type_computed_on_the_base_gives_only_the_shards_of_its_layers(served, tmp_path, tiny_model_dir, kind):
    """IA³ through peft on a skeleton of the base, DoRA from its factors: W0 of the adapted layers alone, so only the
    shards holding them are requested, and the reading equals the same adapter on the local base."""
    import json

    from transformers import AutoModelForSequenceClassification

    sharded = tmp_path / "sharded"
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir).save_pretrained(sharded, max_shard_size="20KB")
    served.repos["models/tiny-sharded"] = sharded
    torch.manual_seed(0)
    config = (peft.IA3Config(target_modules=["query"], feedforward_modules=[], init_ia3_weights=False) if kind == "IA3" else
              peft.LoraConfig(r=2, target_modules=["query"], use_dora=True, init_lora_weights=False))
    model = peft.get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_model_dir), config)
    model.peft_config["default"].base_model_name_or_path = "models/tiny-sharded"
    model.save_pretrained(tmp_path / "adapter")
    served.repos["me/tiny-adapter"] = tmp_path / "adapter"
    with downloads(True):
        read = open_updates("me/tiny-adapter").deltas()
    expected = open_updates(tmp_path / "adapter", base=str(sharded)).deltas()
    assert set(read) == set(expected) and all(torch.equal(read[n].dense(), expected[n].dense()) for n in expected)
    index = json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"]
    holding = {index[f"bert.encoder.layer.{i}.attention.self.query.weight"] for i in range(2)}
    asked = {f for repo, f in served.files_asked() if repo == "models/tiny-sharded" and f.endswith(".safetensors")}
    assert asked == holding and len(set(index.values())) > len(holding), (asked, holding)


def test_figures_and_compare_read_hub_ids_and_record_the_commit_read(served, tmp_path, capsys):
    import json

    base = str(default_model_path())
    assert main(["figures", "lora=me/lora", "dora=me/dora", "--download", "--base", base, "--out", str(tmp_path / "f"),
                 "--formats", "png", "--no-progress"]) == 0
    sources = json.loads((tmp_path / "f" / "figures.json").read_text())["sources"]
    assert sources == {"lora": f"me/lora@{served.sha('me/lora')}", "dora": f"me/dora@{served.sha('me/dora')}"}
    served.requests.clear()
    assert main(["compare", "me/lora", "me/nested:adapters/lora", "--download", "--base", base]) == 0
    assert "me/nested" in {repo for repo, _ in served.files_asked()}
    from tlora_analysis.analysis.summary import source_settings
    from tlora_analysis.sources import open_sources

    with downloads(False):
        settings = source_settings(open_sources({"nested": "me/nested:adapters/lora"}))
    assert settings.loc["path", "nested"] == f"me/nested@{served.sha('me/nested')}:adapters/lora"
