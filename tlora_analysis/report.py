"""A self-contained HTML report: run settings, metrics, summary, every figure, and the paper's claims checked."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from PIL import Image

from .analysis import paper_claims
from .errors import InputError
from .figures import FIGURES, render_all
from .figures.style import method_label
from .io import atomic_write_bytes
from .states import state_name

CSS = """
body { font-family: system-ui, sans-serif; max-width: min(1500px, 94vw); margin: 2em auto; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; display: block; max-width: 100%; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #f3f3f3; }
td.text { text-align: left; }
.holds { background: #d9f2d9; } .fails { background: #f8d7d3; } .mixed { background: #fcefc7; } .unknown { background: #eee; }
h3 { margin-top: 1.2em; } td.text, th.text { text-align: left; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 3px; }
td:first-child, th { white-space: nowrap; }
table.claims { display: table; table-layout: fixed; width: 100%; }
table.claims td, table.claims th { white-space: normal; overflow-wrap: anywhere; vertical-align: top; }
table.claims td.verdict { font-weight: 600; text-align: center; }
dl.spec { display: grid; grid-template-columns: max-content auto; gap: 0 1em; } dl.spec dt { font-weight: 600; } dl.spec dd { margin: 0; }
"""


def _number(value) -> str:
    """Whole numbers (parameter counts) with thousands separators, others to four significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _spec_list(spec: dict) -> str:
    """A study spec as a definition list: one setting per line, lists and per-method tables inline."""
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd><code>{html.escape(json.dumps(v))}</code></dd>" for k, v in spec.items())
    return f"<dl class='spec'>{items}</dl>"


def _claims_table(claims: pd.DataFrame) -> str:
    rows = []
    for claim in claims.itertuples(index=False):
        verdict, css = {True: ("holds", "holds"), False: ("does not hold", "fails")}.get(claim.holds, ("not computed", "unknown"))
        reading = f"<b>{html.escape(claim.reading)}</b>" if claim.headline else html.escape(claim.reading)
        rows.append(f"<tr><td class='text'>{html.escape(claim.claim)}</td><td class='text'>{reading}</td>"
                    f"<td class='text'>{html.escape(claim.statistic)}</td><td class='text'>{html.escape(claim.threshold)}</td>"
                    f"<td class='{css} verdict'>{verdict}</td><td class='text'>{html.escape(claim.reason)}</td></tr>")
    widths = "".join(f"<col style='width:{w}%'>" for w in (16, 20, 16, 12, 10, 26))
    return (f"<table class='claims'><colgroup>{widths}</colgroup><tr><th>finding (TLoRA paper)</th><th>reading (headline in bold)</th>"
            "<th>statistic on these runs</th><th>threshold</th><th>verdict</th><th>reason</th></tr>" + "".join(rows) + "</table>")


def _settings(runs: Sequence) -> str:
    from .analysis.summary import source_settings

    return source_settings(runs).to_html(na_rep="—")


def _metrics(runs: Sequence) -> str:
    rows = [{"run": run.name, "epoch": epoch, **metrics} for run in runs for epoch, metrics in run.metrics.items()]
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")


def _written_by_report(path: Path, suffix: str) -> bool:
    """Whether ``path`` looks like the claims file a report writes: a JSON list of readings, or their CSV."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with path.open("rb") as handle:
            start = handle.read(4096).decode("utf-8", "replace").lstrip()
    except OSError:
        return False
    if suffix == ".claims.json":
        return start.startswith("[") and '"finding"' in start
    header = start.split("\n", 1)[0].split(",")
    return "finding" in header and "reading" in header


def check_claims_sibling(out: Path, suffix: str) -> None:
    """Refuse, before anything is written, to replace a file beside ``out`` named like the claims file
    (``x.claims.json`` for ``x.html``) that a report did not write."""
    sibling = out.with_suffix(suffix)
    if (sibling.exists() or sibling.is_symlink()) and not _written_by_report(sibling, suffix):
        raise InputError(f"{sibling}: exists and was not written by report, which writes its claims there for --out {out}; "
                         "move it or choose another --out")


def write_report(tables: Mapping[str, pd.DataFrame], runs: Sequence, out: str | Path, figure_dir: str | Path | None = None) -> Path:
    """Write the report to ``out``. Figures are taken from ``figure_dir`` if given, else rendered afresh."""
    out = Path(out)
    check_claims_sibling(out, ".claims.json")
    with tempfile.TemporaryDirectory() as scratch:
        if figure_dir is None:
            figure_dir = Path(scratch)
            render_all(tables, figure_dir, formats=("png",))  # the page embeds PNGs alone
        figure_dir = Path(figure_dir)
        figures = []
        for name in ["overview", *FIGURES]:
            caption = "key panels side by side" if name == "overview" else FIGURES[name][2]
            figures.append(_figure_html(figure_dir, name, caption))
    has_pair = "similarity" in tables and "scales" in tables
    claims = paper_claims(tables) if has_pair else None
    methods = ", ".join(dict.fromkeys(method_label(r.method) for r in runs))
    body = [
        f"<h1>{html.escape(methods)}: adaptation dynamics</h1>",
        f"<p>Runs: {', '.join(html.escape(str(r.path)) for r in runs)}. Every quantity is defined in the project's "
        "<code>docs/quantities.md</code>.</p>",
        "<h2>The paper's claims, checked on these runs</h2>",
        (f"<p>Checked on the LoRA and TLoRA runs at the last epoch both share ({state_name(claims.epoch.iloc[0])}).</p>"
         + _claims_table(claims)) if has_pair else "<p>The paper's claims compare a LoRA run with a TLoRA run; these runs have no such pair.</p>",
        "<h2>Summary</h2>", tables["summary"].set_index("run").T.to_html(float_format=_number, na_rep=""),
        "<h2>Metrics per epoch</h2>", _metrics(runs),
        "<h2>Figures</h2>", *figures,
        "<h2>Run settings</h2>", _settings(runs),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Atomic: a full disk leaves the previous report whole, and a planted link is replaced, not written through.
    atomic_write_bytes(out, (f"<!doctype html><html><head><meta charset='utf-8'><title>tlora-analysis report</title><style>{CSS}</style></head>"
                             f"<body>{''.join(body)}</body></html>\n").encode())
    if claims is not None:
        atomic_write_bytes(out.with_suffix(".claims.json"), (json.dumps(claims.to_dict(orient="records"), indent=2) + "\n").encode())
    return out


def _verdict_cell(verdict: str, text: str) -> str:
    css = {"holds": "holds", "does not hold": "fails", "mixed": "mixed"}.get(verdict, "unknown")
    return f"<td class='{css} verdict'>{html.escape(text)}</td>"


def _audit(claims: pd.DataFrame, per_seed: pd.DataFrame) -> str:
    """One table per TLoRA group: each finding's readings with mean [CI] over seeds, threshold, k/n and reason."""
    parts = []
    for (lora_group, tlora_group), rows in claims.groupby(["lora_group", "tlora_group"], sort=False):
        body = []
        for _, readings in rows.groupby("finding", sort=False):
            body.append(f"<tr><th colspan='5' class='text'>{html.escape(readings.claim.iloc[0])}</th></tr>")
            for r in readings.itertuples():
                seeds = per_seed[(per_seed.tlora_group == tlora_group) & (per_seed.reading == r.reading)]
                reason = seeds.reason.mode().iloc[0] if len(seeds) else ""
                value = "—" if pd.isna(r.mean) else f"{r.mean:.3g}" + ("" if pd.isna(r.ci_low) else f" [{r.ci_low:.3g}, {r.ci_high:.3g}]")
                name = f"<b>{html.escape(r.reading)}</b> (headline)" if r.headline else html.escape(r.reading)
                body.append(f"<tr><td class='text'>{name}</td><td>{value}</td><td class='text'>{html.escape(r.threshold)}</td>"
                            + _verdict_cell(r.verdict, f"{r.verdict} ({r.holds_in})") + f"<td class='text'>{html.escape(reason)}</td></tr>")
        parts.append(f"<h3>LoRA ({html.escape(lora_group)}) vs TLoRA ({html.escape(tlora_group)})</h3>"
                     "<table class='claims'><colgroup><col style='width:30%'><col style='width:16%'><col style='width:12%'>"
                     "<col style='width:14%'><col style='width:28%'></colgroup><tr><th>reading</th><th>mean [95% CI] over seeds</th>"
                     "<th>threshold</th><th>verdict (seeds)</th><th>reason (most seeds)</th></tr>" + "".join(body) + "</table>")
    return "".join(parts)


def verdict_map(claims: pd.DataFrame) -> pd.DataFrame:
    """Readings x TLoRA groups: each cell "verdict k/n (mean)", for laying out how verdicts move with the settings."""
    cells = claims.assign(cell=[f"{v} {k} ({'—' if pd.isna(m) else f'{m:.3g}'})" for v, k, m in zip(claims.verdict, claims.holds_in, claims["mean"])])
    table = cells.pivot_table(index=["finding", "reading"], columns="tlora_group", values="cell", aggfunc="first", sort=False)
    return table.reset_index()


def verdict_classes(claims: pd.DataFrame) -> dict[str, list[str]]:
    """Readings that hold in every seed of every TLoRA setting, in none of them, or depend on the setting (or seed)."""
    out: dict[str, list[str]] = {"always hold": [], "never hold": [], "depend on the setting or seed": [], "not computed": []}
    for (finding, reading), rows in claims.groupby(["finding", "reading"], sort=False):
        verdicts = set(rows.verdict)
        label = f"{finding}. {reading}"
        if verdicts == {"holds"}:
            out["always hold"].append(label)
        elif verdicts == {"does not hold"}:
            out["never hold"].append(label)
        elif verdicts == {"not computed"}:
            out["not computed"].append(label)
        else:
            out["depend on the setting or seed"].append(label)
    return out


def _verdict_map_html(claims: pd.DataFrame) -> str:
    classes = "".join(f"<p><b>{html.escape(name)}</b> ({len(items)}): {html.escape('; '.join(items)) or '—'}</p>"
                      for name, items in verdict_classes(claims).items())
    return classes + _verdict_table_html(claims)


def _verdict_table_html(claims: pd.DataFrame) -> str:
    table = verdict_map(claims)
    groups = [c for c in table.columns if c not in ("finding", "reading")]
    head = "<tr><th>reading</th>" + "".join(f"<th>{html.escape(g)}</th>" for g in groups) + "</tr>"
    rows = []
    for r in table.itertuples(index=False):
        cells = "".join(_verdict_cell(str(v).split(" ")[0] if str(v).startswith(("holds", "mixed")) else
                                      "does not hold" if str(v).startswith("does") else "", str(v)) for v in r[2:])
        rows.append(f"<tr><td class='text'>{r.finding}. {html.escape(r.reading)}</td>{cells}</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def _embedded_png(png: Path) -> str:
    """The figure as base64 of a 256-colour PNG, a third of the size: a page of a study's figures stays under
    2 MB, and no channel moves by more than a few levels of 255 (the PNG and PDF files keep full colour)."""
    with Image.open(png) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode()


def _figure_html(figure_dir: Path, name: str, caption: str) -> str:
    png = figure_dir / f"{name}.png"
    if not png.exists():
        return ""
    return f"<figure><img alt='{name}' src='data:image/png;base64,{_embedded_png(png)}'><figcaption><b>{name}</b>: {html.escape(caption)}</figcaption></figure>"


SECTION_FIGURES = {
    "runs": ("study_accuracy_vs_parameters", "study_metric", "study_learning_rates"),
    "claims": ("study_verdict_map", "study_claims"),
    "ladder": ("study_atlas", "study_atlas_table", "study_ladder", "study_ranks"),
    "controls": ("study_controls",),
}
"""Study figures shown beside the table they support; every other figure follows at the end."""

LADDER_COLUMNS = ("final_metric", "trainable_params", "frozen_random_params", "cosine", "cosine_next_seed", "reachable_cosine",
                  "reachable_random", "function_cosine", "norm_ratio", "stable_rank", "entropy_rank", "amplification", "intruders")


def _ladder_html(over_seeds: pd.DataFrame) -> str:
    """The ladder as one row per method and setting group: each quantity's mean with its 95% CI."""
    keys = [c for c in over_seeds.columns if c not in ("quantity", "mean", "std", "n", "ci_low", "ci_high")]
    cell = over_seeds.assign(text=[_number(m) + ("" if pd.isna(lo) or lo == hi else f" [{_number(lo)}, {_number(hi)}]")
                                   for m, lo, hi in zip(over_seeds["mean"], over_seeds.ci_low, over_seeds.ci_high)])
    wide = cell.pivot_table(index=keys, columns="quantity", values="text", aggfunc="first").reset_index()
    wide = wide[[*keys, *(c for c in LADDER_COLUMNS if c in wide.columns)]].rename_axis(columns=None)
    wide["method"] = wide.method.map(method_label)
    return ("<p>Each method against LoRA of the same seed (LoRA: against LoRA of the next seed). <code>reachable_cosine</code> "
            "bounds the cosine any update of the method's fixed subspaces could have with LoRA's ΔW; <code>reachable_random</code> "
            "is that bound for random subspaces of the same sizes; <code>cosine_next_seed</code> is the cosine with LoRA of "
            "another seed, whose random draws the method does not share. <code>stable_rank</code> and <code>entropy_rank</code> "
            "count the update's own directions; with the base weights, <code>amplification</code> is ‖ΔW‖_F / ‖UᵀW0V‖_F and "
            "<code>intruders</code> the intruder dimensions per layer among the merged weight's top singular vectors. "
            "Every per-layer number is averaged over layers, then given as mean [95% CI] over seeds.</p>"
            + wide.to_html(index=False, na_rep="", escape=True))


def _study_sections(tables: Mapping[str, pd.DataFrame], figure: Callable[[str], str], sensitivity) -> list[str]:
    runs = tables["runs"]
    body = ["<h2>Runs</h2>", runs.drop(columns=["path"]).to_html(index=False, float_format=_number, na_rep="")]
    if "runs_over_seeds" in tables:
        body += ["<h2>Final metric and parameters over seeds</h2>",
                 tables["runs_over_seeds"].to_html(index=False, float_format=_number, na_rep="")]
    body += [figure(name) for name in SECTION_FIGURES["runs"]]
    if "claims" in tables and len(tables["claims"]):
        claims = tables["claims"]
        body += ["<h2>Claims audit</h2>",
                 "<p>Each of the paper's findings read every way a careful reader could mean it: the statistic's mean and CI "
                 "over seeds, a threshold fixed in <code>tlora_analysis/analysis/claims/</code>, and in how many seeds it holds. "
                 "'not computed' names what the reading needs.</p>", _audit(claims, tables["claims_per_seed"])]
        if claims.tlora_group.nunique() > 1:
            body += ["<h2>Verdict map: how the verdicts move with TLoRA's settings</h2>", _verdict_map_html(claims)]
        body += [figure(name) for name in SECTION_FIGURES["claims"]]
    if sensitivity is not None and (Path(sensitivity) / "report.claims.csv").is_file():
        other = pd.read_csv(Path(sensitivity) / "report.claims.csv")
        body += [f"<h2>Verdict map: how the verdicts move with TLoRA's settings ({html.escape(str(sensitivity))})</h2>",
                 "<p>From the sensitivity study (<code>studies/sensitivity.toml</code>, regenerated by <code>make sensitivity</code>): "
                 "each reading's verdict in k of n seeds, and its mean, for each TLoRA setting.</p>", _verdict_map_html(other),
                 _figure_html(Path(sensitivity), "study_verdict_map", "share of seeds in which each reading holds, per TLoRA setting")]
    if "ladder_over_seeds" in tables and len(tables["ladder_over_seeds"]):
        body += ["<h2>Every method against LoRA (the ladder, the atlas)</h2>", _ladder_html(tables["ladder_over_seeds"]),
                 *(figure(name) for name in SECTION_FIGURES["ladder"])]
    if "controls" in tables and len(tables["controls"]):
        controls = tables["controls"].groupby(["kind", "method_a", "method_b"], as_index=False).agg(
            cosine=("cosine", "mean"), random_cos_q95=("baseline_abs_q95", "mean"), phi=("phi", "mean"), phi_random=("phi_random", "mean"),
            pairs=("run_b", "nunique"))
        body += ["<h2>Controls</h2><p>Mean over layers and pairs at the last epoch.</p>",
                 controls.to_html(index=False, float_format=lambda v: f"{v:.4g}"), *(figure(n) for n in SECTION_FIGURES["controls"])]
    return body


def write_study_report(tables: Mapping[str, pd.DataFrame], study, out: str | Path, figure_dir: str | Path,
                       sensitivity: str | Path | None = None) -> Path:
    """Write a study's report: runs, metric with seed CIs, the claims audit (every reading, CI over seeds,
    k of n seeds), the verdict map across TLoRA settings, the ladder, controls, each beside its figures,
    then every other figure in ``figure_dir``.

    ``sensitivity``: the figure folder of a sensitivity study (its ``report.claims.csv`` and
    ``study_verdict_map.png``), whose verdict map is shown below this study's audit."""
    from .figures import STUDY_FIGURES

    out, figure_dir = Path(out), Path(figure_dir)
    check_claims_sibling(out, ".claims.csv")
    captions = {**{n: d[2] for n, d in STUDY_FIGURES.items()}, "overview": "seed-0 pair: key panels",
                **{n: f"seed-0 pair: {d[2]}" for n, d in FIGURES.items()}}

    def figure(name: str) -> str:
        return _figure_html(figure_dir, name, captions[name])

    placed = {name for names in SECTION_FIGURES.values() for name in names}
    body = [f"<h1>Study {html.escape(str(study.path))}: adaptation dynamics over seeds</h1>",
            "<p>Every number is a mean over seeds with a 95% percentile-bootstrap interval (scipy.stats.bootstrap); "
            "quantities are defined in the project's <code>docs/quantities.md</code>.</p>", _spec_list(study.spec.raw),
            *_study_sections(tables, figure, sensitivity),
            "<h2>Other figures</h2>", *(figure(name) for name in captions if name not in placed)]
    atomic_write_bytes(out, (f"<!doctype html><html><head><meta charset='utf-8'><title>tlora-analysis study report</title><style>{CSS}"
                             "</style></head>" f"<body>{''.join(body)}</body></html>\n").encode())
    if "claims" in tables:
        atomic_write_bytes(out.with_suffix(".claims.csv"), tables["claims"].to_csv(index=False).encode())
    return out
