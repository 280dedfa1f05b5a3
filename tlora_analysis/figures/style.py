"""One style for every figure: fonts, colour-blind-safe colours (Okabe–Ito), saving as PNG and PDF."""

from __future__ import annotations

import io
import math
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib import cm, colors, ticker

from ..io import atomic_write_bytes
from ..methods.spec import FALLBACK_COLOUR, METHOD_SPECS
from ..states import FINAL_STATE

METHOD_COLORS = {name: spec.colour for name, spec in METHOD_SPECS.items()}
"""One colour per method (from its spec), the same in every figure; none is a module colour."""
METHOD_LABELS = {name: spec.label for name, spec in METHOD_SPECS.items()}
# Modules (query, value, ...) get other Okabe–Ito colours, so blue and vermillion always mean the methods.
MODULE_PALETTE = ["#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
SEQUENTIAL = "viridis"  # layers and epochs
DIVERGING = "RdBu_r"  # signed similarities
DPI = 150

RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.constrained_layout.use": True,
    "savefig.dpi": DPI,
    "text.parse_math": False,  # labels are drawn as written: a source named "$x$" is not mathtext, and cannot break a figure
}


def log_axis(ax, which: str = "x", scale: str = "log", **options) -> None:
    """A log (or symlog) axis with ticks written 0.01, 1, 10: text is drawn literally here (no mathtext), so
    matplotlib's own 10^k tick labels would show as their source."""
    (ax.set_xscale if which == "x" else ax.set_yscale)(scale, **options)
    _plain_ticks(ax.xaxis if which == "x" else ax.yaxis)


def _plain_ticks(axis) -> None:
    """Major ticks as numbers; on an axis spanning less than 1.5 decades, where it may hold one major tick or
    none, the minor ticks at 2 and 5 x 10^k are labelled too (matplotlib's own log labels do the same in mathtext)."""
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))

    def minor(value: float, _) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0 or high / low > 30:
            return ""
        mantissa = value / 10 ** math.floor(math.log10(value) + 1e-9)
        return f"{value:g}" if abs(mantissa - round(mantissa)) < 1e-6 and round(mantissa) in (2, 5) else ""

    axis.set_minor_formatter(ticker.FuncFormatter(minor))


def plain_log_ticks(fig) -> None:
    """Every log or symlog axis of a figure written as :func:`log_axis` writes it, whoever set its scale (a
    ``semilogy`` or a colour bar's norm): the one rule that keeps mathtext source off every axis."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() in ("log", "symlog") and not isinstance(axis.get_major_formatter(), ticker.FuncFormatter):
                _plain_ticks(axis)


@contextmanager
def style():
    """Apply the package's style inside a ``with`` block, leaving the caller's settings alone."""
    with sns.axes_style("whitegrid"), plt.rc_context(RC):
        yield


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def method_color(method: str) -> str:
    """A method's colour; a method no spec names (a source from elsewhere) gets the fallback grey."""
    return METHOD_COLORS.get(method, FALLBACK_COLOUR)


class NothingToDraw(Exception):
    """Raised by a figure whose tables hold nothing it can show (only one-state sources for a figure of
    trajectories); the figure is skipped and ``figures.json`` records the message."""


def trajectories(table):
    """The rows of sources with more than one epoch (runs), without their zero epoch 0."""
    multi = table.groupby("run").epoch.transform("nunique") > 1
    rows = table[multi & (table.epoch != 0)]
    if rows.empty:
        raise NothingToDraw("no source has a trajectory (adapters, exports and snapshot files hold one state)")
    return rows


LINE_STYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "^", "D", "v", "P"]


def source_styles(table) -> dict[str, dict]:
    """Per source label (the ``run`` column): its method's colour, and a line style and marker of its own among all
    the sources drawn, so that two seeds of one method, or two methods of similar colours (a LoRA run and a DoRA
    adapter), stay apart in one panel and in grey print."""
    styles = {}
    pairs = table[["run", "method"]].drop_duplicates("run").itertuples(index=False)
    for k, (label, method) in enumerate(pairs):
        styles[label] = {"color": method_color(method), "linestyle": LINE_STYLES[k % len(LINE_STYLES)], "marker": MARKERS[k % len(MARKERS)]}
    return styles


def module_look(style: dict, module: str, modules: list[str]) -> dict:
    """A source's style for one of its modules: the first module's markers filled, the others' hollow, so that the
    source keeps its line style (:func:`source_styles`) and its modules still part."""
    return style if module == modules[0] else {**style, "markerfacecolor": "white"}


