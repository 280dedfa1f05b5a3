"""The registry of source formats: every kind of saved update a user may bring, each recognised cheaply.

A :class:`SourceFormat` says how to recognise a path (from its folder listing or a safetensors header,
never a full read) and how to open it. :func:`open_updates` asks the formats in their order, as
the methods ask ``METHOD_SPECS``; the first that recognises the path opens it. A format that
recognises a path but cannot read it says so in one line that names the format.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import InputError
from ..io import existing_path, refuse_pickle, refuse_pickled_files

__all__ = ["SourceFormat", "FORMATS", "register_format", "open_updates", "origin", "Sniff", "formats_table"]


class Sniff:
    """What recognising a path may look at: a folder's entry names, or a safetensors file's header keys."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def names(self) -> set[str]:
        """The entries of a folder (a file has none)."""
        return {p.name for p in self.path.iterdir()} if self.path.is_dir() else set()

    @cached_property
    def _header(self) -> tuple[dict, dict]:
        from ..tensors import read_header

        return read_header(self.path) if self.path.is_file() else ({}, {})

    @property
    def keys(self) -> list[str]:
        """The tensor names in a safetensors file's header (a folder has none)."""
        return list(self._header[0])

    @property
    def metadata(self) -> dict[str, str]:
        """A safetensors file's ``__metadata__`` (a snapshot of this toolkit says its format and epoch)."""
        return self._header[1]

    def any_key(self, *fragments: str) -> bool:
        return any(fragment in key for key in self.keys for fragment in fragments)


@dataclass(frozen=True)
class SourceFormat:
    """One kind of saved update: a name, a one-line description, how to recognise it and how to open it."""

    name: str
    holds: str
    """What the path holds, for the docs' table of formats."""
    kind: str
    """``folder`` or ``file``."""
    recognise: Callable[[Sniff], bool]
    open: Callable[[Path, str | None], object]
    """``open(path, base)`` -> a source (``base`` is the user's ``--base``, or None)."""
    base: str = "no"
    """Whether reading needs the base model: ``no``, ``some`` (some variants) or ``yes``."""
    order: int = 50
    """Formats are tried in this order (then by registration): a run's run.json (10) wins over a checkpoint-N
    folder beside it (20), a peft config (30) and the single-file kinds (40); a model's weights (90) come last,
    since any safetensors file could be one."""

    def __post_init__(self) -> None:
        if self.kind not in ("folder", "file") or self.base not in ("no", "some", "yes"):
            raise ValueError(f"source format {self.name!r}: kind must be folder or file, base no, some or yes")


FORMATS: list[SourceFormat] = []


def register_format(fmt: SourceFormat) -> SourceFormat:
    if any(f.name == fmt.name for f in FORMATS):
        raise ValueError(f"source format {fmt.name!r} is registered twice")
    FORMATS.append(fmt)
    FORMATS.sort(key=lambda f: f.order)
    return fmt


def open_updates(path: str | Path, base: str | None = None):
    """Open anything that holds updates, as the first registered format that recognises it does.

    ``base`` is the base model where a format needs one (a fine-tune, a peft type computed by peft)
    or where the file's own base cannot be opened (a Hub name is never fetched unasked).
    """
    if not existing_path(str(path)):
        from ..hub import fetch_adapter, fetched_commit, parse_hub_id

        hub_id = parse_hub_id(str(path))
        if hub_id is None:
            raise InputError(f"{str(path)[:200]}: no such file or directory")
        fetched = fetch_adapter(hub_id)  # with --download, or fetched before; else one line naming --download
        source = open_updates(fetched, base)
        if isinstance(getattr(source, "meta", None), dict):  # the revision actually read, for the outputs that record meta
            source.meta["hub"] = {"repo": hub_id.repo, "revision": hub_id.revision or "main", "commit": fetched_commit(fetched, hub_id),
                                  **({"subfolder": hub_id.subfolder} if hub_id.subfolder else {})}
        return source
    path = Path(path)
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: expected a safetensors file or a folder ({_expected('file')})")
    elif not path.is_dir():
        raise InputError(f"{path}: neither a regular file nor a directory")
    sniff = Sniff(path)
    kind = "file" if path.is_file() else "folder"
    for fmt in FORMATS:
        if fmt.kind == kind and fmt.recognise(sniff):
            return fmt.open(path, base)
    if kind == "folder":
        if not sniff.names:
            raise InputError(f"{path}: empty directory; expected {_expected('folder')}")
        refuse_pickled_files(path)
    raise InputError(f"{path}: not a format tlora-analysis reads; expected {_expected(kind)}")


def origin(source) -> str:
    """Where a source was read from, as its reader can find it again: a Hub source's id at the commit read (never the
    cache folder it was fetched into), else its path. Manifests and settings tables record this."""
    from ..hub import HubId

    meta = getattr(source, "meta", None)
    hub = meta.get("hub") if isinstance(meta, dict) else None
    return str(HubId(hub["repo"], hub["commit"], hub.get("subfolder"))) if isinstance(hub, dict) else str(source.path)


def _expected(kind: str) -> str:
    return "; ".join(f.name for f in FORMATS if f.kind == kind)


_BASE = {"no": "no", "some": "some kinds (see below)", "yes": "yes"}


def formats_table() -> str:
    """The docs' table of every source format, in the order they are tried."""
    rows = ["| format | a folder or a file | what it holds | needs `--base` |", "|---|---|---|---|"]
    rows += [f"| {f.name} | {f.kind} | {f.holds} | {_BASE[f.base]} |" for f in FORMATS]
    return "\n".join(rows) + "\n"
