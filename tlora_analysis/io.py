"""Torch-free file I/O that trusts nothing: atomic writes, bounded JSON, regular files only, path confinement.

Every writer in the package goes through :func:`atomic_write_bytes` (a temporary file renamed
into place), so a killed process never leaves a half-written file under a final name.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import InputError

__all__ = ["PICKLE_SUFFIXES", "refuse_pickle", "refuse_pickled_files", "atomic_write_bytes", "atomic_write_json", "umask", "read_json", "regular_file", "inside", "MAX_JSON_BYTES", "check_output", "existing_path", "split_label", "parse_json"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync it, and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would hide a run from colleagues
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON that :func:`parse_json` reads back: a float that is not finite (an undefined Pearson r) becomes null,
    since JSON has no NaN and every reader here refuses one."""
    atomic_write_bytes(path, (json.dumps(_finite_or_null(obj), indent=2, sort_keys=False) + "\n").encode())


def _finite_or_null(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: _finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_null(value) for value in obj]
    return obj


MAX_JSON_BYTES = 64 << 20
"""Largest JSON file read (a 70B-shaped run.json with 11 epochs is under 1 MiB)."""


def regular_file(path: Path, what: str) -> None:
    """A FIFO or a device would hang or never end a read: only regular files are read."""
    if not path.exists():
        raise InputError(f"{path}: no such {what}")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a {what} is read only from a regular file)")


MAX_INTEGER_DIGITS = 19
"""The longest JSON integer read (about 2^63): no count, step or size in a file this toolkit reads is longer, and
Python refuses to convert past 4,300 digits with a traceback."""


class _BadNumber(ValueError):
    pass


def _refuse_constant(name: str):
    raise _BadNumber(f"{name} is not a number any field here may hold")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BadNumber(f"{text[:40]} is beyond the range of a float")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise _BadNumber(f"an integer of {len(text.lstrip('-')):,} digits (at most {MAX_INTEGER_DIGITS})")
    return int(text)


def parse_json(data: bytes | str, where: str, what: str = "JSON file"):
    """JSON as every reader here parses it: numbers finite and bounded (NaN, Infinity, 1e400 and 5,000-digit
    integers refused, one rule for every file), or :class:`InputError` naming ``where`` and the problem."""
    try:
        return json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except _BadNumber as err:
        raise InputError(f"{where}: {err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{where}: not valid JSON ({err})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply to be a {what}") from None


def read_json(path: str | Path, what: str = "JSON file") -> dict:
    """Parse a JSON object, or raise :class:`InputError` naming the file and the problem."""
    path = Path(path)
    regular_file(path, what)
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise InputError(f"{path}: {size:,} bytes, more than the {MAX_JSON_BYTES:,} a {what} may have")
    obj = parse_json(path.read_bytes(), str(path), what)
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def inside(root: Path, path: Path, what: str) -> Path:
    """``path``, if it resolves to a place inside ``root``; symbolic links inside a run are
    followed only while they stay inside it, so a planted link cannot read or write elsewhere."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise InputError(f"{path}: {what} resolves to {resolved}, outside {root}; refusing to follow it")
    return path


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"{path}: refusing to read a pickle-based file ({path.suffix}); unpickling executes code stored in the file. "
            "Convert it once in a trusted environment to safetensors, e.g. "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')"
        )


def refuse_pickled_files(folder: Path, only_if_no: str | None = None) -> None:
    """If a folder holds a pickle-based file, say so (a better error than 'no safetensors found').

    With ``only_if_no=".safetensors"``, pickles beside a safetensors file are left alone:
    the loader reads the safetensors and never opens them.
    """
    files = list(folder.iterdir())
    if only_if_no and any(p.suffix == only_if_no for p in files):
        return
    pickled = sorted(p for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        refuse_pickle(pickled[0])


def split_label(argument: str) -> tuple[str | None, str]:
    """A source argument as (label, path): ``NAME=PATH`` where the whole argument is no existing path, else (None, it).
    Every reader of a source argument asks this, so that a label is never looked up as a file (one of 300
    characters had failed with "File name too long")."""
    if "=" in argument and not existing_path(argument):
        label, _, path = argument.partition("=")
        return label, path
    return None, argument


def existing_path(text: str) -> bool:
    """Whether ``text`` names an existing path; a name the system cannot even look up (too long) names none."""
    try:
        return Path(text).exists()
    except OSError:
        return False


def check_output(out: Path, sources: list[Path], kind: str) -> None:
    """Refuse, before any work, an output that would land inside or on a source, a directory where a ``file`` is
    meant, or a place that cannot be written: nothing read is ever overwritten, and no error comes after minutes
    of work. A source is protected whole where it is a folder (a run, an adapter, a study); a file source protects
    itself, and a snapshot file its run."""
    import os

    target = Path(out).resolve()
    for source in sources:
        source = Path(source).resolve()
        protected = source.parent.parent if source.is_file() and source.parent.name == "snapshots" else source
        if target == protected or (protected.is_dir() and target.is_relative_to(protected)):
            raise InputError(f"{out}: is inside the source {protected}; write outputs elsewhere, never into what is read")
    if kind == "file" and (target.is_dir() or str(out).endswith(("/", os.sep)) or Path(out).name in ("", ".", "..")):
        raise InputError(f"{out}: is a directory; give the name of the file to write")
    if kind == "dir" and target.exists() and not target.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    existing = target if kind == "dir" else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot write there ({existing} is not a writable directory)")