def ci_bars(mean, low, high):
    """Error bars (below, above) of a mean and its CI, as ``errorbar``'s ``yerr``/``xerr`` wants them, or None where no
    CI is known. A CI of identical values (every seed equal) meets its mean only to rounding: a bar a hair below zero
    is drawn as zero, not refused (matplotlib refuses negative bars)."""
    below = np.atleast_1d(np.asarray(mean, dtype=float) - np.asarray(low, dtype=float))
    above = np.atleast_1d(np.asarray(high, dtype=float) - np.asarray(mean, dtype=float))
    if np.isnan(below).all():
        return None
    return np.clip(np.vstack([below, above]), 0.0, None)


def sources_of(table) -> list[tuple[str, str]]:
    """(label, method) of every source in a table, methods in registry order."""
    order = {name: i for i, name in enumerate(METHOD_SPECS)}
    pairs = table[["run", "method"]].drop_duplicates().itertuples(index=False)
    return sorted(pairs, key=lambda p: (order.get(p[1], len(order)), p[0]))


def source_title(label: str, method: str) -> str:
    """A panel title: the label, with the method's name where the label does not start with it."""
    return label if label.startswith(method) else f"{label} ({method_label(method)})"


def sequential_colors(values) -> tuple[dict, cm.ScalarMappable]:
    """A colour per value (layer or epoch) and the mappable for its colour bar."""
    values = sorted(set(values))
    norm = colors.Normalize(vmin=min(values), vmax=max(values) if max(values) > min(values) else min(values) + 1)
    mappable = cm.ScalarMappable(norm=norm, cmap=SEQUENTIAL)
    return {v: mappable.to_rgba(v) for v in values}, mappable


def module_color(module: str, modules: list[str]) -> str:
    return MODULE_PALETTE[modules.index(module) % len(MODULE_PALETTE)]


def modules_of(table) -> list[str]:
    """The adapted module names (``attention.self.query``, ...) of a table, in a stable order; a table with no rows
    left to draw (only epoch 0, where every update is zero) is a figure skipped, and figures.json says why."""
    modules = sorted(table["module"].unique())
    if not modules:
        raise NothingToDraw("no rows to draw: every update here is the zero update of epoch 0 (before training)")
    return modules


def state_positions(epochs) -> dict[int, int]:
    """Where each state stands on an epoch axis: an epoch at itself, a one-state source's final state (an adapter's,
    whose epoch is unknown) one step after the last epoch drawn, labelled "final" by :func:`label_states`."""
    trajectory = sorted({int(e) for e in epochs} - {FINAL_STATE})
    positions = {epoch: epoch for epoch in trajectory}
    if FINAL_STATE in {int(e) for e in epochs}:
        positions[FINAL_STATE] = trajectory[-1] + 1 if trajectory else 0
    return positions


def state_label(epoch: int) -> str:
    """An epoch axis's tick: the epoch's number, or "final" for a one-state source."""
    return "final" if int(epoch) == FINAL_STATE else str(int(epoch))


def label_states(axis, positions: dict[int, int]) -> None:
    """Tick an epoch axis at the states' positions, by name, where a one-state source stands on it (else the integer
    ticks of :func:`integer_epochs` serve)."""
    if FINAL_STATE in positions:
        axis.set_ticks(list(positions.values()), [state_label(epoch) for epoch in positions])


def layer_epoch_heatmap(fig, ax, grid, *, cmap: str, label: str, title: str, **limits) -> None:
    """A layer x epoch table (``DataFrame.pivot(index="layer", columns="epoch")``) as a heat map with its colour bar."""
    image = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", cmap=cmap, **limits)
    ax.set_xticks(range(grid.shape[1]), [state_label(epoch) for epoch in grid.columns])
    ax.set_yticks(range(grid.shape[0]), grid.index)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.grid(False)
    fig.colorbar(image, ax=ax, label=label)


def integer_epochs(fig) -> None:
    """Epochs, layers and singular-value indices are integers: no 1.5 ticks on any axis labelled with them."""
    for ax in fig.axes:
        if ax.get_xlabel() in ("epoch", "layer", "index i") and not isinstance(ax.xaxis.get_major_locator(), ticker.FixedLocator):
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if hasattr(ax, "_colorbar") and ax.get_ylabel() in ("epoch", "layer"):
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))


FORMATS = ("png", "pdf")
"""What ``figures`` writes by default: PNG (150 dpi) for pages and notebooks, PDF for papers."""


def save(fig, out_dir: str | Path, name: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write ``name.<format>`` for each format (PNG at 150 dpi), close the figure and return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    integer_epochs(fig)
    plain_log_ticks(fig)
    paths = [out_dir / f"{name}.{fmt}" for fmt in formats]
    for path in paths:
        # No creation date in PDFs: regenerating unchanged figures leaves the files byte-identical.
        metadata = {"CreationDate": None} if path.suffix == ".pdf" else None
        buffer = io.BytesIO()
        fig.savefig(buffer, format=path.suffix[1:], dpi=DPI, bbox_inches="tight", metadata=metadata)
        atomic_write_bytes(path, buffer.getvalue())  # replaces a planted link instead of writing through it
    plt.close(fig)
    return paths
