"""Every figure renders from small runs; figures.json and the report describe what was drawn."""

import json
import subprocess
import sys

import pytest

from helpers import make_run
from tlora_analysis import adapter_layers
from tlora_analysis.analysis import compare_runs, paper_claims
from tlora_analysis.cli import main
from tlora_analysis.figures import FIGURES, render_all
from tlora_analysis.report import write_report
from tlora_analysis.store import load_run


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    model = make_run(root / "lora", "lora", rank=4, epochs=3)
    make_run(root / "tlora", "tlora", rank=3, epochs=3)
    weights = {name: layer.base.weight.detach() for name, layer in adapter_layers(model).items()}
    lora, tlora = load_run(root / "lora"), load_run(root / "tlora")
    return lora, tlora, compare_runs([lora, tlora], weights, baseline_samples=8)


def test_render_all_writes_every_figure_and_a_manifest(tmp_path, pair):
    lora, tlora, tables = pair
    entries = render_all(tables, tmp_path, sources={"lora": str(lora.path), "tlora": str(tlora.path)}, settings={"bins": 40})
    names = {e["name"] for e in entries}
    assert names == set(FIGURES) - {"gradient_norms"} | {"overview"}  # toy runs record no gradient norms
    skipped = json.loads((tmp_path / "figures.json").read_text())["skipped"]
    assert [(s["name"], s["needs"]) for s in skipped] == [("gradient_norms", ["grad_norms"])]
    for entry in entries:
        for file in entry["files"]:
            path = tmp_path / file
            assert path.stat().st_size > 10_000, file  # a real picture, not an empty canvas
        assert (tmp_path / f"{entry['name']}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{entry['name']}.pdf").read_bytes()[:5] == b"%PDF-"
    manifest = json.loads((tmp_path / "figures.json").read_text())
    assert manifest["sources"] == {"lora": str(lora.path), "tlora": str(tlora.path)}
    assert manifest["settings"] == {"bins": 40}
    assert {f["name"] for f in manifest["figures"]} == names


def test_figures_without_base_weights_skip_only_what_needs_them(tmp_path, pair):
    tables = {k: v for k, v in pair[2].items() if k not in ("amplification", "intruders", "intruder_counts")}
    names = {e["name"] for e in render_all(tables, tmp_path)}
    assert names == set(FIGURES) - {"intruders", "gradient_norms"} | {"overview"}


def test_claims_and_report(tmp_path, pair):
    lora, tlora, tables = pair
    claims = paper_claims(tables)
    headline = claims[claims.headline]
    assert list(headline.finding) == [1, 2, 3, 4, 5, 6] and claims.epoch.iloc[0] == 3
    undecided = claims[claims.holds.isna()]
    assert undecided.reason.str.len().gt(0).all() and claims[claims.holds.notna()].value.notna().all()
    # α drawn per layer with spread 0.5 varies across layers (finding 3); random factors drawn
    # independently are not alike (finding 6).
    assert (headline.holds.iloc[2], headline.holds.iloc[5]) == (True, False)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / "report.html").symlink_to(precious)  # a planted link is replaced, not written through
    out = write_report(tables, [lora, tlora], tmp_path / "report.html")
    assert precious.read_text() == "keep me" and not out.is_symlink()
    page = out.read_text()
    assert "checked on these runs" in page and page.count("data:image/png;base64,") == len(FIGURES)  # every figure but gradient norms, and the overview
    assert page.count("<tr><td class='text'>") >= 6
    assert json.loads(out.with_suffix(".claims.json").read_text())[0]["claim"].startswith("1.")


def test_report_embeds_each_figure_in_256_colours(tmp_path):
    """The page's copy of a figure is a third of the file's size, and no pixel moves by more than a few levels."""
    import base64
    import io

    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from tlora_analysis.report import _embedded_png

    figure, axes = plt.subplots(1, 2, figsize=(8, 3))
    axes[0].imshow(np.random.default_rng(0).normal(size=(40, 60)), cmap="viridis")
    axes[1].plot(np.sin(np.linspace(0, 9, 200)), label="sin")
    axes[1].legend()
    figure.savefig(tmp_path / "f.png", dpi=150)
    plt.close(figure)
    embedded = base64.b64decode(_embedded_png(tmp_path / "f.png"))
    with Image.open(io.BytesIO(embedded)) as page, Image.open(tmp_path / "f.png") as file:
        error = np.abs(np.asarray(page.convert("RGB"), float) - np.asarray(file.convert("RGB"), float))
    assert error.max() <= 16 and error.mean() < 1
    assert len(embedded) < (tmp_path / "f.png").stat().st_size / 2


