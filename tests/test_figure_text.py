"""Every text a figure draws is read by a person: no mathtext source on a log axis, no internal state number
("epoch -1"), no panel that explains what the sources do not include. Each registered figure is drawn through
the real saving path for three kinds of source sets, and every text artist is read after the draw."""

import re

import matplotlib.figure
import matplotlib.text
import pytest
import torch

from helpers import ToyModel, make_run
from tlora_analysis import adapter_layers
from tlora_analysis.analysis import compare_runs
from tlora_analysis.figures import render_all

peft = pytest.importorskip("peft")

MATHTEXT = re.compile(r"\$|\\mathdefault|\^\{")
INTERNAL_STATE = re.compile(r"epoch\s*[−-]\s*1\b|\(\s*[−-]1\s*\)")
PLACEHOLDER = re.compile(r"needs? an? |not available|no \w+ run", re.IGNORECASE)


def peft_adapter(path, config):
    torch.manual_seed(3)
    model = peft.get_peft_model(ToyModel(3), config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape) * 0.05)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def source_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    model = make_run(root / "lora", "lora", rank=4, epochs=3)
    make_run(root / "tlora", "tlora", rank=3, epochs=3, seed=1)
    weights = {name: layer.base.weight.detach() for name, layer in adapter_layers(model).items()}
    targets = ["query", "value"]
    adapters = {
        "peft-lora": peft_adapter(root / "peft-lora", peft.LoraConfig(r=4, target_modules=targets, init_lora_weights=False)),
        "peft-loha": peft_adapter(root / "peft-loha", peft.LoHaConfig(r=4, target_modules=targets, init_weights=False)),
        "peft-lokr": peft_adapter(root / "peft-lokr", peft.LoKrConfig(r=4, target_modules=targets, init_weights=False)),
    }
    runs = {"lora": str(root / "lora"), "tlora": str(root / "tlora")}
    return {
        "runs": (runs, weights),
        "adapters": (adapters, None),
        "mix": ({**runs, "peft-lora": adapters["peft-lora"], "peft-loha": adapters["peft-loha"]}, None),
    }


