"""Everything that defines a training run, in one dataclass: the single source of every
default and help string. ``tlora-analysis train`` builds its options from these fields,
and run.json stores the dataclass as ``config``.

This module imports neither torch nor transformers, so ``tlora-analysis --help`` and
argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .data.tasks import TASKS
from .errors import InputError
from .methods.spec import METHOD_SPECS, TLORA_INITS, adapter_methods

__all__ = ["TrainConfig", "METHODS", "TRAIN_METHODS", "REPORT_TO", "REPRODUCE_EPOCHS", "REPRODUCE_SEEDS", "ReproduceOptions", "AnalysisSettings", "ANALYSIS", "TLORA_INITS", "add_config_arguments", "config_from_arguments", "option"]

METHODS = adapter_methods()
"""Adapter methods (each one a :class:`~tlora_analysis.methods.MethodSpec` with a layer class)."""

TRAIN_METHODS = tuple(METHOD_SPECS)
"""Everything ``train --method`` takes: the adapter methods and head-only."""


def _alpha_help() -> str:
    return "; ".join(f"{spec.label}: {spec.alpha_help}" for spec in METHOD_SPECS.values() if spec.alpha_help)


def default_rate(method: str, task: str) -> float:
    """A method's rate on a task: the rate swept on that task where there was a sweep, else the method's own default
    (swept on the default task). A method's best rate depends on the task, so a task's sweep wins."""
    return TASKS[task].learning_rates.get(method, METHOD_SPECS[method].default_lr)


def _lr_help() -> str:
    swept = [f"{name}: {', '.join(f'{m} {lr:g}' for m, lr in spec.learning_rates.items())}" for name, spec in TASKS.items()
             if spec.learning_rates]
    return ("peak learning rate (default per method, swept on the default task: " + ", ".join(f"{n} {s.default_lr:g}" for n, s in
            METHOD_SPECS.items()) + (f"; swept per task, which wins there: {'; '.join(swept)}" if swept else "") + ")")


_TLORA_INIT = METHOD_SPECS["tlora"].options["init"]

REPRODUCE_EPOCHS = 3
"""Epochs per run of the main job (``tlora-analysis reproduce``) and ``train``'s default: three, as in the sweep that
chose each method's default rate (studies/lr_sweep.toml) and every other study; the job then fits 7 minutes on 2 cores."""
REPRODUCE_SEEDS = 3
"""Seeds per method of the main job."""

PRECISIONS = ("fp32", "bf16")

SCHEDULERS = ("linear", "constant", "cosine")
"""Learning-rate schedules after the warm-up (``--scheduler``)."""

SHARDINGS = ("ddp", "fsdp")
"""How the processes of one run under torchrun share the model (see :mod:`tlora_analysis.distributed`)."""

REPORT_TO = ("tensorboard",)
"""Where ``train`` can send live update geometry besides run.json."""


MAX_ALPHA = 1e6
"""Largest |--alpha|: far beyond any real setting, and small enough that every scale it gives is readable back."""


