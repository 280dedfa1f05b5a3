"""Studies: a grid of training runs from one TOML spec, run by an existing engine, analysed together.

A spec is ``train``'s options in snake_case. A scalar is fixed; a list is swept; a table
keyed by method gives per-method values (each a scalar or a list)::

    method = ["lora", "tlora"]
    seed = [0, 1, 2]
    rank = [4, 8]
    epochs = 3
    lr = { lora = 1e-3, tlora = [1e-2, 3e-2] }

The grid is the product of the lists. Each cell is an ordinary run directory,
``DIR/runs/<name>``, named from what is swept (``tlora-r8-lr3e-2-s1``). ``DIR/study.json``
records the spec and each cell's status; the runs themselves are the truth, so a study
killed at any moment is resumed by running the same command again.

:mod:`.spec` parses specs, :mod:`.directory` reads study directories (``Study``,
``load_study``) and :mod:`.execute` runs cells (locally, or through submitit); the last is
imported only when something runs.
"""

from importlib import import_module

from .directory import Study, load_study
from .spec import StudySpec, parse_spec

__all__ = ["StudySpec", "Study", "parse_spec", "load_study", "Executor", "run_study", "run_cell", "EXECUTORS"]


def __getattr__(name: str):  # the executors (subprocess, submitit) load only when a study runs
    if name in ("Executor", "run_study", "run_cell", "EXECUTORS", "cell_threads"):
        return getattr(import_module(".execute", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