@pytest.mark.parametrize("kind", ["runs", "adapters", "mix"])
def test_every_text_a_figure_draws_is_plain_and_about_the_sources_given(tmp_path, source_sets, kind, monkeypatch):
    sources, weights = source_sets[kind]
    texts: list[list[str]] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(fig, target, *args, **kwargs):
        real_savefig(fig, target, *args, **kwargs)  # draws: tick labels exist from here on
        drawn = [t.get_text() for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        for ax in fig.axes:  # a state as an axis tick: "-1" under "epoch" is the internal number of a one-state source
            for axis in (ax.xaxis, ax.yaxis):
                low, high = sorted(axis.get_view_interval())
                if axis.get_label().get_text() == "epoch":  # ticks outside the view are kept by matplotlib but not drawn
                    drawn += [f"epoch {t.get_text()}" for tick, t in zip(axis.get_majorticklocs(), axis.get_majorticklabels())
                              if low <= tick <= high and t.get_text().strip()]
        texts.append(drawn)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    tables = compare_runs(sources, weights, baseline_samples=4)
    entries = render_all(tables, tmp_path, formats=("png",))
    assert entries and len(texts) == len(entries)
    problems = [(entry["name"], text) for entry, drawn in zip(entries, texts) for text in drawn
                if MATHTEXT.search(text) or INTERNAL_STATE.search(text) or PLACEHOLDER.search(text)]
    assert not problems, problems[:10]
    every_text = " ".join(text for drawn in texts for text in drawn)
    for label in sources:
        assert label in every_text, label  # every source is named somewhere it is drawn


def test_long_commands_say_each_phase_when_stderr_is_no_terminal(tmp_path, source_sets):
    from helpers import cli

    runs, _ = source_sets["runs"]
    result = cli("figures", *runs.values(), "--out", tmp_path / "f", "--no-base", "--formats", "png")
    assert result.returncode == 0, result.stderr
    phases = [line for line in result.stderr.splitlines() if line.startswith("tlora-analysis: progress: ")]
    assert [p.split(": ")[2].split(" (")[0] for p in phases] == ["opened 2 sources", "computed the tables of 2 sources", "drew 13 figures"]
    quiet = cli("figures", *runs.values(), "--out", tmp_path / "f", "--no-base", "--formats", "png", "--no-progress")  # kept: not drawn again
    assert quiet.returncode == 0 and "progress" not in quiet.stderr


def test_the_settings_table_holds_each_sources_own_fields(source_sets):
    from tlora_analysis.analysis.summary import source_settings
    from tlora_analysis.sources import open_sources

    runs, _ = source_sets["runs"]
    adapters, _ = source_sets["adapters"]
    table = source_settings(open_sources({**runs, "peft-lora": adapters["peft-lora"]}))
    assert table.loc["rank", "lora"] == "4" and table.loc["rank", "tlora"] == "3"  # integers written as integers
    assert table.loc["init", "tlora"] != "—" and table.loc["init", "lora"] == "—"  # TLoRA's option, not LoRA's
    assert set(table.loc["targets", "peft-lora"].split(", ")) == {"query", "value"}  # from the adapter's own config
    assert int(table.loc["trained numbers", "peft-lora"].replace(",", "")) > 0 and table.loc["epochs", "peft-lora"] == "one saved state"
    assert not any(".0" == value[-2:] for value in table.loc[["rank", "seed"]].to_numpy().ravel())


@pytest.fixture(scope="module")
def mix_tables(source_sets):
    sources, _ = source_sets["mix"]
    return compare_runs(sources, None, baseline_samples=4)


def test_every_source_drawn_has_its_own_colour_and_style_pair(mix_tables):
    from tlora_analysis.figures.style import source_styles

    styles = source_styles(mix_tables["norms"])
    looks = [(s["color"], s["linestyle"], s["marker"]) for s in styles.values()]
    assert len(styles) == 4 and len(set(looks)) == len(looks)
    assert len({(s["linestyle"], s["marker"]) for s in styles.values()}) == len(looks)  # apart in grey print too


def test_effective_rank_draws_adapters_at_final_and_each_sources_nominal_rank(mix_tables):
    from tlora_analysis.figures.geometry import effective_rank

    fig = effective_rank(mix_tables["effective_rank"])
    legend = " ".join(t.get_text() for t in fig.axes[1].get_legend().get_texts())
    assert "peft-lora" in legend and "peft-loha" in legend  # one-state sources are drawn, not dropped
    ranks = sorted(int(t.get_text().split("≤")[1].split()[0]) for t in fig.axes[1].texts if "rank ≤" in t.get_text())
    assert ranks == [3, 4, 16], ranks  # TLoRA's r = 3, LoRA's r = 4, LoHa's r² = 16; never a layer's full width
    assert fig.axes[1].get_ylim()[1] < 20


def test_weight_histograms_draw_a_one_state_source_once(mix_tables):
    from tlora_analysis.figures.dynamics import weight_histograms

    fig = weight_histograms(mix_tables["weight_histograms"], mix_tables["weight_stats"])
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    adapter_titles = [t for t in titles if t.startswith("peft-lora")]
    assert adapter_titles and len(adapter_titles) == len(set(adapter_titles))


def test_intruder_labels_stay_readable_with_many_layers():
    import pandas as pd

    from tlora_analysis.figures.geometry import intruders

    rows = [{"run": "lora", "method": "lora", "module": m, "layer": layer, "epoch": 3, "k": 10, "intruders": layer % 3}
            for m in ("q_proj", "k_proj", "v_proj", "o_proj") for layer in range(32)]
    amplification = pd.DataFrame([{**r, "amplification": 1.0 + r["layer"]} for r in rows])
    fig = intruders(pd.DataFrame(rows), amplification)
    ticks = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(ticks) <= 48 and all(t.get_rotation() == 90 for t in ticks)


def test_intruder_labels_name_modules_by_their_own_short_names():
    from tlora_analysis.figures.geometry import _module_letters

    assert _module_letters(["attention.self.query", "attention.self.value"]) == {"attention.self.query": "q", "attention.self.value": "v"}
    assert _module_letters(["q_proj", "k_proj"]) == {"q_proj": "q", "k_proj": "k"}
    assert len(set(_module_letters(["attention.output.dense", "output.dense"]).values())) == 2


def test_figures_drawn_by_workers_are_the_files_drawn_here(tmp_path, mix_tables):
    import json

    one = render_all(mix_tables, tmp_path / "one", formats=("png",), jobs=1)
    two = render_all(mix_tables, tmp_path / "two", formats=("png",), jobs=2)
    assert one == two
    assert json.loads((tmp_path / "one" / "figures.json").read_text()) == json.loads((tmp_path / "two" / "figures.json").read_text())
    for entry in one:
        for file in entry["files"]:
            assert (tmp_path / "one" / file).read_bytes() == (tmp_path / "two" / file).read_bytes(), file


def test_a_ci_of_identical_seeds_draws_zero_bars_not_an_error():
    """Every seed at one value: the CI meets its mean only to rounding, and matplotlib refuses a bar of -1e-17."""
    import numpy as np

    from tlora_analysis.figures.style import ci_bars

    bars = ci_bars([0.7], [0.7 + 1e-17 * 5], [0.7])
    assert bars.shape == (2, 1) and (bars >= 0).all()
    assert ci_bars(0.5, np.nan, np.nan) is None
    assert np.allclose(ci_bars([0.5, 0.6], [0.4, 0.5], [0.55, 0.7]), [[0.1, 0.1], [0.05, 0.1]])
