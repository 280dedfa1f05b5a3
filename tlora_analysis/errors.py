"""The one exception type for bad user input, and the check that raises it for a missing field.

Anything raised as :class:`InputError` is the user's to fix (a missing file, a corrupt
snapshot, a wrong argument): the CLI prints its message on one line and exits 2, with no
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class InputError(ValueError):
    """Bad input from the user: a path, file, key or argument that is not what was expected."""


def require(mapping: Mapping, key: str, where: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """``mapping[key]``, or an :class:`InputError` that names where it was missing or mistyped."""
    if key not in mapping:
        raise InputError(f"{where}: missing field {key!r}")
    value = mapping[key]
    if kind is not None and not isinstance(value, kind):
        raise InputError(f"{where}: field {key!r} should be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return value