def test_cli_figures_report_and_analyze(tmp_path, pair, capsys):
    lora, tlora, _ = pair
    assert main(["figures", str(lora.path), str(tlora.path), "--out", str(tmp_path / "figs"), "--no-base", "--formats", "png"]) == 0
    assert (tmp_path / "figs" / "overview.png").exists()
    settings = json.loads((tmp_path / "figs" / "figures.json").read_text())["settings"]
    assert settings["base"] is None and settings["histogram_bins"] == 40 and settings["intruder_epsilon"] == 0.5
    assert main(["report", str(lora.path), str(tlora.path), "--out", str(tmp_path / "figs" / "r.html"), "--no-base"]) == 0
    assert main(["analyze", str(lora.path), str(tlora.path), "--out", str(tmp_path / "tables"), "--no-base"]) == 0
    assert (tmp_path / "tables" / "similarity.csv").exists()
    assert main(["analyze", str(tlora.path), "--out", str(tmp_path / "single"), "--no-base"]) == 0
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == sorted(
        f"{n}.csv" for n in ("spectra", "norms", "effective_rank", "weight_stats", "weight_histograms", "subspace_epochs", "scales", "summary",
                             "metrics"))  # toy runs record no gradient norms: no empty grad_norms.csv
    # the order of the runs does not matter, and a run without a base model asks for one
    assert main(["analyze", str(tlora.path), str(lora.path), "--out", str(tmp_path / "x"), "--no-base"]) == 0
    assert (tmp_path / "x" / "similarity.csv").read_bytes() == (tmp_path / "tables" / "similarity.csv").read_bytes()
    assert main(["analyze", str(tlora.path), "--out", str(tmp_path / "y")]) == 2
    assert "names no base model; pass --base MODEL or --no-base" in capsys.readouterr().err


def test_every_option_of_every_command_has_help(capsys):
    import argparse

    from tlora_analysis.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"train", "study", "analyze", "figures", "report", "compare", "tasks", "reproduce", "inspect",
                                          "export"}
    for name, parser in subparsers.choices.items():
        assert parser.description, name
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and len(action.help) > 10, (name, action.dest)
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0 and "usage: tlora-analysis " + name in capsys.readouterr().out


def test_python_dash_m_works():
    result = subprocess.run([sys.executable, "-m", "tlora_analysis", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "reproduce" in result.stdout and "inspect" in result.stdout


def test_log_axes_write_their_ticks_as_numbers_not_mathtext_source():
    """Text is drawn literally (labels may hold "$"), so a log axis's ticks need plain numbers: the atlas's
    once read "$\\mathdefault{10^{-1}}$"."""
    import matplotlib.pyplot as plt

    from tlora_analysis.figures.style import log_axis, style

    with style():
        fig, ax = plt.subplots()
        ax.plot([0.01, 1, 10], [0.001, 0.1, 1])
        log_axis(ax, "x")
        log_axis(ax, "y", "symlog", linthresh=1e-2)
        fig.canvas.draw()
        labels = [t.get_text() for t in (*ax.get_xticklabels(), *ax.get_yticklabels()) if t.get_text()]
        plt.close(fig)
    assert labels and not any("$" in label or "mathdefault" in label for label in labels), labels
    assert {"0.01", "1", "10"} <= set(labels)


def test_a_figure_drawn_from_the_same_tables_is_kept_and_any_change_draws_it_again(tmp_path, pair):
    """A warm ``figures`` into the same folder draws only what changed: a table, a file of its own, or the formats."""
    _, _, tables = pair
    render_all(tables, tmp_path, formats=("png",))
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.png")}
    (tmp_path / "spectra.png").write_bytes(b"edited")  # a file someone changed: drawn again
    changed = {**tables, "norms": tables["norms"].assign(frobenius=tables["norms"].frobenius * 2)}  # its table changed
    entries = render_all(changed, tmp_path, formats=("png",))
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.glob("*.png")}
    redrawn = {name for name in before if after[name][0] != before[name][0]}
    from_norms = {f"{name}.png" for name, (_, needs, _) in FIGURES.items() if "norms" in needs}
    assert redrawn == {"spectra.png", "overview.png"} | from_norms and "norms.png" in from_norms  # the overview: every time
    assert after["spectra.png"][1] == before["spectra.png"][1]  # the same picture as before the edit
    kept = next(e for e in entries if e["name"] == "effective_rank")
    assert kept["inputs_sha256"] and list(kept["file_sha256"]) == kept["files"] == ["effective_rank.png"]
    render_all(changed, tmp_path, formats=("png", "pdf"))
    assert all((tmp_path / f"{name}.pdf").is_file() for name in FIGURES if name != "gradient_norms")
