"""The WordNet tasks: found where users install WordNet, read in WordNet's own format, built deterministically,
split by synset, and every malformed or hostile database file refused in one line naming the file and line.

Tests write small databases in WordNet's format themselves (their glosses are made up and name their own
synset); tests of the real database skip, with the reason, where WordNet is not installed."""

import re

import pytest

from helpers import cli, expect_error
from tlora_analysis.data import TASKS, load_task
from tlora_analysis.data.wordnet import LEXNAME_CLASSES, PAIRS, PER_CLASS, hypernym_splits, lexname_splits, split_of
from tlora_analysis.data.wordnet_db import LEXNAMES, MAX_LINE_BYTES, find_wordnet, read_noun_synsets
from tlora_analysis.errors import InputError

HEADER = b"  1 This is a made-up database in WordNet's format, for tests.  \n"


def write_database(folder, synsets_per_class=40, classes=LEXNAME_CLASSES, hypernym_step=None):
    """``folder/data.noun``: synset k of class k % len(classes), its gloss naming k; a hypernym pointer to synset
    k - hypernym_step (default: one per class, so within the same class). Offsets are byte positions, as WordNet's."""
    folder.mkdir(parents=True, exist_ok=True)
    step = hypernym_step or len(classes)
    count = synsets_per_class * len(classes)

    def line(k, offsets):
        lexnum = LEXNAMES.index(classes[k % len(classes)])
        pointer = f"001 @ {offsets[k - step]:08d} n 0000" if k >= step else "000"
        return f"{offsets[k]:08d} {lexnum:02d} n 01 word_{k} 0 {pointer} | synset {k} of {classes[k % len(classes)]}  \n".encode()

    lengths = [len(line(k, [0] * count)) for k in range(count)]
    offsets, position = [], len(HEADER)
    for length in lengths:
        offsets.append(position)
        position += length
    (folder / "data.noun").write_bytes(HEADER + b"".join(line(k, offsets) for k in range(count)))
    return offsets


def synset_number(gloss):
    return int(re.match(r"synset (\d+) of", gloss).group(1))


# --------------------------------------------------------------------------- the tasks, on a made-up database
def test_lexname_is_balanced_deterministic_and_split_by_synset(tmp_path):
    offsets = write_database(tmp_path)
    synsets = read_noun_synsets(tmp_path)
    sizes = {"train": 10, "validation": 3}
    splits = lexname_splits(synsets, "db", sizes)
    assert splits == lexname_splits(read_noun_synsets(tmp_path), "db", sizes)
    for split, examples in splits.items():
        assert len(examples) == sizes[split] * len(LEXNAME_CLASSES)
        for example in examples:
            k = synset_number(example["sentence"])
            assert split_of(offsets[k]) == split
            assert LEXNAME_CLASSES[example["label"]] == LEXNAME_CLASSES[k % len(LEXNAME_CLASSES)]
    numbers = {s: {synset_number(e["sentence"]) for e in splits[s]} for s in splits}
    assert not numbers["train"] & numbers["validation"]


def test_hypernym_negatives_come_from_the_true_hypernyms_file_and_are_never_ancestors(tmp_path):
    classes = LEXNAME_CLASSES[:4]
    offsets = write_database(tmp_path, synsets_per_class=300, classes=classes, hypernym_step=5)  # hypernyms in another file
    synsets = read_noun_synsets(tmp_path)
    by_offset = {offset: k for k, offset in enumerate(offsets)}
    splits = hypernym_splits(synsets, "db", {"train": 200, "validation": 40})
    for split, examples in splits.items():
        assert abs(sum(e["label"] for e in examples) - len(examples) / 2) <= 1
        for example in examples:
            first, second = synset_number(example["sentence1"]), synset_number(example["sentence2"])
            assert split_of(offsets[first]) == split_of(offsets[second]) == split
            ancestors, k = set(), first
            while k >= 5:
                k -= 5
                ancestors.add(k)
            true_hypernym = by_offset[synsets[offsets[first]].hypernyms[0]]
            assert example["label"] == int(second == true_hypernym)
            if example["label"] == 0:
                assert second not in ancestors and second != first
                assert second % len(classes) == true_hypernym % len(classes)  # the same lexicographer file


def test_a_gloss_shared_by_two_synsets_is_left_out_of_both_tasks(tmp_path):
    write_database(tmp_path, synsets_per_class=60)
    path = tmp_path / "data.noun"
    path.write_bytes(path.read_bytes().replace(b"synset 30 of", b"synset 54 of", 1))  # one class, same length
    synsets = read_noun_synsets(tmp_path)
    glosses = [e["sentence"] for split in lexname_splits(synsets, "db", {"train": 30, "validation": 5}).values() for e in split]
    assert not any(g.startswith("synset 54 of") for g in glosses)
    pairs = hypernym_splits(synsets, "db", {"train": 200, "validation": 40})
    assert not any(e[c].startswith("synset 54 of") for split in pairs.values() for e in split for c in ("sentence1", "sentence2"))


