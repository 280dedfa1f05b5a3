"""The embedded default task and GLUE loading from local files in GLUE's own layout."""

import numpy as np
import pytest

from tlora_analysis.data import TASKS, compute_metrics, load_task
from tlora_analysis.data import default_task as grammar
from tlora_analysis.errors import InputError


def clause_polarity(clause: str) -> int:
    """An independent reading of the grammar: adjective polarity, flipped by a negation."""
    words = clause.replace(",", "").replace(".", "").lower().split()
    adjective = words[-1]
    polarity = 1 if adjective in grammar.POSITIVE else -1
    assert adjective in grammar.POSITIVE + grammar.NEGATIVE, clause
    negated = any(f" {neg} " in f" {' '.join(words)} " for neg in grammar.NEGATED_COPULAS)
    return -polarity if negated else polarity


def sentence_label(sentence: str) -> int:
    s = sentence.rstrip(".").lower()
    if s.startswith("although "):
        first, second = s[len("although "):].split(", ", 1)
        decider = second
        assert clause_polarity(first) == -clause_polarity(second)
    elif ", but " in s:
        first, decider = s.split(", but ")
        assert clause_polarity(first) == -clause_polarity(decider)
    elif ", although " in s:
        decider, other = s.split(", although ")
        assert clause_polarity(other) == -clause_polarity(decider)
    elif ", and " in s:
        decider, other = s.split(", and ")
        assert clause_polarity(other) == clause_polarity(decider)
    else:
        decider = s
    return 1 if clause_polarity(decider) > 0 else 0


def test_default_task_sizes_balance_determinism_and_labels():
    data = load_task("default")
    assert len(data.train) >= 2000 and len(data.validation) >= 500
    for split in (data.train, data.validation):
        assert abs(np.mean([ex["label"] for ex in split]) - 0.5) < 0.01
        for ex in split:
            assert sentence_label(ex["sentence"]) == ex["label"], ex["sentence"]
    assert not {ex["sentence"] for ex in data.train} & {ex["sentence"] for ex in data.validation}
    assert load_task("default").train == data.train
    contrast = [ex for ex in data.train if ", but " in ex["sentence"] or "although" in ex["sentence"].lower()]
    assert len(contrast) > 0.4 * len(data.train)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture()
def glue_dir(tmp_path):
    """Small files in the layout of GLUE's original distribution (two rows per split)."""
    write(tmp_path / "SST-2/train.tsv", "sentence\tlabel\nit 's a charming \" trip \t1\na dull mess\t0\n")
    write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\ngreat fun\t1\nawful\t0\n")
    write(tmp_path / "CoLA/train.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\ngj04\t0\t*\tThe more we study verbs, the crazier they get get.\n")
    write(tmp_path / "CoLA/dev.tsv", "gj04\t1\t\tHe left.\ngj04\t0\t*\tLeft he the.\n")
    mrpc = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said hi.\tHe greeted us.\n0\t3\t4\tIt rained.\tStocks fell.\n"
    write(tmp_path / "MRPC/train.tsv", mrpc)
    write(tmp_path / "MRPC/dev.tsv", mrpc)
    rte = "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tAn animal sat.\tentailment\n1\tA cat sat.\tA dog ran.\tnot_entailment\n"
    write(tmp_path / "RTE/train.tsv", rte)
    write(tmp_path / "RTE/dev.tsv", rte)
    qnli = "index\tquestion\tsentence\tlabel\n0\tWho?\tHe did.\tentailment\n1\tWhen?\tBlue.\tnot_entailment\n"
    write(tmp_path / "QNLI/train.tsv", qnli)
    write(tmp_path / "QNLI/dev.tsv", qnli)
    sts = ("index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
           "0\tmain\tf\t2012\t1\tnone\tnone\tA man plays.\tA man is playing.\t4.8\n"
           "1\tmain\tf\t2012\t2\tnone\tnone\tA cat.\tA car.\t0.5\n")
    write(tmp_path / "STS-B/train.tsv", sts)
    write(tmp_path / "STS-B/dev.tsv", sts)
    mnli = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse"
            "\tsentence1\tsentence2\tlabel1\tgold_label\n"
            "0\t1\t1\tfiction\tx\tx\tx\tx\tHe ran.\tHe moved.\tentailment\tentailment\n"
            "1\t1\t2\tfiction\tx\tx\tx\tx\tHe ran.\tHe sat.\tcontradiction\tcontradiction\n"
            "2\t1\t3\tfiction\tx\tx\tx\tx\tHe ran.\tHe smiled.\tneutral\t-\n")
    write(tmp_path / "MNLI/train.tsv", mnli)
    write(tmp_path / "MNLI/dev_matched.tsv", mnli)
    qqp = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tHow?\tHow so?\t1\n1\t3\t4\tWhy?\tWhere?\t0\n"
    write(tmp_path / "QQP/train.tsv", qqp)
    write(tmp_path / "QQP/dev.tsv", qqp)
    return tmp_path


