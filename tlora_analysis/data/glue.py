"""GLUE tasks: specs, loading (Hub or local GLUE-layout files) and the official metrics.

Local folders may hold either GLUE's original distribution (``SST-2/train.tsv``,
``SST-2/dev.tsv``, ... with GLUE's own column names) or files with the Hub's column names
(``sst2/train.parquet``, ``validation.csv``, ...). Every example comes back in the Hub's
schema: the task's text columns plus an integer (or float, STS-B) ``label``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from .tasks import TASKS, TaskSpec

__all__ = ["TaskSpec", "TaskData", "TASKS", "load_task", "task_files", "compute_metrics"]

@dataclass
class TaskData:
    spec: TaskSpec
    train: list[dict]
    validation: list[dict]


def load_task(
    task: str,
    data_dir: str | Path | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    data_file: str | Path | None = None,
) -> TaskData:
    """Load a task's train and validation splits.

    ``task="default"`` is the embedded offline grammar task; WordNet tasks read the database
    where it is installed (``data_dir`` first, see :mod:`.wordnet`). For GLUE tasks, ``data_dir``
    reads local files (see the module docstring); without it the ``datasets`` library
    fetches ``nyu-mll/glue`` from the Hub.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    spec = TASKS[task]
    train, validation = _LOADERS[spec.source](spec, data_dir, data_file)
    return TaskData(spec, train[:max_train_samples], validation[:max_eval_samples])


def _generated(spec: TaskSpec, data_dir, data_file) -> tuple[list[dict], list[dict]]:
    from .default_task import generate

    splits = generate()
    return splits["train"], splits["validation"]


def _text(spec: TaskSpec, data_dir, data_file) -> tuple[list[dict], list[dict]]:
    from .lm import default_lm_examples, read_lm_file

    splits = read_lm_file(data_file) if data_file is not None else default_lm_examples()
    return splits["train"], splits["validation"]


def _wordnet(spec: TaskSpec, data_dir, data_file) -> tuple[list[dict], list[dict]]:
    from .wordnet import load_wordnet

    splits = load_wordnet(spec.name, data_dir)
    return splits["train"], splits["validation"]


def _glue(spec: TaskSpec, data_dir, data_file) -> tuple[list[dict], list[dict]]:
    if data_dir is None:
        return _load_from_hub(spec)
    folder = _task_folder(Path(data_dir), spec)
    return _read_split(folder, spec, ("train",)), _read_split(folder, spec, _validation_names(spec))


_LOADERS = {"generated": _generated, "glue": _glue, "wordnet": _wordnet, "text": _text}
"""Each of ``TaskSpec.source``'s values, read (a test checks every source has one)."""


def _wordnet_files(spec: TaskSpec, data_dir, data_file) -> list[Path]:
    from .wordnet_db import find_wordnet

    return sorted(p for p in find_wordnet(data_dir).iterdir() if p.is_file())


_FILES = {"generated": lambda spec, data_dir, data_file: [],  # the package's code holds it
          "glue": lambda spec, data_dir, data_file: (None if data_dir is None
                                                     else sorted(p for p in _task_folder(Path(data_dir), spec).iterdir() if p.is_file())),
          "wordnet": _wordnet_files,
          "text": lambda spec, data_dir, data_file: [Path(data_file)] if data_file is not None else []}
"""Each source's files, as :func:`task_files` names them (a test checks every source has an entry)."""


def task_files(task: str, data_dir: str | Path | None = None, data_file: str | Path | None = None) -> list[Path] | None:
    """The files a task's examples are read from ([] where the package's code generates them), or None where they
    cannot be named (GLUE from the Hub): what a stored table computed from the examples is keyed by."""
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    spec = TASKS[task]
    return _FILES[spec.source](spec, data_dir, data_file)


def _validation_names(spec: TaskSpec) -> tuple[str, ...]:
    if spec.validation_split == "validation_matched":
        return ("dev_matched", "validation_matched")
    return ("dev", "validation")


