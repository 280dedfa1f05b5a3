"""The ladder: every method against LoRA on the same seed, checked against dense computations."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from helpers import make_run
from tlora_analysis.analysis.ladder import OTHER_SEED, SAME_SEED, ladder, ladder_layers, ladder_over_seeds
from tlora_analysis.study import load_study

METHODS = ("lora", "lorafa", "tlora", "vera", "full")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    for method in METHODS:
        for seed in (0, 1):
            make_run(root / "runs" / f"{method}-s{seed}", method, rank=3, seed=seed)
    spec = {"method": list(METHODS), "seed": [0, 1]}
    (root / "study.json").write_text(json.dumps({"format": "tlora-analysis-study", "format_version": 1, "spec": spec, "cells": {}}))
    return load_study(root)


def dense(run, name, epoch):
    return run.deltas(epoch)[name].dense(torch.float64).numpy()


def test_each_cell_is_set_against_lora_of_its_seed_and_lora_against_the_next_seed(study):
    layers = ladder_layers(study)
    pairs = layers.groupby("run")[["partner", "pairing"]].first()
    for method in METHODS[1:]:
        for seed in (0, 1):
            assert tuple(pairs.loc[f"{method}-s{seed}"]) == (f"lora-s{seed}", SAME_SEED)
    assert tuple(pairs.loc["lora-s0"]) == ("lora-s1", OTHER_SEED) and tuple(pairs.loc["lora-s1"]) == ("lora-s0", OTHER_SEED)


def test_cosines_norm_ratios_and_bounds_match_dense_matrices(study):
    layers = ladder_layers(study)
    for row in layers.itertuples():
        ours, theirs = dense(study.run(row.run), row.name, row.epoch), dense(study.run(row.partner), row.name, row.epoch)
        assert row.cosine == pytest.approx((ours * theirs).sum() / (np.linalg.norm(ours) * np.linalg.norm(theirs)), rel=1e-8)
        assert row.norm_ratio == pytest.approx(np.linalg.norm(ours) / np.linalg.norm(theirs), rel=1e-8)
        method = row.method
        if method != "lora":  # and against LoRA of the other seed, whose random draws it does not share
            other = dense(study.run(f"lora-s{1 - row.seed}"), row.name, row.epoch)
            assert row.cosine_next_seed == pytest.approx((ours * other).sum() / (np.linalg.norm(ours) * np.linalg.norm(other)), rel=1e-8)
        if method in ("lora", "full"):  # nothing fixed: any update is reachable
            assert row.reachable_cosine == pytest.approx(1.0) and row.reachable_random == 1.0
            continue
        delta = study.run(row.run).deltas(row.epoch)[row.name]
        right = delta.right.double().numpy()
        fit = theirs @ np.linalg.pinv(right) @ right
        if method == "tlora":
            left = delta.left.double().numpy()
            fit = left @ np.linalg.pinv(left) @ fit
        assert row.reachable_cosine == pytest.approx(np.linalg.norm(fit) / np.linalg.norm(theirs), rel=1e-8)
        assert abs(row.cosine) <= row.reachable_cosine + 1e-12
        d_out, d_in = ours.shape
        expected_random = np.sqrt(3 / d_in * (3 / d_out if method == "tlora" else 1))
        assert row.reachable_random == pytest.approx(expected_random)


def test_cell_means_and_seed_folds(study):
    layers = ladder_layers(study)
    table = ladder(study, layers)
    assert set(table.run) == {f"{m}-s{s}" for m in METHODS for s in (0, 1)}
    for row in table.itertuples():
        assert row.cosine == pytest.approx(layers[layers.run == row.run].cosine.mean())
        assert row.final_metric == pytest.approx(0.8)  # make_run's accuracy after three epochs
    folded = ladder_over_seeds(table)
    cosine = folded[(folded.method == "tlora") & (folded.quantity == "cosine")].iloc[0]
    assert cosine.n == 2 and cosine["mean"] == pytest.approx(table[table.method == "tlora"].cosine.mean())
    assert isinstance(folded, pd.DataFrame) and "function_cosine" not in set(folded.quantity)


def test_ladder_figures_draw_from_the_table_and_ranks_need_two_ranks(study, tmp_path):
    from tlora_analysis.figures.ladder import plot_ladder, plot_ranks
    from tlora_analysis.figures.style import NothingToDraw

    folded = ladder_over_seeds(ladder(study))
    figure = plot_ladder(folded)
    assert len(figure.axes) == 1 and len(figure.axes[0].lines) > 0
    with pytest.raises(NothingToDraw, match="two or more ranks"):
        plot_ranks(folded)
    ranks = pd.concat([folded.assign(rank=r) for r in (2, 4)], ignore_index=True)
    assert len(plot_ranks(ranks).axes) == 3


def test_learning_rate_choice_takes_the_best_mean_and_minimises_losses():
    from tlora_analysis.results import learning_rate_choice

    table = pd.DataFrame({"method": ["lora"] * 3 + ["tlora"] * 3, "lr": [1e-4, 1e-3, 1e-2, 1e-2, 3e-2, 1e-1],
                          "quantity": "final_metric", "mean": [0.7, 0.9, 0.8, 0.5, 0.6, 0.55], "ci_low": 0.0, "ci_high": 1.0, "n": 2})
    chosen = learning_rate_choice(table, "accuracy").query("chosen")
    assert dict(zip(chosen.method, chosen.lr)) == {"lora": 1e-3, "tlora": 3e-2}
    chosen = learning_rate_choice(table, "perplexity").query("chosen")
    assert dict(zip(chosen.method, chosen.lr)) == {"lora": 1e-4, "tlora": 1e-2}
    tied = table.assign(mean=[0.9, 0.9, 0.8, 0.5, 0.6, 0.6]).iloc[::-1]  # ties, in any row order: the smaller rate, once
    chosen = learning_rate_choice(tied, "accuracy").query("chosen")
    assert dict(zip(chosen.method, chosen.lr)) == {"lora": 1e-4, "tlora": 3e-2} and len(chosen) == 2
    by_rank = pd.concat([table.assign(rank=8), table.assign(rank=32, mean=[0.7, 0.6, 0.5, 0.9, 0.6, 0.5])])
    chosen = learning_rate_choice(by_rank, "accuracy").query("chosen")  # another swept setting: a choice per rank
    assert dict(zip(chosen.group, chosen.lr)) == {"lora rank=8": 1e-3, "lora rank=32": 1e-4, "tlora rank=8": 3e-2,
                                                  "tlora rank=32": 1e-2}


def test_the_sweep_figure_draws_each_swept_group_and_leaves_out_single_rates():
    from tlora_analysis.figures.study import plot_learning_rates
    from tlora_analysis.figures.style import NothingToDraw

    runs = pd.DataFrame({"metric": ["accuracy"]})
    one_each = pd.DataFrame({"method": ["lora", "tlora"], "lr": [3e-3, 3e-2], "quantity": "final_metric", "mean": [1.0, 0.8],
                             "ci_low": 0.0, "ci_high": 1.0, "n": 2})
    with pytest.raises(NothingToDraw, match="two or more learning rates"):  # every method at its own single rate
        plot_learning_rates(one_each, runs)
    sweep = pd.concat([one_each.assign(rank=r) for r in (4, 32)] + [one_each[one_each.method == "tlora"].assign(rank=r, lr=1e-2, mean=0.9)
                                                                     for r in (4, 32)])
    figure = plot_learning_rates(sweep, runs)  # TLoRA at two ranks swept; LoRA at one rate per rank is left out
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["TLoRA rank=4", "TLoRA rank=32"]


def test_study_results_name_groups_and_carry_the_ladder_and_the_sweep(study):
    from tlora_analysis.analysis.seed_statistics import aggregate
    from tlora_analysis.results import study_results

    runs = study.runs
    lr = {m: 10.0 ** -(i % 2 + 2) for i, m in enumerate(METHODS)}
    runs = runs.assign(lr=[lr[m] for m in runs.method])
    table = ladder(study)
    tables = {"runs": runs, "runs_over_seeds": aggregate(runs[runs.status == "finished"], by=["method", "lr"],
                                                         values=["final_metric"]),
              "ladder_over_seeds": ladder_over_seeds(table),
              "claims": pd.DataFrame({"finding": [5, 5], "reading": "ratio", "headline": True, "threshold": "in [0.5, 2]",
                                      "mean": [1.2, 4.0], "ci_low": [1.1, 3.0], "ci_high": [1.3, 5.0], "holds_in": ["2/2", "0/2"],
                                      "verdict": ["holds", "does not hold"], "lora_group": "method=lora",
                                      "tlora_group": ["method=tlora init=a", "method=tlora init=b"]})}
    results = study_results(tables, ["method", "lr", "seed"])
    assert [(c["tlora_group"], c["holds_in"]) for c in results["claims"]] == [("method=tlora init=a", "2/2"), ("method=tlora init=b", "0/2")]
    assert set(results["methods"]) == set(METHODS)  # one lr per method: the method names the group
    assert results["methods"]["tlora"]["frozen_random_params"] > 0 and results["methods"]["lora"]["frozen_random_params"] == 0
    bound = results["ladder"]["tlora"]["reachable_cosine"]
    assert bound["n"] == 2 and bound["mean"] == pytest.approx(table[table.method == "tlora"].reachable_cosine.mean(), rel=1e-3)
    assert "learning_rates" not in results


def test_ranks_amplification_and_intruders_per_cell_are_those_of_the_per_run_analyses(study):
    """The ladder's own-update columns equal effective_rank, amplification and intruder_counts of each run."""
    from tlora_analysis import analysis as A

    run = study.run("tlora-s1")
    generator = torch.Generator().manual_seed(7)
    base = {name: torch.randn(delta.shape, generator=generator, dtype=torch.float64) for name, delta in run.deltas(run.epochs[-1]).items()}
    layers = ladder_layers(study, base_weights=base)
    ours = layers[layers.run == "tlora-s1"].set_index("name")
    last = [run.epochs[-1]]
    ranks = A.effective_rank(run, last).set_index("name")
    amplification = A.amplification(run, base, last).set_index("name")
    for name, row in ours.iterrows():
        assert row.stable_rank == pytest.approx(ranks.loc[name, "stable_rank"])
        assert row.entropy_rank == pytest.approx(ranks.loc[name, "entropy_rank"])
        assert row.amplification == pytest.approx(amplification.loc[name, "amplification"], rel=1e-9)
    assert ours.intruders.sum() == A.intruder_dimensions(run, base, last).is_intruder.sum()
    assert ladder_layers(study).amplification.isna().all()  # no base: not computed, never guessed
    assert len(A.intruder_counts(A.intruder_dimensions(run, base, last))) == len(ours)


def test_the_atlas_places_every_method_and_tabulates_each_number_with_its_ci(study):
    from tlora_analysis.figures.atlas import atlas_table, plot_atlas, plot_atlas_table
    from tlora_analysis.figures.style import NothingToDraw

    folded = ladder_over_seeds(ladder(study))
    figure = plot_atlas(folded)
    assert len(figure.axes[0].collections) >= len(METHODS)  # one point (and its error bars) per method
    table = atlas_table(folded)
    assert len(table) == len(METHODS) and {"accuracy", "cos with LoRA", "stable rank", "effective rank"} <= set(table.columns)
    tlora = folded[(folded.method == "tlora") & (folded.quantity == "cosine")].iloc[0]
    assert table.set_index("method").loc["TLoRA", "cos with LoRA"] == f"{tlora['mean']:.3f} [{tlora.ci_low:.3f}, {tlora.ci_high:.3f}]"
    assert "amplification" not in table.columns  # no base weights: the column is left out
    assert plot_atlas_table(folded).axes
    with pytest.raises(NothingToDraw, match="fewer than 3 methods"):
        plot_atlas(folded[folded.method.isin(["lora", "tlora"])])
