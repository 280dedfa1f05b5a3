"""The commands that train: ``train``, ``study`` and ``reproduce``."""

from __future__ import annotations

import os

from ..errors import InputError
from ..methods.spec import METHOD_SPECS
from .output import show_progress

__all__ = ["add_train", "add_study", "add_reproduce"]


def add_train(sub) -> None:
    from ..config import add_config_arguments

    methods = ", ".join(spec.label for spec in METHOD_SPECS.values())
    p = sub.add_parser("train", help="fine-tune with one method, recording ΔW every epoch",
                       description=f"Fine-tune a sequence classifier (GLUE or the default task) or a causal LM (--task lm) with one "
                                   f"method ({methods}), writing a run directory with a ΔW snapshot at epoch 0 and after every epoch.")
    add_config_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch summaries are still printed; bars show on a terminal only)")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last finished epoch (with --epochs: up to that many)")
    p.add_argument("--nproc-per-node", type=int, metavar="N", help="one run over N processes on this machine (DDP, or FSDP with "
                                                                     "--sharding fsdp), started by torchrun's launcher after the "
                                                                     "settings are checked once")
    p.set_defaults(func=_cmd_train)


def _launched(args, given: dict) -> int:
    """``--nproc-per-node N``: check what every process would check, then let torchrun start them."""
    from ..config import TrainConfig
    from ..launch import launch_processes
    from ..training.model import check_device

    if "RANK" in os.environ:
        raise InputError("--nproc-per-node starts torchrun's processes itself; under torchrun or accelerate leave it out")
    if not args.resume:
        if not args.out:
            raise InputError("train needs --out (or --resume RUN_DIR)")
        config = TrainConfig(**given)
        check_device(config.device, config.precision)
    elif given.get("device"):
        check_device(given["device"])
    return launch_processes(args.nproc_per_node, _without_option(args.argv, "--nproc-per-node"))


def _without_option(argv: list[str], option: str) -> list[str]:
    """The ``train`` arguments of ``argv`` less ``option`` and its value (``--opt N`` or ``--opt=N``)."""
    rest = argv[argv.index("train") + 1:]
    kept, skip = [], False
    for token in rest:
        if skip:
            skip = False
        elif token == option:
            skip = True
        elif not token.startswith(option + "="):
            kept.append(token)
    return kept


def _cmd_train(args) -> int:
    from ..config import TrainConfig, config_from_arguments

    given = config_from_arguments(args)
    if args.nproc_per_node is not None:
        return _launched(args, given)
    if args.resume:
        extra = sorted(set(given) - {"epochs", "device", "model", "data_dir", "data_file"})
        if extra:
            raise InputError(f"--resume continues a run with its recorded settings; drop {', '.join('--' + k.replace('_', '-') for k in extra)}")
        from ..training import resume

        resume(args.resume, epochs=given.get("epochs"), device=given.get("device"), model=given.get("model"),
               data_dir=given.get("data_dir"), data_file=given.get("data_file"), progress=show_progress(args))
        return 0
    if not args.out:
        raise InputError("train needs --out (or --resume RUN_DIR)")
    config = TrainConfig(**given)
    from ..training import train

    run = train(config, args.out, progress=show_progress(args))
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone wrote it
        print(f"wrote {run.path} ({len(run.epochs)} snapshots)")
    return 0


def add_study(sub) -> None:
    from ..config import add_config_arguments
    from ..study import Executor

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
    from ..config import config_from_arguments
    from ..study import Executor, run_study

    study = run_study(args.spec, args.out, executor=Executor(**config_from_arguments(args, Executor)), extend=args.extend,
                      progress=show_progress(args))
    table = study.runs
    print(table.drop(columns=["path"]).to_string(index=False))
    return 1 if (table.status == "failed").any() else 0


def add_reproduce(sub) -> None:
    from ..config import ReproduceOptions, add_config_arguments

    p = sub.add_parser("reproduce", help="the main job: a study of LoRA, TLoRA and head-only over seeds, every figure and the report",
                       description="Run a study of LoRA, TLoRA and a head-only baseline on the embedded default task with the "
                                   "embedded model over several seeds, analyse it and regenerate every figure (with seed "
                                   "confidence bands), report.html and results.json. Finished runs are reused.")
    add_config_arguments(p, ReproduceOptions)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_reproduce)


def _cmd_reproduce(args) -> int:
    from ..config import ReproduceOptions, config_from_arguments
    from ..reproduce import reproduce

    reproduce(ReproduceOptions(**config_from_arguments(args, ReproduceOptions)), progress=show_progress(args))
    return 0
