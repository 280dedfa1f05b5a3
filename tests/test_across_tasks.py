"""One study on several tasks: the transfer rule on verdicts, the CI rule on ladder columns, the figures, and the
command's one-line errors. Built on small results dicts of the shape figures writes."""

import json

import pytest

from helpers import cli, expect_error
from tlora_analysis.analysis.across_tasks import across_tasks
from tlora_analysis.errors import InputError
from tlora_analysis.figures import TASK_FIGURES, render_tasks


def result(accuracy, verdicts, cosine_ci):
    claims = [{"finding": i + 1, "reading": f"reading {i}", "headline": i == 0, "threshold": "t", "mean": 0.5, "ci": [0.4, 0.6],
               "holds_in": "3/3", "verdict": verdict} for i, verdict in enumerate(verdicts)]
    methods = {m: {"method": m, "metric": "accuracy", "per_seed": [a, a, a], "mean": a, "ci_low": a - 0.01, "ci_high": a + 0.01}
               for m, a in accuracy.items()}
    ladder = {"tlora": {"cosine": {"mean": sum(cosine_ci) / 2, "ci": list(cosine_ci), "n": 3}}}
    return {"methods": methods, "claims": claims, "ladder": ladder}


RESULTS = {
    "default": result({"lora": 1.0, "tlora": 0.83}, ["holds", "does not hold", "holds", "mixed"], (0.01, 0.03)),
    "wordnet-lexname": result({"lora": 0.74, "tlora": 0.5}, ["holds", "does not hold", "does not hold", "holds"], (0.05, 0.07)),
}


def test_a_reading_transfers_only_with_one_decided_verdict_on_every_task():
    tables = across_tasks(RESULTS)
    outcome = dict(zip(tables["transfer"].reading, tables["transfer"].outcome))
    assert outcome == {"reading 0": "transfers", "reading 1": "transfers", "reading 2": "differs", "reading 3": "undecided"}
    assert set(tables["accuracy"].task) == {"default", "wordnet-lexname"} and len(tables["claims"]) == 8
    ladder = tables["ladder"].iloc[0]
    assert (ladder.method, ladder.column, ladder.outcome) == ("tlora", "cosine", "differ")  # CIs [0.01, 0.03] and [0.05, 0.07]
    overlapping = {**RESULTS, "wordnet-lexname": result({"lora": 0.7}, ["holds"] * 4, (0.02, 0.05))}
    assert across_tasks(overlapping)["ladder"].outcome.tolist() == ["agree"]


def test_fewer_than_two_tasks_or_a_file_that_is_no_results_is_refused():
    with pytest.raises(InputError, match="at least two"):
        across_tasks({"default": RESULTS["default"]})
    with pytest.raises(InputError, match="other: not a study's results.json"):
        across_tasks({"default": RESULTS["default"], "other": {"figures": []}})


def test_the_figures_draw_and_the_command_writes_tables_and_figures(tmp_path):
    entries = render_tasks(across_tasks(RESULTS), tmp_path / "direct", formats=("png",))
    assert {e["name"] for e in entries} == set(TASK_FIGURES)
    for task, content in RESULTS.items():
        (tmp_path / f"{task}.json").write_text(json.dumps(content))
    out = tmp_path / "out"
    run = cli("tasks", f"default={tmp_path / 'default.json'}", f"wordnet-lexname={tmp_path / 'wordnet-lexname.json'}", "--out", out,
              "--formats", "png")
    assert run.returncode == 0, run.stderr
    assert {"accuracy.csv", "claims.csv", "transfer.csv", "ladder.csv", "tasks_accuracy.png", "tasks_verdicts.png"} <= \
        {p.name for p in out.iterdir()}
    expect_error(cli("tasks", str(tmp_path / "default.json"), f"w={tmp_path / 'default.json'}", "--out", tmp_path / "o2"), "TASK=PATH")
    assert not (tmp_path / "o2").exists()