def option(default: Any = MISSING, help: str = "", *, factory: Any = MISSING, cli: bool = True, flag: str | None = None,
           short: str | None = None, setting: bool = True, **argparse_kwargs: Any):
    """A dataclass field that carries its command-line help (peft's ``LoraConfig`` style).

    ``flag`` names a boolean field's switch (default ``--name``, or ``--no-name`` when the default is True);
    ``short`` is how a swept value appears in a study cell's name (``r8``; default: the name without
    underscores); ``setting=False`` marks a field that never changes what a run learns (the device), so
    it never becomes an analysis column."""
    metadata = {"help": help, "cli": cli, "flag": flag, "short": short, "setting": setting, "argparse": argparse_kwargs}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in run.json as ``config``.

    Each field's help text is the ``--option`` help of ``tlora-analysis train``.
    """

    method: str = option("tlora", "method: " + ", ".join(f"{n} ({s.label})" for n, s in METHOD_SPECS.items())
                         + "; 'full' trains the target matrices whole, 'head' only the classifier", choices=TRAIN_METHODS)
    task: str = option("default", "task; 'default' is the embedded offline sentiment task, 'lm' causal-LM fine-tuning "
                                  "(see --data-file), 'wordnet-*' real glosses from the installed WordNet", choices=tuple(TASKS), short="")
    model: str = option("default", "transformers name or local path; 'default' is the embedded all-MiniLM-L6-v2", short="")
    rank: int = option(8, "adapter rank r", short="r")
    alpha: float | None = option(None, _alpha_help(), short="a")
    init: str = option(_TLORA_INIT.default, _TLORA_INIT.help, choices=_TLORA_INIT.choices, short="init")
    targets: list[str] = option(help="module name suffixes to adapt, or a preset: attention, mlp, all-linear (every linear layer but "
                                     "the output head, as in peft)", factory=lambda: ["query", "value"], nargs="+", short="t")
    epochs: int = option(REPRODUCE_EPOCHS, "training epochs (with --resume: train up to this many)", short="e")
    lr: float | None = option(None, _lr_help(), short="lr")
    batch_size: int = option(32, "examples per optimizer step", short="bs")
    max_length: int = option(64, "maximum tokens per example")
    max_train_samples: int | None = option(None, "use only the first N training examples", short="n")
    max_eval_samples: int | None = option(None, "use only the first N validation examples")
    warmup_ratio: float = option(0.06, "fraction of all steps spent on linear learning-rate warm-up")
    scheduler: str = option("linear", "learning rate after the warm-up: linear decay to zero (as HF Trainer's default), constant, "
                                      "or cosine decay to zero", choices=SCHEDULERS, short="sched")
    weight_decay: float = option(0.0, "AdamW weight decay")
    seed: int = option(0, "seeds data order, dropout, the head and the frozen matrices", short="s")
    device: str = option("cpu", "cpu, cuda or cuda:N", setting=False)
    precision: str = option("fp32", "fp32, or bf16: forward and backward under bfloat16 autocast where the device supports it; "
                                    "the adapter factors stay float32 and are recorded in float32", choices=PRECISIONS)
    sharding: str = option("ddp", "under torchrun or accelerate launch: ddp keeps a whole model in every process; fsdp shards "
                                  "parameters, gradients and optimizer state (FSDP2, one unit per transformer block)",
                           choices=SHARDINGS, setting=False)
    data_dir: str | None = option(None, "local folder of GLUE files (GLUE's TSV layout or Hub-named CSV/parquet), or of WordNet's "
                                        "database for the wordnet tasks (default: where WordNet is installed)", setting=False)
    data_file: str | None = option(None, "--task lm: a local .txt (one example per line) or .jsonl ('text', or 'prompt' and "
                                         "'completion': loss on the completion only); default: the offline default LM task")
    record_grad_norms: bool = option(True, "record each layer's gradient-norm RMS per epoch", flag="--no-grad-norms", setting=False)
    report_to: list[str] = option(help=f"also send per-layer update geometry to these ({', '.join(REPORT_TO)})",
                                   factory=list, nargs="*", choices=REPORT_TO, setting=False)
    log_every_steps: int = option(0, "with --report-to: also log the geometry every N optimizer steps (0: per epoch only)", setting=False)
    peft_config: str | None = option(None, "with --method peft: the adapter_config.json of the peft adapter to train, any peft type "
                                           "with a ΔW (its target_modules, else --targets)", short="pc")

    def __post_init__(self) -> None:
        if self.method not in METHOD_SPECS:
            raise InputError(f"--method must be one of {', '.join(METHOD_SPECS)}, got {self.method!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.sharding not in SHARDINGS:
            raise InputError(f"--sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        if self.init not in TLORA_INITS:
            raise InputError(f"--init must be one of {', '.join(TLORA_INITS)}, got {self.init!r}")
        if self.scheduler not in SCHEDULERS:
            raise InputError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}")
        if self.task not in TASKS:
            raise InputError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("rank", "epochs", "batch_size", "max_length", "max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InputError(f"--{name.replace('_', '-')} must be a whole number of at least 1, got {value!r}")
        if self.log_every_steps < 0:
            raise InputError(f"--log-every-steps must be 0 or more, got {self.log_every_steps}")
        if TASKS[self.task].kind == "causal-lm" and (self.model == "default" or not METHOD_SPECS[self.method].adapts_layers):
            raise InputError("--task lm fine-tunes a causal language model: pass --model with a decoder (a Llama, Qwen2 or GPT-2 "
                             "folder or Hub name) and an adapter --method")
        if self.data_file is not None and TASKS[self.task].kind != "causal-lm":
            raise InputError(f"--data-file is for --task lm; --task {self.task} reads --data-dir")
        if self.lr is None:
            self.lr = default_rate(self.method, self.task)
        for name in ("lr", "alpha", "warmup_ratio", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise InputError(f"--{name.replace('_', '-')} must be a finite number, got {value!r}")
        if self.lr <= 0:
            raise InputError(f"--lr must be positive, got {self.lr}")
        self._check_ranges()
        self._check_peft()
        if not 0 <= self.warmup_ratio < 1:
            raise InputError(f"--warmup-ratio must be in [0, 1), got {self.warmup_ratio}")
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if not self.targets:
            raise InputError("--targets is empty: name at least one module, e.g. query value")
        self.targets = list(self.targets)
        unknown = sorted(set(self.report_to) - set(REPORT_TO))
        if unknown:
            raise InputError(f"--report-to {' '.join(unknown)}: not supported; choose from {', '.join(REPORT_TO)}")
        self.report_to = list(self.report_to)

    def _check_ranges(self) -> None:
        """Values ``train`` would accept but that give a run the toolkit cannot read back, or a traceback."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise InputError(f"--seed must be a whole number from 0 to 2^63 - 1, got {self.seed!r:.40}")
        if not isinstance(self.device, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", self.device):
            raise InputError(f"--device must be cpu, cuda, cuda:N or mps, got {self.device!r:.40}")
        if self.weight_decay < 0:
            raise InputError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.alpha is not None and abs(self.alpha) > MAX_ALPHA:
            raise InputError(f"--alpha must be at most {MAX_ALPHA:g} in magnitude, got {self.alpha:g}")
        for name in ("model", "data_dir", "data_file"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or "\x00" in value):
                raise InputError(f"--{name.replace('_', '-')} must be a path or name without NUL characters, got {value!r:.40}")

    def _check_peft(self) -> None:
        """``--peft-config`` goes with ``--method peft`` alone, and names a peft config of a type with a ΔW."""
        if (self.method == "peft") != (self.peft_config is not None):
            raise InputError("--method peft trains the config given with --peft-config FILE; give both or neither")
        if self.peft_config is None:
            return
        from .io import read_json
        from .peft_types.spec import peft_type_spec

        spec = peft_type_spec(read_json(self.peft_config, "adapter_config.json"), self.peft_config)
        if spec.kind not in ("factored", "dense"):
            raise InputError(f"--peft-config {self.peft_config}: a {spec.label} adapter has no ΔW to record: {spec.why}")

    def peft_settings(self, total_steps: int) -> dict | None:
        """The peft config this run trains (a peft method's, or the ``--peft-config`` file's); None for this toolkit's methods."""
        spec = METHOD_SPECS[self.method]
        if not spec.trains_through_peft:
            return None
        if self.peft_config is not None:
            from .io import read_json

            settings = read_json(self.peft_config, "adapter_config.json")
        else:
            settings = spec.peft_settings(self.rank, self.alpha, total_steps)
        return {"target_modules": list(self.targets), **settings}

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def field_shorts(cls: type = TrainConfig) -> dict[str, str]:
    """How each field's swept value appears in a study cell's name (``option(short=...)``)."""
    return {f.name: f.name.replace("_", "") if f.metadata.get("short") is None else f.metadata["short"] for f in fields(cls)}


def list_fields(cls: type = TrainConfig) -> tuple[str, ...]:
    """Fields whose one value is a list of strings (a list of lists sweeps them)."""
    return tuple(f.name for f in fields(cls) if str(f.type).startswith("list"))


def non_settings(cls: type = TrainConfig) -> tuple[str, ...]:
    """Fields that never change what a run learns (``option(setting=False)``): never analysis columns."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get("setting", True))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type = TrainConfig) -> None:
    """One ``--option`` per field of ``cls`` (:class:`TrainConfig` or another dataclass built
    with :func:`option`), with its help and default.

    Every default is ``None`` on the parser, so that :func:`config_from_arguments` can tell
    what the user gave (``train --resume`` must know that).
    """
    for f in fields(cls):
        if not f.metadata.get("cli"):
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        kwargs = dict(f.metadata["argparse"])
        kind = str(f.type)
        if kind == "bool":
            flag = f.metadata.get("flag") or f"--{'no-' if default else ''}{f.name.replace('_', '-')}"
            parser.add_argument(flag, dest=f.name, action="store_const", const=not default, default=None, help=f.metadata["help"]
                                + (" (on by default; this switch turns it off)" if default else ""))
            continue
        if "nargs" not in kwargs:
            kwargs["type"] = int if kind.startswith("int") else float if kind.startswith("float") else str
        shown = "" if default in (None, []) else f" (default: {' '.join(default) if isinstance(default, list) else default})"
        parser.add_argument(f"--{f.name.replace('_', '-')}", default=None, help=f.metadata["help"] + shown, **kwargs)


def config_from_arguments(args: argparse.Namespace, cls: type = TrainConfig) -> dict[str, Any]:
    """The fields of ``cls`` the user set on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}


