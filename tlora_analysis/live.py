"""Live update geometry: per-layer numbers cheap enough to log while training.

Every number comes from the factored ΔW (a thin QR per factor and an r x r SVD), so
logging each layer every few steps costs microseconds, not a dense SVD. The numbers go
to *sinks*: the logging integrations people already watch.

- :class:`TrainerSink` sends them through ``Trainer.log``, so every ``report_to``
  integration (TensorBoard, Weights & Biases, MLflow, ...) receives them, and adds
  core histograms to the Trainer's own TensorBoard writer if it has one.
- :class:`TensorBoardSink` writes an event directory (``train --report-to tensorboard``).

Tags read ``geometry/<quantity>/<layer>``, so TensorBoard groups one panel per quantity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from .errors import InputError
from .factored import FactoredDelta, cosine_similarity

__all__ = ["update_geometry", "GeometrySink", "TensorBoardSink", "make_sinks"]


def update_geometry(
    deltas: Mapping[str, FactoredDelta],
    scales: Mapping[str, float] | None = None,
    previous: Mapping[str, FactoredDelta] | None = None,
) -> dict[str, float]:
    """``{"geometry/<quantity>/<layer>": value}``: ‖ΔW‖_F, σ₁, stable rank, the layer's scale
    (TLoRA's α) and the cosine to ``previous`` (the last snapshot). Values that are not
    defined (the ranks and cosine of a zero update) are left out rather than logged as NaN.
    """
    metrics: dict[str, float] = {}
    for name, delta in deltas.items():
        s = delta.singular_values()
        frobenius = float(s.square().sum().sqrt())
        values = {"frobenius": frobenius, "sigma1": float(s[0]) if len(s) else 0.0}
        if values["sigma1"] > 0:
            values["stable_rank"] = frobenius**2 / values["sigma1"] ** 2
        if scales is not None and name in scales:
            values["scale"] = float(scales[name])
        if previous is not None and name in previous:
            values["cosine_to_previous"] = cosine_similarity(delta, previous[name])
        metrics.update({f"geometry/{key}/{name}": v for key, v in values.items() if math.isfinite(v)})
    return metrics


class GeometrySink(Protocol):
    """Where live geometry goes. ``step`` is the global optimizer step."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """Writes scalars and histograms to a TensorBoard event directory."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise InputError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from err
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def close(self) -> None:
        self.writer.close()


def make_sinks(report_to: list[str], run_dir: Path) -> list[GeometrySink]:
    """Sinks for ``train --report-to``: TensorBoard events go to ``RUN_DIR/tensorboard``, never through a link planted there."""
    folder = Path(run_dir) / "tensorboard"
    if "tensorboard" in report_to and (folder.is_symlink() or (folder.exists() and not folder.is_dir())):
        raise InputError(f"{folder}: is a symbolic link or not a folder; a run writes only inside its own directory")
    return [TensorBoardSink(folder) for name in report_to if name == "tensorboard"]
