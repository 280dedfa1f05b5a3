"""The main job: train LoRA, TLoRA and a head-only baseline on the default task, analyse, draw, report.

Runs that already finished with the same settings are reused (``retrain=True`` forces
training again); an unfinished run is resumed.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .analysis import compare_runs
from .analysis.compare import SETTINGS
from .config import REPRODUCE_EPOCHS, TrainConfig
from .figures import render_all
from .models import base_weights
from .report import write_report
from .store import Run, load_run, read_json
from .training import resume, train


def _train_or_reuse(config: TrainConfig, run_dir: Path, retrain: bool, progress: bool, log: Callable[[str], None]) -> Run:
    if (run_dir / "run.json").exists() and not retrain:
        meta = read_json(run_dir / "run.json", "run.json")
        if meta.get("config") == asdict(config):
            if meta.get("status") == "finished":
                log(f"reusing finished run {run_dir}")
                return load_run(run_dir)
            return resume(run_dir, progress=progress, log=log)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return train(config, run_dir, progress=progress, log=log)


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in tables.items():
        path = out_dir / f"{name}.csv"
        table.to_csv(path, index=False)
        paths.append(path)
    return paths


def reproduce(out: str | Path = "figures", runs_dir: str | Path = "runs/reproduce", *, epochs: int = REPRODUCE_EPOCHS, seed: int = 0,
              retrain: bool = False, progress: bool = True, log: Callable[[str], None] = print, **overrides) -> dict:
    """Train (or reuse) the three runs, write tables to ``runs_dir/tables``, figures and report.html to ``out``."""
    started = time.perf_counter()
    out, runs_dir = Path(out), Path(runs_dir)
    runs = {}
    for method in ("lora", "tlora", "head"):
        config = TrainConfig(method=method, epochs=epochs, seed=seed, **overrides)
        runs[method] = _train_or_reuse(config, runs_dir / method, retrain, progress, log)
    log("analysing ...")
    lora, tlora = runs["lora"], runs["tlora"]
    weights = base_weights(lora.meta["model"], lora.layer_names)
    tables = compare_runs(lora, tlora, weights)
    write_tables(tables, runs_dir / "tables")
    log("drawing figures ...")
    settings = {"epochs": epochs, "seed": seed, **SETTINGS}
    render_all(tables, out, sources={m: str(r.path) for m, r in runs.items()}, settings=settings)
    write_report(tables, [lora, tlora], out / "report.html", figure_dir=out)
    results = {
        method: {
            "final_metric": run.metrics[run.epochs[-1]].get(run.meta["main_metric"]),
            "metric": run.meta["main_metric"],
            "parameter_counts": run.meta["parameter_counts"],
            "train_seconds": round(sum(run.record(e).get("time_s", 0.0) for e in run.epochs), 1),
        }
        for method, run in runs.items()
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log("")
    log(f"{'method':<8}{'accuracy':>10}{'adapter params':>16}{'head params':>13}{'frozen random':>15}")
    for method, r in results.items():
        c = r["parameter_counts"]
        log(f"{method:<8}{r['final_metric']:>10.4f}{c['adapter_trainable']:>16,}{c['other_trainable']:>13,}{c['frozen_random']:>15,}")
    log(f"figures, report.html and results.json in {out}/; tables in {runs_dir / 'tables'}/ ({time.perf_counter() - started:.0f}s)")
    return results