@pytest.mark.parametrize(
    "task,first",
    [
        ("sst2", {"sentence": "it 's a charming \" trip ", "label": 1}),
        ("cola", {"sentence": "The sailors rode the breeze clear of the rocks.", "label": 1}),
        ("mrpc", {"sentence1": "He said hi.", "sentence2": "He greeted us.", "label": 1}),
        ("rte", {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0}),
        ("qnli", {"question": "Who?", "sentence": "He did.", "label": 0}),
        ("stsb", {"sentence1": "A man plays.", "sentence2": "A man is playing.", "label": 4.8}),
        ("mnli", {"premise": "He ran.", "hypothesis": "He moved.", "label": 0}),
        ("qqp", {"question1": "How?", "question2": "How so?", "label": 1}),
    ],
)
def test_glue_original_layout(glue_dir, task, first):
    data = load_task(task, data_dir=glue_dir)
    assert data.train[0] == first
    assert len(data.validation) == 2
    if task == "mnli":
        assert [ex["label"] for ex in data.train] == [0, 2]  # the unlabelled "-" pair is dropped
    if task in ("rte", "qnli"):
        assert data.train[1]["label"] == 1


def test_hub_named_parquet_and_csv(tmp_path):
    import pandas as pd

    (tmp_path / "sst2").mkdir()
    pd.DataFrame({"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]}).to_parquet(tmp_path / "sst2/train.parquet")
    pd.DataFrame({"sentence": ["fine"], "label": [1], "idx": [0]}).to_csv(tmp_path / "sst2/validation.csv", index=False)
    data = load_task("sst2", data_dir=tmp_path, max_train_samples=1)
    assert data.train == [{"sentence": "good", "label": 1}]
    assert data.validation == [{"sentence": "fine", "label": 1}]


def test_bad_glue_inputs_are_clear(tmp_path, glue_dir):
    with pytest.raises(InputError, match="unknown task 'sst3'"):
        load_task("sst3")
    with pytest.raises(InputError, match="not a directory"):
        load_task("sst2", data_dir=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no train.tsv"):
        load_task("sst2", data_dir=tmp_path / "empty")
    write(glue_dir / "SST-2/dev.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(InputError, match=r"dev.tsv: missing column\(s\) sentence"):
        load_task("sst2", data_dir=glue_dir)


def test_metrics_match_reference_implementations():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    from scipy import stats

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    cola = compute_metrics("cola", predictions, labels)
    assert cola["matthews_correlation"] == pytest.approx(sklearn_metrics.matthews_corrcoef(labels, predictions))
    mrpc = compute_metrics("mrpc", predictions, labels)
    assert mrpc["f1"] == pytest.approx(sklearn_metrics.f1_score(labels, predictions))
    assert mrpc["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
    scores, gold = rng.random(50), rng.random(50)
    sts = compute_metrics("stsb", scores, gold)
    assert sts["pearson"] == pytest.approx(stats.pearsonr(scores, gold)[0])
    assert sts["spearman"] == pytest.approx(stats.spearmanr(scores, gold)[0])
    assert set(TASKS) >= {"sst2", "mrpc", "cola", "qnli", "rte", "stsb", "mnli", "qqp"}
