"""Tasks to fine-tune on: GLUE (Hub or local files) and the embedded offline default task."""

from .glue import TASKS, TaskData, TaskSpec, compute_metrics, load_task

__all__ = ["TASKS", "TaskSpec", "TaskData", "load_task", "compute_metrics"]
