"""A self-contained HTML report: run settings, metrics, summary, every figure, and the paper's claims checked."""

from __future__ import annotations

import base64
import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .analysis import paper_claims
from .figures import FIGURES, render_all
from .figures.style import method_label
from .store import atomic_write_bytes

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; } th { background: #f3f3f3; }
td.text { text-align: left; }
.holds { background: #d9f2d9; } .fails { background: #f8d7d3; } .unknown { background: #eee; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: 0.9em; }
code { background: #f3f3f3; padding: 0 3px; }
"""


def _claims_table(claims: pd.DataFrame) -> str:
    rows = []
    for claim in claims.itertuples(index=False):
        verdict, css = {True: ("holds", "holds"), False: ("does not hold", "fails")}.get(claim.holds, ("cannot be computed", "unknown"))
        rows.append(f"<tr><td class='text'>{html.escape(claim.claim)}</td><td class='text'>{html.escape(claim.statistic)}</td>"
                    f"<td class='text'>{html.escape(claim.threshold)}</td><td class='{css}'><b>{verdict}</b></td></tr>")
    return ("<table><tr><th>finding (TLoRA paper)</th><th>statistic on these runs</th><th>threshold</th><th>verdict</th></tr>"
            + "".join(rows) + "</table>")


def _settings(runs: Sequence) -> str:
    keys = ["method", "task", "model", "rank", "targets", "seed"]
    frame = pd.DataFrame([{**{k: run.meta.get(k) for k in keys}, **run.meta.get("config", {}), "run": str(run.path)} for run in runs])
    return frame.T.to_html(header=False, na_rep="")


def _metrics(runs: Sequence) -> str:
    rows = [{"run": run.name, "epoch": epoch, **metrics} for run in runs for epoch, metrics in run.metrics.items()]
    return pd.DataFrame(rows).to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="")


def write_report(tables: Mapping[str, pd.DataFrame], runs: Sequence, out: str | Path, figure_dir: str | Path | None = None) -> Path:
    """Write the report to ``out``. Figures are taken from ``figure_dir`` if given, else rendered afresh."""
    out = Path(out)
    with tempfile.TemporaryDirectory() as scratch:
        if figure_dir is None:
            figure_dir = Path(scratch)
            render_all(tables, figure_dir)
        figure_dir = Path(figure_dir)
        figures = []
        for name in ["overview", *FIGURES]:
            png = figure_dir / f"{name}.png"
            if png.exists():
                data = base64.b64encode(png.read_bytes()).decode()
                caption = "key panels side by side" if name == "overview" else FIGURES[name][2]
                figures.append(f"<figure><img alt='{name}' src='data:image/png;base64,{data}'><figcaption><b>{name}</b>: {html.escape(caption)}</figcaption></figure>")
    has_pair = "similarity" in tables and "scales" in tables
    claims = paper_claims(tables) if has_pair else None
    methods = ", ".join(dict.fromkeys(method_label(r.method) for r in runs))
    body = [
        f"<h1>{html.escape(methods)}: adaptation dynamics</h1>",
        f"<p>Runs: {', '.join(html.escape(str(r.path)) for r in runs)}. Every quantity is defined in the project's "
        "<code>docs/quantities.md</code>.</p>",
        "<h2>The paper's claims, checked on these runs</h2>",
        (f"<p>Checked on the LoRA and TLoRA runs at the last epoch both share (epoch {int(claims.epoch.iloc[0])}).</p>"
         + _claims_table(claims)) if has_pair else "<p>The paper's claims compare a LoRA run with a TLoRA run; these runs have no such pair.</p>",
        "<h2>Summary</h2>", tables["summary"].set_index("run").T.to_html(float_format=lambda v: f"{v:.4g}", na_rep=""),
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
