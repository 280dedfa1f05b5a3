"""Tasks to fine-tune on: GLUE (Hub or local files) and the embedded offline default task."""

from importlib import import_module

from .tasks import TASKS, TaskSpec

__all__ = ["TASKS", "TaskSpec", "TaskData", "load_task", "task_files", "compute_metrics"]


def __getattr__(name: str):  # the loaders import numpy and pandas; the specs must not
    if name in ("TaskData", "load_task", "task_files", "compute_metrics"):
        return getattr(import_module(".glue", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
