"""A study spec: ``train``'s options in snake_case, scalars fixed, lists swept, method-keyed tables per method.

The grid is the product of the lists; each cell is named from what is swept (``tlora-r8-lr3e-2-s1``).
"""

from __future__ import annotations

import itertools
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import TrainConfig, field_shorts, list_fields
from ..errors import InputError
from ..methods.spec import METHOD_SPECS

__all__ = ["StudySpec", "parse_spec", "SPEC_KEYS", "LIST_FIELDS", "SHORT"]

SPEC_KEYS = tuple(f.name for f in fields(TrainConfig))
LIST_FIELDS = list_fields()
"""A list of strings is one value of these; a list of lists sweeps them."""
SHORT = field_shorts()
"""How a swept setting appears in a cell's name (``option(short=...)`` in ``TrainConfig``)."""


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.1:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    if isinstance(value, list):
        return "+".join(map(format_value, value))
    return str(value).replace("/", "_")


@dataclass
class StudySpec:
    """A parsed study spec: fixed settings, swept lists, and per-method values."""

    fixed: dict[str, Any] = field(default_factory=dict)
    swept: dict[str, list] = field(default_factory=dict)
    per_method: dict[str, dict[str, list]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return self.swept.get("method") or [self.fixed["method"]]

    @property
    def named(self) -> list[str]:
        """The settings that appear in cell names: every swept or per-method key, in spec order, seed last."""
        keys = [k for k in self.raw if k != "method" and (k in self.swept or k in self.per_method)]
        return sorted(keys, key=lambda k: k == "seed")

    def cells(self, where: str = "study spec") -> dict[str, dict[str, Any]]:
        """``name -> settings`` (what is swept, plus ``method``) for every cell of the grid."""
        cells: dict[str, dict[str, Any]] = {}
        for method in self.methods:
            options = {k: v for k, v in self.swept.items() if k != "method"}
            options.update({k: values[method] for k, values in self.per_method.items() if method in values})
            keys = [k for k in self.named if k in options]
            for combo in itertools.product(*(options[k] for k in keys)):
                settings = {"method": method, **dict(zip(keys, combo))}
                name = "-".join([method] + [f"{SHORT[k]}{format_value(v)}" for k, v in zip(keys, combo)])
                if name in cells:
                    raise InputError(f"{where}: two cells would both be named {name!r}; make the swept values distinct")
                cells[name] = settings
        return cells

    def config(self, settings: Mapping[str, Any]) -> TrainConfig:
        return TrainConfig(**{**self.fixed, **settings})


MAX_CELLS = 10_000
"""Largest grid a spec may give (``max_cells`` raises it): checked from the list lengths before any cell is enumerated."""
SCALARS = (str, int, float, bool)


def parse_spec(source: str | Path | Mapping[str, Any], where: str = "study spec", max_cells: int = MAX_CELLS) -> StudySpec:
    """Read a spec from a TOML file or a dict, and check every cell's settings.

    Every problem is an :class:`InputError` naming the file and the key: a TOML syntax error
    (with its line), an unknown key, a value that is not a string, number, boolean or a list or
    method-keyed table of them, an empty list, a grid of more than ``max_cells`` cells, a
    per-method value for a method that is not in the grid, and any value ``train`` would reject.
    """
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise InputError(f"{path}: no such study spec (a TOML file)")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise InputError(f"{path}: not valid TOML ({err})") from err
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not a text file ({err})") from err
        except RecursionError as err:
            raise InputError(f"{path}: nested too deeply to be a study spec") from err
    _check_value_types(raw, where)
    unknown = [k for k in raw if k not in SPEC_KEYS]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r}; allowed keys are {', '.join(SPEC_KEYS)}")
    methods = raw.get("method")
    if not (isinstance(methods, str) or (isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods))):
        raise InputError(f"{where}: needs 'method': one of {', '.join(METHOD_SPECS)}, or a list of them; got {methods!r:.60}")
    spec = StudySpec(raw=raw)
    for key, value in raw.items():
        if isinstance(value, dict):
            if key == "method":
                raise InputError(f"{where}: 'method' cannot be given per method")
            spec.per_method[key] = {m: _as_list(v, f"{key}.{m}", where) for m, v in value.items()}
        elif isinstance(value, list) and not (key in LIST_FIELDS and all(isinstance(v, str) for v in value)):
            spec.swept[key] = _as_list(value, key, where)
        else:
            spec.fixed[key] = value
    methods = spec.methods
    _check_grid_size(spec, where, max_cells)
    for key, values in spec.per_method.items():
        stray = sorted(set(values) - set(methods))
        if stray:
            raise InputError(f"{where}: '{key}' gives a value for method {stray[0]!r}, which is not in the grid (methods: {', '.join(methods)})")
    cells = spec.cells(where)
    for name, settings in cells.items():
        try:
            spec.config(settings)
        except InputError as err:
            raise InputError(f"{where}: cell {name}: {err}") from err
        except (TypeError, ValueError) as err:
            raise InputError(f"{where}: cell {name}: {err}") from err
    return spec


def _check_value_types(raw: Mapping[str, Any], where: str) -> None:
    """Strings, numbers, booleans, lists of them, or method-keyed tables of those: nothing else (a TOML
    date, a table nested in a list, a NUL in a string) reaches a training config."""
    def ok(value, depth):
        if isinstance(value, SCALARS):
            return not (isinstance(value, str) and "\x00" in value)
        if isinstance(value, list) and depth < 2:
            return all(ok(v, depth + 1) for v in value)
        return False

    for key, value in raw.items():
        values = value.values() if isinstance(value, dict) else [value]
        if not all(ok(v, 0) for v in values):
            raise InputError(f"{where}: '{key}' should be a string, number or boolean, a list of them, or a table of them per method; "
                             f"got {value!r:.80}")


def _check_grid_size(spec: StudySpec, where: str, max_cells: int) -> None:
    sizes = [len(spec.swept.get(k, [])) or 1 for k in spec.swept if k != "method"]
    per_method = [max((len(v) for v in values.values()), default=1) for values in spec.per_method.values()]
    bound = len(spec.methods) * math.prod(sizes) * math.prod(per_method)
    if bound > max_cells:
        raise InputError(f"{where}: the grid has up to {bound:,} cells, more than {max_cells:,}; sweep fewer values, "
                         "or raise the limit (--max-cells)")


def _as_list(value: Any, key: str, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise InputError(f"{where}: '{key}' is an empty list, so the grid is empty")
    if any(isinstance(v, dict) for v in values):
        raise InputError(f"{where}: '{key}' holds a table; give a value or a list of values")
    return values