def test_a_class_too_small_for_the_split_is_named(tmp_path):
    write_database(tmp_path, synsets_per_class=5)
    with pytest.raises(InputError, match=r"noun\.act has \d+ synsets in the train split, 100 needed"):
        lexname_splits(read_noun_synsets(tmp_path), "db")


def test_every_wordnet_task_is_built_and_every_source_is_loaded():
    from tlora_analysis.data.glue import _FILES, _LOADERS
    from tlora_analysis.data.tasks import SOURCES
    from tlora_analysis.data.wordnet import BUILDERS

    assert set(_LOADERS) == set(_FILES) == set(SOURCES)
    assert {name for name, spec in TASKS.items() if spec.source == "wordnet"} == set(BUILDERS)
    assert TASKS["wordnet-lexname"].num_labels == len(LEXNAME_CLASSES)


# --------------------------------------------------------------------------- finding WordNet
def test_the_data_dir_and_wnsearchdir_are_searched_and_a_missing_database_names_how_to_install_it(tmp_path, monkeypatch):
    write_database(tmp_path / "wn" / "dict")
    assert find_wordnet(tmp_path / "wn") == tmp_path / "wn" / "dict"
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "wn" / "dict"))
    assert find_wordnet() == tmp_path / "wn" / "dict"
    with pytest.raises(InputError, match="WordNet not found: no data.noun in --data-dir .*apt-get install wordnet-base.*nltk"):
        find_wordnet(tmp_path / "empty")


def test_nltk_data_paths_are_searched(tmp_path, monkeypatch):
    from tlora_analysis.data import wordnet_db

    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    monkeypatch.delenv("WNHOME", raising=False)
    monkeypatch.setenv("NLTK_DATA", str(tmp_path / "nltk"))
    folders = wordnet_db.candidate_folders(None)
    assert tmp_path / "nltk" / "corpora" / "wordnet" in folders
    assert folders.index(tmp_path / "nltk" / "corpora" / "wordnet") > folders.index(wordnet_db.Path("/usr/share/wordnet"))


def test_train_without_wordnet_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = cli("train", "--task", "wordnet-lexname", "--data-dir", tmp_path / "nowhere", "--out", out)
    expect_error(result, "WordNet not found", "apt-get install wordnet-base")
    assert not out.exists()


# --------------------------------------------------------------------------- hostile database files
def corrupt(folder, transform):
    write_database(folder, synsets_per_class=2)
    path = folder / "data.noun"
    path.write_bytes(transform(path.read_bytes()))
    return path


@pytest.mark.parametrize("transform, message", [
    (lambda data: data[:-7], r"line 49: truncated"),
    (lambda data: data.replace(b"word_3 0", b"word_3 0 ", 1), r"line 6: offset \d+ is not the line's byte position"),
    (lambda data: data.replace(b"synset 7 of", b"synset \xff of", 1), r"line 9: not UTF-8 text"),
    (lambda data: data.replace(b" n 01 word_4", b" n zz word_4", 1), r"line 6: not a WordNet synset line"),
    (lambda data: data.replace(b" | synset 2 ", b" synset 2 ", 1), r"line 4: not a noun synset line"),
    (lambda data: data + b"x" * (MAX_LINE_BYTES + 10) + b"\n", r"line \d+: longer than 65,536 bytes"),
    (lambda data: data.replace(b"@ 0000", b"@ 9999", 1), r"hypernym pointer to offset 9999\d+, which no line of the file has"),
    (lambda data: HEADER, r"no synset lines"),
], ids=["truncated", "bad-offset", "non-utf8", "bad-count", "no-gloss", "long-line", "dangling-pointer",
        "empty"])
def test_a_malformed_database_file_is_refused_naming_file_and_line(tmp_path, transform, message):
    path = corrupt(tmp_path, transform)
    with pytest.raises(InputError, match=re.escape(str(path)) + ".*" + message):
        read_noun_synsets(tmp_path)


def test_a_one_gigabyte_file_a_directory_and_a_fifo_are_refused_without_reading_them(tmp_path):
    import os

    big = tmp_path / "big"
    big.mkdir()
    with (big / "data.noun").open("wb") as handle:  # sparse: a 1 GB line of NULs, no disk used
        handle.truncate(1 << 30)
    with pytest.raises(InputError, match=r"1,073,741,824 bytes, more than WordNet's files ever hold"):
        read_noun_synsets(big)
    folder = tmp_path / "dir"
    (folder / "data.noun").mkdir(parents=True)
    with pytest.raises(InputError, match="data.noun: not a regular file"):
        read_noun_synsets(folder)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "data.noun")
    with pytest.raises(InputError, match="not a regular file"):
        read_noun_synsets(fifo)


