"""The commands that analyse sources: ``analyze``, ``figures``, ``report`` and ``compare``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import split_label
from ..reuse import fingerprint, manifest_matches, read_tables
from .output import Phases, add_download, print_notices, print_table, show_progress

__all__ = ["add_analyze", "add_figures", "add_report", "add_compare"]


def _add_runs(p) -> None:
    p.add_argument("runs", nargs="+", metavar="SOURCE", help="runs, snapshot files, exports, peft adapters (any type), Trainer output "
                                                             "directories, kohya/LyCORIS files or fine-tuned models, of any methods, "
                                                             "seeds and lengths, each optionally as NAME=PATH to label it (the paper's "
                                                             "claims need one LoRA and one TLoRA source among them); or one study directory")
    p.add_argument("--base", default=None, help="base model: for amplification and intruder dimensions, fine-tunes and every update "
                                                "read on its base (default: the sources' own model, if local)")
    p.add_argument("--no-base", action="store_true", help="skip the analyses that need the base weights W0")
    add_download(p)
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="worker processes that read a study's cells whose tables are not stored yet and draw the figures "
                        "(default: TLORA_ANALYSIS_JOBS, else the cores; 1 does everything in this process)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (one shows on a terminal only)")


def _check_out(args, kind: str) -> None:
    """The output is checked against every source before any work (see :func:`~tlora_analysis.io.check_output`)."""
    from ..io import check_output
    from ..sources import labelled_paths

    paths = labelled_paths(args.runs)
    check_output(Path(args.out), [Path(p) for p in (paths.values() if isinstance(paths, dict) else paths)], kind)


def _study(args):
    """The study named by a single RUN argument that is a study directory, else None."""
    path = split_label(args.runs[0])[1] if len(args.runs) == 1 else None
    if path is not None and (Path(path) / "study.json").is_file():
        from ..study import load_study

        return load_study(path)
    return None


def _jobs(args) -> int:
    """``--jobs``, or its default (``TLORA_ANALYSIS_JOBS``, else the cores)."""
    from ..analysis.cell_workers import default_jobs

    return default_jobs() if args.jobs is None else args.jobs


def _compare_study(study, args, phases: Phases | None = None):
    from ..analysis.cell_workers import cell_workers
    from ..analysis.compare import compare_study
    from ..models import all_layer_shapes, base_weights, model_named_in_file

    phases = phases or Phases(args)
    if getattr(args, "runs_only", False):
        tables = compare_study(study, runs_only=True)
        phases.done(f"read the metrics of {len(study.cells)} cells")
        return tables, None
    adapted = study.finished(adapted_only=True)
    if not adapted:
        raise InputError(f"{study.path}: no finished cell has adapted layers to analyse")
    weights = base = None
    if not args.no_base:
        base = model_named_in_file(adapted[0][0].meta.get("model"), study.path / "study.json", args.base)
        shapes = all_layer_shapes(run.layers for run, _ in adapted)
        weights = base_weights(base, list(shapes), shapes)
        phases.done(f"read W0 of {len(weights)} layers from {base}")
    with cell_workers(_jobs(args)):
        tables = compare_study(study, weights)
    phases.done(f"computed the tables of {len(adapted)} cells")
    return tables, base


def _compare(args, phases: Phases | None = None):
    """Open and label the sources as given (a snapshot file stays one epoch) and compute every table.

    Returns the labelled sources, the tables and the base model the W0 analyses used (None without them).
    """
    from ..analysis import compare_runs
    from ..models import all_layer_shapes, base_weights, model_named_in_file
    from ..sources import labelled_paths, open_sources

    phases = phases or Phases(args)
    sources = open_sources(labelled_paths(args.runs), base=args.base)
    print_notices(sources)
    adapted = [s for s in sources if s.layers]
    if not adapted:
        raise InputError(f"{args.runs[0]}: none of the sources has adapted layers to analyse")
    phases.done(f"opened {len(sources)} sources")
    weights = base = None
    if not args.no_base:
        first = adapted[0]
        named = next((s.meta.get("model") for s in adapted if s.meta.get("model")), None)
        if args.base is None and not named:
            raise InputError(f"{first.path}: names no base model; pass --base MODEL or --no-base")
        base = model_named_in_file(named, first.path, args.base)
        shapes = all_layer_shapes(source.layers for source in adapted)  # not the first's alone: order must not matter
        weights = base_weights(base, list(shapes), shapes)
        phases.done(f"read W0 of {len(weights)} layers from {base}")
    tables = compare_runs(adapted, weights, progress=show_progress(args))
    phases.done(f"computed the tables of {len(adapted)} sources")
    return sources, tables, base


def add_analyze(sub) -> None:
    p = sub.add_parser("analyze", help="write the analysis tables of runs as CSV",
                       description="Write every analysis table of the runs (spectra, norms, effective rank, weight "
                                   "distributions, scales, cosine between every pair of methods, subspaces, amplification "
                                   "and intruders) as CSV files.")
    _add_runs(p)
    p.add_argument("--out", required=True, help="directory for the CSV files")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args) -> int:
    from ..results import write_tables

    _check_out(args, "dir")
    study = _study(args)
    tables = _compare_study(study, args)[0] if study else _compare(args)[1]
    for path in write_tables(tables, Path(args.out)):
        print(path)
    return 0


def add_figures(sub) -> None:
    p = sub.add_parser("figures", help="render every figure for a set of runs",
                       description="Analyse the runs and render every figure their tables allow (PNG and PDF) plus "
                                   "figures.json listing each file, its source runs and the analysis settings.")
    _add_runs(p)
    p.add_argument("--out", required=True, help="directory for the figures")
    p.add_argument("--formats", nargs="+", choices=("png", "pdf", "svg"), default=["png", "pdf"],
                   help="file formats of each figure (default: png pdf; png alone is about twice as fast)")
    p.add_argument("--runs-only", action="store_true", help="a study: only the cells' metrics and parameter counts (a learning-rate "
                                                             "sweep's choice and its figures), without reading any update")
    p.set_defaults(func=_cmd_figures)


def _cmd_figures(args) -> int:
    from dataclasses import asdict

    from ..config import ANALYSIS
    from ..figures import render_all, render_study
    from ..reuse import write_manifest
    from ..sources import origin

    _check_out(args, "dir")
    phases = Phases(args)
    study = _study(args)
    if study:
        tables, base = _compare_study(study, args, phases)
        from ..io import atomic_write_json
        from ..results import study_results, write_tables

        entries = render_study(tables, args.out, formats=tuple(args.formats), jobs=_jobs(args),
                               sources={n: str(study.run_dir(n)) for n in study.cells},
                               settings={"base": base, "study": study.spec.raw, **asdict(ANALYSIS), "fingerprint": fingerprint(args.runs)})
        write_manifest(Path(args.out) / "tables", write_tables(tables, Path(args.out) / "tables"))  # a report here reuses them
        atomic_write_json(Path(args.out) / "results.json", study_results(tables, list(study.swept)))
        phases.done(f"drew {len(entries)} figures")
        _print_skipped(Path(args.out))
        print(f"wrote {len(entries)} figures ({' + '.join(f.upper() for f in args.formats)}), figures.json and results.json to {args.out}")
        return 0
    from ..results import write_tables

    sources, tables, base = _compare(args, phases)
    entries = render_all(tables, args.out, formats=tuple(args.formats), jobs=_jobs(args), sources={s.name: origin(s) for s in sources},
                         settings={"base": base, **asdict(ANALYSIS), "fingerprint": fingerprint(args.runs)})
    write_manifest(Path(args.out) / "tables", write_tables(tables, Path(args.out) / "tables"))  # a report here reuses them
    phases.done(f"drew {len(entries)} figures")
    _print_skipped(Path(args.out))
    print(f"wrote {len(entries)} figures ({' + '.join(f.upper() for f in args.formats)}) and figures.json to {args.out}")
    return 0


def _print_skipped(out: Path) -> None:
    import json

    for entry in json.loads((out / "figures.json").read_text()).get("skipped", []):
        print(f"skipped {entry['name']}: {entry['reason']}")


def add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page with figures, tables and the paper's claims checked",
                       description="Write a self-contained HTML report for a set of runs, ending with the TLoRA paper's "
                                   "findings checked on its LoRA and TLoRA runs (statistic, threshold, verdict).")
    _add_runs(p)
    p.add_argument("--out", required=True, help="the HTML file to write; the claims go beside it as OUT.claims.json "
                                                "(OUT.claims.csv for a study), replacing an earlier one")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from ..report import check_claims_sibling, write_report, write_study_report

    _check_out(args, "file")
    study = _study(args)
    check_claims_sibling(Path(args.out), ".claims.csv" if study else ".claims.json")  # before any work
    if study:
        import tempfile

        from ..figures import render_study

        folder = Path(args.out).parent
        if manifest_matches(folder, args, study=study.spec.raw):
            print(f"reusing the tables and figures in {folder} (written by figures for this study)")
            _print_written(write_study_report(read_tables(folder / 'tables'), study, args.out, folder), ".claims.csv")
            return 0
        tables, _ = _compare_study(study, args)
        with tempfile.TemporaryDirectory() as scratch:
            render_study(tables, scratch, formats=("png",), jobs=_jobs(args))  # the page embeds PNGs alone
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



def _figures_beside(args):
    """(sources, tables, folder) when the report goes into a folder where ``figures`` wrote its output for
    exactly these sources (labels, paths, base, unchanged files); else None."""
    from ..reuse import manifest_matches, read_tables
    from ..sources import labelled_paths, open_sources, origin

    folder = Path(args.out).parent
    if not manifest_matches(folder, args):
        return None
    sources = open_sources(labelled_paths(args.runs), base=args.base)
    print_notices(sources)
    if not manifest_matches(folder, args, sources={s.name: origin(s) for s in sources}):
        return None
    return sources, read_tables(folder / "tables"), folder


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="compare any sources: each one's updates, and every pair's cosine and norm ratio",
                       description="The command line's compare_runs: open any sources (labelled NAME=PATH or not), print one row per "
                                   "source (method, layers, states, mean ‖ΔW‖_F and effective rank at its last state) and one per pair "
                                   "(the states that met, the mean cosine of their ΔW over shared layers and the ratio of their mean "
                                   "norms); --out also writes every table as CSV, as analyze does.")
    _add_runs(p)
    p.add_argument("--out", default=None, help="also write every analysis table as CSV into this directory")
    p.add_argument("--json", action="store_true", help="print the two tables as JSON")
    p.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from ..analysis.summary import comparison_summary

    if _study(args) is not None:
        raise InputError(f"{args.runs[0]}: compare takes sources; a study is read whole by analyze, figures and report")
    if args.out:
        _check_out(args, "dir")
    _, tables, _ = _compare(args)
    per_source, pairs = comparison_summary(tables)
    if args.out:
        from ..results import write_tables

        for path in write_tables(tables, Path(args.out)):
            print(path)
    if args.json:
        import json

        print(json.dumps({"sources": per_source.to_dict(orient="records"), "pairs": pairs.to_dict(orient="records")}, indent=2,
                         default=str))
        return 0
    print_table(per_source)
    if len(pairs):
        print()
        print_table(pairs)
    return 0
