"""``tlora-analysis``: train, analyse, draw, report, inspect and export from the shell.

User mistakes (bad paths, corrupt files, wrong arguments) end with one ``error:`` line
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import InputError
from .methods.spec import METHOD_SPECS
from .reuse import fingerprint, manifest_matches, read_tables

PROG = "tlora-analysis"


def _add_train(sub) -> None:
    from .config import add_config_arguments

    methods = ", ".join(spec.label for spec in METHOD_SPECS.values())
    p = sub.add_parser("train", help="fine-tune with one method, recording ΔW every epoch",
                       description=f"Fine-tune a sequence classifier (GLUE or the default task) or a causal LM (--task lm) with one "
                                   f"method ({methods}), writing a run directory with a ΔW snapshot at epoch 0 and after every epoch.")
    add_config_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch summaries are still printed)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last finished epoch (with --epochs: up to that many)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .config import TrainConfig, config_from_arguments

    given = config_from_arguments(args)
    if args.resume:
        extra = sorted(set(given) - {"epochs", "device", "model", "data_dir", "data_file"})
        if extra:
            raise InputError(f"--resume continues a run with its recorded settings; drop {', '.join('--' + k.replace('_', '-') for k in extra)}")
        from .training import resume

        resume(args.resume, epochs=given.get("epochs"), device=given.get("device"), model=given.get("model"),
               data_dir=given.get("data_dir"), data_file=given.get("data_file"), progress=not args.no_progress)
        return 0
    if not args.out:
        raise InputError("train needs --out (or --resume RUN_DIR)")
    config = TrainConfig(**given)
    from .training import train

    run = train(config, args.out, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone wrote it
        print(f"wrote {run.path} ({len(run.epochs)} snapshots)")
    return 0


def _add_study(sub) -> None:
    from .config import add_config_arguments
    from .study import Executor

    p = sub.add_parser("study", help="run a grid of training runs from a TOML spec (seeds, ranks, learning rates, methods)",
                       description="Run every cell of a study spec: train's options in snake_case, a list sweeps a setting, a "
                                   "table keyed by method gives per-method values. Running it again reuses finished cells and "
                                   "resumes interrupted ones. Analyse the result with figures/report/analyze STUDY_DIR.")
    p.add_argument("spec", metavar="SPEC.toml", help="the study spec")
    p.add_argument("--out", required=True, help="the study directory (runs/, logs/, study.json)")
    p.add_argument("--extend", action="store_true", help="accept a spec that adds cells to the existing study in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(p, Executor)
    p.set_defaults(func=_cmd_study)


def _cmd_study(args) -> int:
    from .config import config_from_arguments
    from .study import Executor, run_study

    study = run_study(args.spec, args.out, executor=Executor(**config_from_arguments(args, Executor)), extend=args.extend,
                      progress=not args.no_progress)
    table = study.runs
    print(table.drop(columns=["path"]).to_string(index=False))
    return 1 if (table.status == "failed").any() else 0


def _add_runs(p) -> None:
    p.add_argument("runs", nargs="+", metavar="SOURCE", help="run directories, snapshot files, peft adapter directories or exports, "
                                                             "of any methods, seeds and lengths, each optionally as NAME=PATH to label "
                                                             "it (the paper's claims need one LoRA and one TLoRA source among them); or "
                                                             "one study directory")
    p.add_argument("--base", default=None, help="base model for amplification and intruder dimensions (default: the runs' model)")
    p.add_argument("--no-base", action="store_true", help="skip the analyses that need the base weights W0")


def _study(args):
    """The study named by a single RUN argument that is a study directory, else None."""
    if len(args.runs) == 1 and (Path(args.runs[0]) / "study.json").is_file():
        from .study import load_study

        return load_study(args.runs[0])
    return None


def _compare_study(study, args):
    from .analysis.compare import compare_study
    from .models import base_weights, layer_shapes, model_named_in_file

    adapted = study.finished(adapted_only=True)
    if not adapted:
        raise InputError(f"{study.path}: no finished cell has adapted layers to analyse")
    weights = base = None
    if not args.no_base:
        base = model_named_in_file(adapted[0][0].meta.get("model"), study.path / "study.json", args.base)
        weights = base_weights(base, adapted[0][0].layer_names, layer_shapes(adapted[0][0].layers))
    return compare_study(study, weights), base


def _compare(args):
    """Open and label the sources as given (a snapshot file stays one epoch) and compute every table.

    Returns the labelled sources, the tables and the base model the W0 analyses used (None without them).
    """
    from .analysis import compare_runs
    from .models import base_weights, layer_shapes, model_named_in_file
    from .sources import labelled_paths, open_sources

    sources = open_sources(labelled_paths(args.runs), base=args.base)
    adapted = [s for s in sources if s.layers]
    if not adapted:
        raise InputError(f"{args.runs[0]}: none of the sources has adapted layers to analyse")
    weights = base = None
    if not args.no_base:
        first = adapted[0]
        named = next((s.meta.get("model") for s in adapted if s.meta.get("model")), None)
        if args.base is None and not named:
            raise InputError(f"{first.path}: names no base model; pass --base MODEL or --no-base")
        base = model_named_in_file(named, first.path, args.base)
        weights = base_weights(base, list(first.layers), layer_shapes(first.layers))
    return sources, compare_runs(adapted, weights, progress=True), base


def _add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="write the analysis tables of runs as CSV",
                       description="Write every analysis table of the runs (spectra, norms, effective rank, weight "
                                   "distributions, scales, cosine between every pair of methods, subspaces, amplification "
                                   "and intruders) as CSV files.")
    _add_runs(p)
    p.add_argument("--out", required=True, help="directory for the CSV files")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from .results import write_tables

    study = _study(args)
    tables = _compare_study(study, args)[0] if study else _compare(args)[1]
    for path in write_tables(tables, Path(args.out)):
        print(path)
    return 0


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="render every figure for a set of runs",
                       description="Analyse the runs and render every figure their tables allow (PNG and PDF) plus "
                                   "figures.json listing each file, its source runs and the analysis settings.")
    _add_runs(p)
    p.add_argument("--out", required=True, help="directory for the figures")
    p.add_argument("--formats", nargs="+", choices=("png", "pdf", "svg"), default=["png", "pdf"],
                   help="file formats of each figure (default: png pdf; png alone is about twice as fast)")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args) -> int:
    from dataclasses import asdict

    from .config import ANALYSIS
    from .figures import render_all, render_study

    study = _study(args)
    if study:
        tables, base = _compare_study(study, args)
        from .io import atomic_write_json
        from .results import study_results, write_tables

        entries = render_study(tables, args.out, formats=tuple(args.formats), sources={n: str(study.run_dir(n)) for n in study.cells},
                               settings={"base": base, "study": study.spec.raw, **asdict(ANALYSIS), "fingerprint": fingerprint(args.runs)})
        write_tables(tables, Path(args.out) / "tables")  # a report written into this folder reuses them
        atomic_write_json(Path(args.out) / "results.json", study_results(tables, list(study.swept)))
        _print_skipped(Path(args.out))
        print(f"wrote {len(entries)} figures ({' + '.join(f.upper() for f in args.formats)}), figures.json and results.json to {args.out}")
        return 0
    from .results import write_tables

    sources, tables, base = _compare(args)
    entries = render_all(tables, args.out, formats=tuple(args.formats), sources={s.name: str(s.path) for s in sources},
                         settings={"base": base, **asdict(ANALYSIS), "fingerprint": fingerprint(args.runs)})
    write_tables(tables, Path(args.out) / "tables")  # a report written into this folder reuses them
    _print_skipped(Path(args.out))
    print(f"wrote {len(entries)} figures ({' + '.join(f.upper() for f in args.formats)}) and figures.json to {args.out}")
    return 0


def _print_skipped(out: Path) -> None:
    import json

    for entry in json.loads((out / "figures.json").read_text()).get("skipped", []):
        print(f"skipped {entry['name']}: {entry['reason']}")


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page with figures, tables and the paper's claims checked",
                       description="Write a self-contained HTML report for a set of runs, ending with the TLoRA paper's "
                                   "findings checked on its LoRA and TLoRA runs (statistic, threshold, verdict).")
    _add_runs(p)
    p.add_argument("--out", required=True, help="the HTML file to write; the claims go beside it as OUT.claims.json "
                                                "(OUT.claims.csv for a study), replacing an earlier one")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from .report import check_claims_sibling, write_report, write_study_report

    study = _study(args)
    check_claims_sibling(Path(args.out), ".claims.csv" if study else ".claims.json")  # before any work
    if study:
        import tempfile

        from .figures import render_study

        folder = Path(args.out).parent
        if manifest_matches(folder, args, study=study.spec.raw):
            print(f"reusing the tables and figures in {folder} (written by figures for this study)")
            _print_written(write_study_report(read_tables(folder / 'tables'), study, args.out, folder), ".claims.csv")
            return 0
        tables, _ = _compare_study(study, args)
        with tempfile.TemporaryDirectory() as scratch:
            render_study(tables, scratch, formats=("png",))  # the page embeds PNGs alone
            _print_written(write_study_report(tables, study, args.out, scratch), ".claims.csv")
        return 0
    reused = _figures_beside(args)
    if reused is not None:
        sources, tables, folder = reused
        print(f"reusing the tables and figures in {folder} (written by figures for these sources)")
        _print_written(write_report(tables, sources, args.out, figure_dir=folder), ".claims.json")
        return 0
    sources, tables, _ = _compare(args)
    _print_written(write_report(tables, sources, args.out), ".claims.json")
    return 0


def _print_written(report: Path, claims_suffix: str) -> None:
    """Name every file the report wrote: the page, and the claims file beside it when there is one."""
    claims = Path(report).with_suffix(claims_suffix)
    print(f"wrote {report}" + (f" and {claims}" if claims.is_file() else ""))



def _add_reproduce(sub) -> None:
    from .config import ReproduceOptions, add_config_arguments

    p = sub.add_parser("reproduce", help="the main job: a study of LoRA, TLoRA and head-only over seeds, every figure and the report",
                       description="Run a study of LoRA, TLoRA and a head-only baseline on the embedded default task with the "
                                   "embedded model over several seeds, analyse it and regenerate every figure (with seed "
                                   "confidence bands), report.html and results.json. Finished runs are reused.")
    add_config_arguments(p, ReproduceOptions)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    from .config import ReproduceOptions, config_from_arguments
    from .reproduce import reproduce

    reproduce(ReproduceOptions(**config_from_arguments(args, ReproduceOptions)), progress=not args.no_progress)
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer update geometry of a run, snapshot, PEFT adapter or full fine-tune",
                       description="Print a per-layer table (module, layer, shape, rank, scale, ‖ΔW‖_F, ‖ΔW‖_2, stable and "
                                   "effective rank, top singular values) and totals for a saved checkpoint. Only JSON and "
                                   "safetensors files are read.")
    p.add_argument("path", metavar="PATH", help="run directory, snapshot .safetensors, PEFT adapter directory, or (with --base) "
                                                "a fully fine-tuned model directory")
    p.add_argument("--epoch", type=int, default=None, help="epoch of a run (default: the last finished)")
    p.add_argument("--base", default=None, help="base model: defines ΔW = W_ft − W0 for a fully fine-tuned model directory, "
                                                "and adds amplification and intruder counts for any source")
    from .config import ANALYSIS

    p.add_argument("--intruder-k", type=int, default=ANALYSIS.intruder_k,
                   help=f"with --base: top singular vectors checked for intruders (default {ANALYSIS.intruder_k})")
    p.add_argument("--max-rank", type=int, default=None, help="full fine-tunes: keep only the top singular directions of each ΔW")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    import pandas as pd

    from .checkpoints import inspect_checkpoint, to_json

    table = inspect_checkpoint(args.path, epoch=args.epoch, base=args.base, max_rank=args.max_rank, intruder_k=args.intruder_k)
    if args.json:
        print(to_json(table))
        return 0
    totals = table.attrs["totals"]
    print(f"{table.attrs['path']}: {totals['method']}, epoch {table.attrs['epoch']}, {totals['layers']} layers")
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(table.drop(columns=["name"]).to_string(index=False))
    print(f"total ‖ΔW‖_F {totals['total_frobenius']:.4g}; parameters defining the updates: "
          f"{totals['update_trainable_params']:,} trainable, {totals['update_frozen_random_params']:,} frozen random"
          + (f"; other trainable (head): {totals['other_trainable_params']:,}" if totals.get("other_trainable_params") else ""))
    return 0


def _add_export(sub) -> None:
    formats = "; ".join(f"{spec.label}: {', '.join(spec.exports)}" for spec in METHOD_SPECS.values() if spec.exports)
    p = sub.add_parser("export", help="write one epoch of a run for peft and for this toolkit",
                       description="Export one epoch of a run into a new directory: a one-epoch run directory that inspect, analyze "
                                   "and tlora_analysis.export.load_exported read, and beside it what peft loads "
                                   f"(PeftModel.from_pretrained) or the fine-tuned weights. Per method: {formats}.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to export")
    p.add_argument("--epoch", type=int, default=None, help="epoch to export (default: the last finished)")
    p.add_argument("--out", required=True, help="a new (or empty) directory to write")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from .export import export

    print(f"wrote {export(args.run_dir, args.out, args.epoch)}")
    return 0


def _version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    methods = ", ".join(spec.label for spec in METHOD_SPECS.values() if spec.adapts_layers)
    parser = argparse.ArgumentParser(prog=PROG, description=f"Train, record and analyse how low-rank adapters ({methods}) change a "
                                                            "pretrained transformer, and inspect any adapter's update geometry.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [_add_train, _add_study, _add_analyze, _add_figures, _add_report, _add_reproduce, _add_inspect, _add_export]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. User mistakes and OS errors on files print one ``error:`` line and return 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        return _error(str(err))
    except BrokenPipeError:  # `tlora-analysis inspect RUN | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # a read-only or full disk, a missing permission: the user's to fix
        return _error(f"{err.filename or ''}{': ' if err.filename else ''}{err.strerror or err}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs and files already written are kept", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())


def _figures_beside(args):
    """(sources, tables, folder) when the report goes into a folder where ``figures`` wrote its output for
    exactly these sources (labels, paths, base, unchanged files); else None."""
    import json

    from .reuse import manifest_matches, read_tables
    from .sources import labelled_paths, open_sources

    folder = Path(args.out).parent
    if not manifest_matches(folder, args):
        return None
    sources = open_sources(labelled_paths(args.runs), base=args.base)
    if json.loads((folder / "figures.json").read_text()).get("sources") != {s.name: str(s.path) for s in sources}:
        return None
    return sources, read_tables(folder / "tables"), folder
