"""Reports over any sources without double work: a report written beside a figures output reuses its
tables and figures (runs and studies), and a study that does not sweep seed draws and reports."""

import json

from helpers import make_run
from tlora_analysis.cli import main


def test_a_report_beside_its_figures_reuses_their_tables_and_says_so(tmp_path, capsys):
    make_run(tmp_path / "lora", "lora", epochs=2)
    make_run(tmp_path / "tlora", "tlora", epochs=2)
    sources = [str(tmp_path / "lora"), str(tmp_path / "tlora")]
    assert main(["figures", *sources, "--out", str(tmp_path / "figs"), "--no-base", "--formats", "png"]) == 0
    capsys.readouterr()
    assert main(["report", *sources, "--out", str(tmp_path / "figs" / "report.html"), "--no-base"]) == 0
    assert "reusing the tables and figures" in capsys.readouterr().out
    assert main(["report", *sources, "--out", str(tmp_path / "fresh" / "report.html"), "--no-base"]) == 0
    assert "reusing" not in capsys.readouterr().out
    reused = json.loads((tmp_path / "figs" / "report.claims.json").read_text())
    fresh = json.loads((tmp_path / "fresh" / "report.claims.json").read_text())
    assert [(r["reading"], r["holds"], r["statistic"]) for r in reused] == [(r["reading"], r["holds"], r["statistic"]) for r in fresh]
    (tmp_path / "figs" / "figures.json").write_text((tmp_path / "figs" / "figures.json").read_text().replace('"fingerprint": "', '"fingerprint": "x'))
    assert main(["report", *sources, "--out", str(tmp_path / "figs" / "report.html"), "--no-base"]) == 0
    assert "reusing" not in capsys.readouterr().out  # changed sources (here: a changed fingerprint) are computed afresh


def test_a_study_that_does_not_sweep_seed_draws_and_reports(tmp_path, tiny_model_dir, capsys):
    from tlora_analysis.study import run_study

    spec = {"method": ["lora", "tlora"], "model": tiny_model_dir, "epochs": 1, "max_train_samples": 16, "max_eval_samples": 8,
            "batch_size": 8, "max_length": 16}
    study = run_study(spec, tmp_path / "study", progress=False, log=lambda _: None)
    assert set(study.runs.status) == {"finished"} and "seed" not in study.runs.columns
    assert main(["figures", str(study.path), "--out", str(tmp_path / "figures"), "--no-base", "--formats", "png"]) == 0
    assert main(["report", str(study.path), "--out", str(tmp_path / "report.html"), "--no-base"]) == 0
    capsys.readouterr()
    assert main(["report", str(study.path), "--out", str(tmp_path / "figures" / "report.html"), "--no-base"]) == 0
    assert "reusing the tables and figures" in capsys.readouterr().out
    fresh, reused = (tmp_path / "report.html").read_text(), (tmp_path / "figures" / "report.html").read_text()
    assert fresh.count("data:image/png") == reused.count("data:image/png") and fresh.count("<tr>") == reused.count("<tr>")