def test_a_lexnames_file_is_read_and_must_be_wordnets(tmp_path):
    write_database(tmp_path, synsets_per_class=2)
    (tmp_path / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{1 + (i > 2)}\n" for i, name in enumerate(LEXNAMES)))
    assert read_noun_synsets(tmp_path)
    (tmp_path / "lexnames").write_text("00\tnoun.mine\t1\n")
    with pytest.raises(InputError, match="differ from WordNet 3.0's 45 lexicographer files"):
        read_noun_synsets(tmp_path)


def test_a_hostile_database_through_train_is_one_line_naming_the_file(tmp_path):
    path = corrupt(tmp_path / "wn", lambda data: data[:-3])
    result = cli("train", "--task", "wordnet-hypernym", "--data-dir", tmp_path / "wn", "--out", tmp_path / "run")
    expect_error(result, str(path), "truncated")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- the real database, where installed
def installed_wordnet():
    try:
        return find_wordnet()
    except InputError as err:
        pytest.skip(f"WordNet is not installed here ({str(err)[:80]}...); .ci/run installs wordnet-base as root")


@pytest.fixture(scope="module")
def real_tasks():
    installed_wordnet()
    return {task: load_task(task) for task in ("wordnet-lexname", "wordnet-hypernym")}


def test_the_real_lexname_task_has_24_balanced_classes_in_disjoint_splits(real_tasks):
    data = real_tasks["wordnet-lexname"]
    for split, examples in (("train", data.train), ("validation", data.validation)):
        counts = {label: 0 for label in range(len(LEXNAME_CLASSES))}
        for example in examples:
            counts[example["label"]] += 1
        assert set(counts.values()) == {PER_CLASS[split]}, split
    assert len({e["sentence"] for e in data.train} & {e["sentence"] for e in data.validation}) == 0  # counted, not printed
    again = load_task("wordnet-lexname")
    assert again.train == data.train and again.validation == data.validation


def test_the_real_hypernym_task_is_balanced_and_disjoint(real_tasks):
    data = real_tasks["wordnet-hypernym"]
    assert len(data.train) > 0.99 * PAIRS["train"] and len(data.validation) > 0.99 * PAIRS["validation"]
    assert abs(sum(e["label"] for e in data.train) / len(data.train) - 0.5) < 0.01
    train_glosses = {e["sentence1"] for e in data.train} | {e["sentence2"] for e in data.train}
    shared = train_glosses & ({e["sentence1"] for e in data.validation} | {e["sentence2"] for e in data.validation})
    assert len(shared) == 0  # counted, never printed: WordNet's text stays out of logs too


def test_train_on_real_glosses_runs_from_the_command_line(tmp_path, real_tasks):
    out = tmp_path / "run"
    result = cli("train", "--task", "wordnet-lexname", "--method", "lora", "--epochs", "1", "--max-train-samples", "48",
                 "--max-eval-samples", "24", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "run.json").exists()


def test_the_wordnet_rates_are_the_committed_sweeps_choice():
    import json
    from pathlib import Path

    from tlora_analysis.config import TrainConfig

    for task, folder in (("wordnet-lexname", "lr_sweep"), ("wordnet-hypernym", "hypernym/lr_sweep")):
        sweep = json.loads((Path(__file__).parent.parent / "figures/wordnet" / folder / "results.json").read_text())["learning_rates"]
        assert TASKS[task].learning_rates == {method: entry["chosen"] for method, entry in sweep.items()}, task
    chosen = TASKS["wordnet-lexname"].learning_rates
    for method, rate in chosen.items():
        assert TrainConfig(method=method, task="wordnet-lexname").lr == rate
    assert TrainConfig(method="vera", task="wordnet-lexname").lr == TrainConfig(method="vera").lr  # not swept here: its own default


def test_the_files_a_task_reads_are_named_for_stored_tables(tmp_path):
    """What a stored function-space table is keyed by: the database's files, a GLUE folder's, none for the generated
    task, and None (not storable) for GLUE from the Hub."""
    from tlora_analysis.data import task_files

    write_database(tmp_path / "wn")
    assert "data.noun" in {p.name for p in task_files("wordnet-lexname", tmp_path / "wn")}
    assert task_files("default") == [] and task_files("sst2") is None
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    (tmp_path / "glue" / "SST-2" / "train.tsv").write_text("sentence\tlabel\n")
    assert [p.name for p in task_files("sst2", tmp_path / "glue")] == ["train.tsv"]