def _task_folder(data_dir: Path, spec: TaskSpec) -> Path:
    if not data_dir.is_dir():
        raise InputError(f"--data-dir {data_dir}: not a directory")
    for candidate in (data_dir / spec.glue_dir, data_dir / spec.name, data_dir):
        if candidate.is_dir() and any(candidate.glob("train.*")):
            return candidate
    raise InputError(
        f"--data-dir {data_dir}: no train.tsv/.csv/.parquet for task {spec.name!r} "
        f"in {data_dir / spec.glue_dir}, {data_dir / spec.name} or {data_dir}"
    )


def _read_split(folder: Path, spec: TaskSpec, stems: tuple[str, ...]) -> list[dict]:
    import pandas as pd

    for stem in stems:
        for suffix in (".tsv", ".csv", ".parquet"):
            path = folder / f"{stem}{suffix}"
            if not path.exists():
                continue
            if not path.is_file():  # a FIFO named train.tsv would block the read forever
                raise InputError(f"{path}: not a regular file")
            try:
                if suffix == ".tsv":
                    frame = pd.read_csv(
                        path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str, keep_default_na=False,
                        header=0 if spec.tsv_header else None,
                        names=list(spec.tsv_names) if spec.tsv_names else None,
                    ).rename(columns=spec.tsv_columns)
                elif suffix == ".csv":
                    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
                else:
                    frame = pd.read_parquet(path)
            except Exception as err:  # pandas raises many types for a malformed file
                raise InputError(f"{path}: cannot be read as {suffix[1:]} ({err})") from err
            return _to_examples(frame, spec, path)
    raise InputError(f"{folder}: no {' or '.join(stems)} split (.tsv, .csv or .parquet) for task {spec.name!r}")


def _to_examples(frame, spec: TaskSpec, path: Path) -> list[dict]:
    missing = [c for c in (*spec.text_columns, "label") if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}")
    frame = frame[frame["label"].astype(str) != "-"]  # MNLI marks unlabelled pairs with "-"
    labels = frame["label"].astype(str).map(lambda v: spec.label_map.get(v, v))
    try:
        labels = labels.astype(float if spec.num_labels == 1 else int)
    except ValueError as err:
        raise InputError(f"{path}: labels must be {'numbers' if spec.num_labels == 1 else 'class ids or GLUE label names'} ({err})") from err
    columns = {c: frame[c].astype(str).tolist() for c in spec.text_columns}
    return [{**{c: columns[c][i] for c in spec.text_columns}, "label": label} for i, label in enumerate(labels.tolist())]


def _load_from_hub(spec: TaskSpec) -> tuple[list[dict], list[dict]]:  # pragma: no cover - needs the network
    try:
        from datasets import load_dataset
    except ImportError as err:
        raise InputError("loading GLUE from the Hub needs the datasets package (pip install 'tlora-analysis[glue]'), or pass --data-dir") from err
    try:
        dataset = load_dataset("nyu-mll/glue", spec.name)
    except (ConnectionError, OSError, ValueError) as err:  # offline: datasets' own ConnectionError, or HF_HUB_OFFLINE
        raise InputError(f"--task {spec.name}: could not load nyu-mll/glue from the Hub ({str(err).splitlines()[0][:120]}); "
                         f"offline, pass --data-dir with GLUE's files (e.g. {spec.name.upper()}/train.tsv and dev.tsv)") from err
    keep = (*spec.text_columns, "label")
    return (
        [{k: row[k] for k in keep} for row in dataset["train"]],
        [{k: row[k] for k in keep} for row in dataset[spec.validation_split]],
    )


def compute_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official GLUE metrics. ``predictions`` are class ids (or scores for STS-B)."""
    spec = TASKS[task]
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out: dict[str, float] = {}
    for name in spec.metrics:
        if name == "accuracy":
            out[name] = float(np.mean(predictions == labels))
        elif name == "f1":
            out[name] = _f1(predictions, labels)
        elif name == "matthews_correlation":
            out[name] = _matthews(predictions, labels)
        elif name == "pearson":
            from scipy import stats

            out[name] = float(stats.pearsonr(predictions, labels)[0])
        elif name == "spearman":
            from scipy import stats

            out[name] = float(stats.spearmanr(predictions, labels)[0])
    return out


def _f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denominator == 0 else float((tp * tn - fp * fn) / denominator)