@dataclass
class ReproduceOptions:
    """The main job's settings (``tlora-analysis reproduce``); each field is one of its options."""

    out: str = option("figures", "directory for figures, report.html and results.json")
    runs_dir: str = option("runs/reproduce", "the study directory; CSV tables go to its tables/")
    epochs: int = option(REPRODUCE_EPOCHS, "epochs per run")
    seeds: int = option(REPRODUCE_SEEDS, "seeds per method, 0 .. N-1")
    jobs: int = option(2, "runs at a time, sharing the machine's cores (two one-thread jobs are fastest on 2 cores: benchmark 7)")
    max_train_samples: int | None = option(None, "train on the first N examples only (for quick checks)")
    max_eval_samples: int | None = option(None, "evaluate on the first N examples only")
    model: str | None = option(None, "model name or path (default: the embedded all-MiniLM-L6-v2)")
    retrain: bool = option(False, "replace an existing study (swapped in once the new one has finished)")

    def __post_init__(self) -> None:  # epochs are checked as a training setting, jobs by the study's Executor
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise InputError(f"--seeds must be a whole number of at least 1, got {self.seeds!r}")


@dataclass(frozen=True)
class AnalysisSettings:
    """The analyses' constants, each written once: every signature's default and the CLI read them, and
    ``figures.json`` records them beside the figures they made."""

    histogram_bins: int = 40
    """Bins of the trained matrices' entry histograms."""
    baseline_samples: int = 32
    """Random updates per (shape, rank) for the chance level of a cosine."""
    intruder_k: int = 10
    """How many of the merged weight's top singular vectors the intruder count looks at."""
    intruder_epsilon: float = 0.5
    """A top singular vector is an intruder if its best cosine with W0's singular vectors is below this."""
    energy_rank: float = 0.9
    """Share of Σσ² that the energy rank keeps."""


ANALYSIS = AnalysisSettings()

