"""The commands that read one checkpoint or write one: ``inspect`` and ``export``."""

from __future__ import annotations

from ..methods.spec import METHOD_SPECS
from ..states import state_name
from .output import add_download, print_notices

__all__ = ["add_inspect", "add_export"]


def add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="per-layer update geometry of any saved update (a run, a peft adapter, a Trainer output, ...)",
                       description="Print a per-layer table (module, layer, shape, rank, scale, ‖ΔW‖_F, ‖ΔW‖_2, stable and "
                                   "effective rank, top singular values) and totals for a saved checkpoint. Only JSON and "
                                   "safetensors files are read.")
    p.add_argument("path", metavar="PATH", help="any source: a run, a snapshot, a peft adapter folder of any weight-changing type, a "
                                                "Trainer output directory, a kohya or LyCORIS file, or (with --base) a fine-tuned "
                                                "model (docs/your-adapters.md lists every format); or a Hub id with --download")
    p.add_argument("--epoch", type=int, default=None, help="epoch of a run, or a Trainer checkpoint's state (default: the last finished)")
    p.add_argument("--base", default=None, help="base model: defines ΔW = W_ft − W0 for a fully fine-tuned model directory, "
                                                "and adds amplification and intruder counts for any source")
    from ..config import ANALYSIS

    p.add_argument("--intruder-k", type=int, default=ANALYSIS.intruder_k,
                   help=f"with --base: top singular vectors checked for intruders (default {ANALYSIS.intruder_k})")
    p.add_argument("--max-rank", type=int, default=None, help="full fine-tunes: keep only the top singular directions of each ΔW")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    add_download(p)
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    import pandas as pd

    from ..checkpoints import inspect_checkpoint, to_json

    table = inspect_checkpoint(args.path, epoch=args.epoch, base=args.base, max_rank=args.max_rank, intruder_k=args.intruder_k)
    print_notices([table.attrs])
    if args.json:
        print(to_json(table))
        return 0
    totals = table.attrs["totals"]
    print(f"{table.attrs['path']}: {totals['method']}, {state_name(table.attrs['epoch'])}, {totals['layers']} layers")
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        print(table.drop(columns=["name"]).to_string(index=False))
    print(f"total ‖ΔW‖_F {totals['total_frobenius']:.4g}; parameters defining the updates: "
          f"{totals['update_trainable_params']:,} trainable, {totals['update_frozen_random_params']:,} frozen random"
          + (f"; other trainable (head): {totals['other_trainable_params']:,}" if totals.get("other_trainable_params") else ""))
    return 0


def add_export(sub) -> None:
    formats = "; ".join(f"{spec.label}: {', '.join(spec.exports)}" for spec in METHOD_SPECS.values() if spec.exports)
    p = sub.add_parser("export", help="write one epoch of a run for peft and for this toolkit",
                       description="Export one epoch of a run into a new directory: a one-epoch run directory that inspect, analyze "
                                   "and tlora_analysis.export.load_exported read, and beside it what peft loads "
                                   f"(PeftModel.from_pretrained) or, for full fine-tuning, the fine-tuned model itself "
                                   f"(AutoModelFor….from_pretrained). Per method: {formats}.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to export")
    p.add_argument("--epoch", type=int, default=None, help="epoch to export (default: the last finished)")
    p.add_argument("--out", required=True, help="a new (or empty) directory to write")
    p.add_argument("--base", default=None, help="full fine-tuning: the base model, where run.json names one that is neither the "
                                                "embedded default nor a local folder (a name read from a file is never fetched)")
    p.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from ..export import export

    print(f"wrote {export(args.run_dir, args.out, args.epoch, base_model=args.base)}")
    return 0
