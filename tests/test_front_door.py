"""Issue "front door v3", items 5-7: the overview draws one line per source, a --targets typo is refused,
and re-rendering into a used --out leaves no stale figure."""

import json

from helpers import cli, expect_error, make_run
from tlora_analysis.analysis import compare_runs
from tlora_analysis.figures.overview import overview


def test_the_overview_draws_one_norm_line_per_source_even_of_one_method(tmp_path):
    make_run(tmp_path / "a", "lora", seed=0)
    make_run(tmp_path / "b", "lora", seed=1)
    tables = compare_runs({"first LoRA": tmp_path / "a", "second LoRA": tmp_path / "b"})
    figure = overview(tables)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert "first LoRA" in labels and "second LoRA" in labels  # never averaged into one "LoRA" line
    norms = tables["norms"]
    for line in figure.axes[0].get_lines():
        if line.get_label() in ("first LoRA", "second LoRA"):
            mine = norms[norms.run == line.get_label()].groupby("epoch").frobenius.mean()
            assert list(line.get_ydata()) == list(mine.to_numpy())


def test_a_target_that_matches_no_linear_layer_is_refused_by_name(tmp_path):
    result = cli("train", "--targets", "qeury", "value", "--max-train-samples", "8", "--out", tmp_path / "run")
    expect_error(result, "qeury")
    assert not (tmp_path / "run").exists()


def test_rerendering_into_a_used_out_removes_the_figures_it_no_longer_draws(tmp_path, toy_runs):
    out = tmp_path / "figures"
    assert cli("figures", toy_runs / "lora", toy_runs / "tlora", "--out", out, "--no-base", "--no-progress").returncode == 0
    assert (out / "scales.png").is_file()  # TLoRA's α
    result = cli("figures", toy_runs / "lora", "--out", out, "--no-base", "--no-progress")
    assert result.returncode == 0, result.stderr
    listed = json.loads((out / "figures.json").read_text())
    drawn = {name for f in listed["figures"] for name in f["files"]}
    assert not (out / "scales.png").exists() and not (out / "scales.pdf").exists()
    assert all((out / name).is_file() for name in drawn)
