"""``tlora-analysis``: train, analyse, draw, report, inspect and export from the shell.

User mistakes (bad paths, corrupt files, wrong arguments) end with one ``error:`` line
and exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import InputError

PROG = "tlora-analysis"


def _add_train(sub) -> None:
    from .data.glue import TASKS
    from .training import DEFAULT_LR, TRAIN_METHODS

    p = sub.add_parser("train", help="fine-tune LoRA, TLoRA or a head-only baseline, recording ΔW every epoch",
                       description="Fine-tune a sequence classifier with LoRA, TLoRA or only its head, writing a run "
                                   "directory with a ΔW snapshot at epoch 0 and after every epoch.")
    p.add_argument("--method", choices=TRAIN_METHODS, help="adapter method; 'head' trains only the classifier (baseline)")
    p.add_argument("--task", choices=list(TASKS), default="default", help="'default' is the embedded offline sentiment task")
    p.add_argument("--model", default="default", help="transformers name or local path; 'default' = the embedded all-MiniLM-L6-v2")
    p.add_argument("--rank", type=int, default=8, help="adapter rank r (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA: lora_alpha (default r, scaling 1); TLoRA: initial α (default 1)")
    p.add_argument("--targets", nargs="+", default=["query", "value"], help="module name suffixes to adapt (default: query value)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4)")
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default per method: {DEFAULT_LR})")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (default 32)")
    p.add_argument("--max-length", type=int, default=64, help="maximum tokens per example (default 64)")
    p.add_argument("--max-train-samples", type=int, default=None, help="use only the first N training examples")
    p.add_argument("--max-eval-samples", type=int, default=None, help="use only the first N validation examples")
    p.add_argument("--seed", type=int, default=0, help="seeds data order, dropout, the head and the frozen matrices (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--data-dir", default=None, help="local folder of GLUE files (GLUE's TSV layout or Hub-named CSV/parquet)")
    p.add_argument("--no-grad-norms", action="store_true", help="do not record per-layer gradient norms")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch summaries are still printed)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last finished epoch (with --epochs: up to that many)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .training import TrainConfig, resume, train

    if args.resume:
        resume(args.resume, epochs=args.epochs if "--epochs" in sys.argv else None, progress=not args.no_progress)
        return 0
    if not args.method or not args.out:
        raise InputError("train needs --method and --out (or --resume RUN_DIR)")
    config = TrainConfig(
        method=args.method, task=args.task, model=args.model, rank=args.rank, alpha=args.alpha, targets=args.targets,
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, max_length=args.max_length,
        max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples, seed=args.seed,
        device=args.device, data_dir=args.data_dir, record_grad_norms=not args.no_grad_norms,
    )
    run = train(config, args.out, progress=not args.no_progress)
    print(f"wrote {run.path} ({len(run.epochs)} snapshots)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train, record and analyse LoRA and TLoRA updates of transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


COMMANDS = [_add_train]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished epochs and files already written are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
