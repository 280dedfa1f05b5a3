"""Adapters and bases on the Hugging Face Hub, fetched only when asked, through ``huggingface_hub`` alone.

A source or ``--base`` that is not a local path but reads as a Hub id (``owner/name``, ``owner/name@revision``,
``owner/name:subfolder``) is fetched only with ``--download`` (or ``TLORA_ANALYSIS_DOWNLOAD=1``); without it one line
says what it looked like and what would fetch it, and nothing is requested. What an earlier ``--download`` fetched is
used offline. Only JSON and safetensors files are requested, never a pickle or code; for a base, its ``config.json``,
its safetensors index and only the shards that hold the adapted layers' weights when those are known.

Files are fetched with ``snapshot_download``/``hf_hub_download`` into ``$TLORA_ANALYSIS_CACHE/hub/OWNER/NAME/COMMIT``
(``local_dir``: real files, not the Hub cache's links into ``blobs/``, so the containment rule for a source's files
holds as for any folder), the commit resolved once from the revision asked for and recorded in ``revision.json``.
A fetch goes to a temporary folder that becomes the commit's folder only when it is complete.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

__all__ = ["HubId", "parse_hub_id", "downloads", "download_enabled", "fetch_adapter", "fetch_base", "fetched_commit"]

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95})(?:@(?P<revision>[\w./-]{1,200}))?"
                     r"(?::(?P<subfolder>[\w.-]+(?:/[\w.-]+)*))?$")
_ASKED: contextvars.ContextVar[bool] = contextvars.ContextVar("tlora_analysis_download", default=False)
COMMIT = re.compile(r"[0-9a-f]{40}")
"""A commit id as the Hub gives it: the only name a fetched folder may have."""
_ANSWERS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("tlora_analysis_hub_answers", default=None)
"""The Hub's answer per (endpoint, id) within one command: a base resolved by several readers is asked about once."""
PATTERNS = ("*.json", "*.safetensors")
"""What is ever requested: metadata and tensors; a pickle or code is never fetched."""
ANNOUNCE_BYTES = 1 << 30
"""A fetch larger than this is announced (files, size, where to) on stderr before it starts."""


@dataclass(frozen=True)
class HubId:
    repo: str
    revision: str | None = None
    subfolder: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "") + (f":{self.subfolder}" if self.subfolder else "")


def parse_hub_id(text: str) -> HubId | None:
    """The Hub id ``text`` reads as, or None (a path that exists locally is never one)."""
    from .io import existing_path

    text = str(text)
    match = _HUB_ID.match(text)
    if match is None or ".." in text or text.startswith((".", "~")) or existing_path(text):
        return None
    return HubId(match["repo"], match["revision"], match["subfolder"])


def download_enabled() -> bool:
    return _ASKED.get() or os.environ.get("TLORA_ANALYSIS_DOWNLOAD", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def downloads(asked: bool):
    """Within it, Hub ids are fetched if ``asked`` (a command's ``--download``); the setting ends with the command."""
    token, answers = _ASKED.set(bool(asked)), _ANSWERS.set({})
    try:
        yield
    finally:
        _ASKED.reset(token)
        _ANSWERS.reset(answers)


def _root(hub_id: HubId) -> Path:
    from .base_weights import cache_dir

    return cache_dir() / "hub" / hub_id.repo


def _fetched(hub_id: HubId) -> Path | None:
    """The folder an earlier fetch of this id's revision left, or what the Hugging Face cache holds of it, read offline."""
    from .io import read_json

    record = _record(hub_id)
    if not record.is_file():
        return _from_hf_cache(hub_id)
    commit = read_json(record, "Hub revision record").get("commit")
    folder = _root(hub_id) / str(commit)
    return folder if isinstance(commit, str) and COMMIT.fullmatch(commit) and folder.is_dir() else None


def _record(hub_id: HubId) -> Path:
    """Where the commit a revision named was recorded (``refs/REVISION.json``), so that it is read offline later."""
    return _root(hub_id) / "refs" / f"{hub_id.revision or 'main'}.json"


def _install(hub_id: HubId, commit: str, fill) -> Path:
    """The commit's folder, made by ``fill(partial)`` in a temporary folder beside it that replaces it only when
    complete (a killed fetch leaves nothing that reads as whole), and the revision recorded as that commit."""
    folder = _root(hub_id) / commit
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".fetch-"))
    try:
        fill(partial)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _remember(hub_id, commit)
    return folder


def _remember(hub_id: HubId, commit: str) -> None:
    """Record the commit the revision named, for offline reads."""
    from .io import atomic_write_json

    atomic_write_json(_record(hub_id), {"repo": hub_id.repo, "commit": commit})


def _from_hf_cache(hub_id: HubId) -> Path | None:
    """The revision's JSON and safetensors files as the Hugging Face cache holds them (peft or transformers fetched
    them), linked (or copied, across file systems) as real files into this toolkit's folder for the commit; nothing
    is requested. The cache's snapshot files are links into ``blobs/``, which a source's folder may not hold."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(hub_id.repo, revision=hub_id.revision, local_files_only=True))
    except Exception:  # not in the cache (huggingface_hub's LocalEntryNotFoundError and its kin): nothing to read
        return None
    if not COMMIT.fullmatch(snapshot.name):
        return None

    def link(partial: Path) -> None:
        for file in snapshot.rglob("*"):
            name = file.relative_to(snapshot)
            if file.is_file() and any(fnmatch.fnmatch(str(name), p) for p in PATTERNS):
                (partial / name).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(file.resolve(), partial / name)

    return _install(hub_id, snapshot.name, link)


def _link_or_copy(blob: Path, target: Path) -> None:
    try:
        os.link(blob, target)
    except OSError:
        shutil.copyfile(blob, target)


def _refused(hub_id: HubId, what: str) -> InputError:
    return InputError(f"{hub_id}: not a local path; it looks like a Hub id ({what}); pass --download "
                      "(or set TLORA_ANALYSIS_DOWNLOAD=1) to fetch it (JSON and safetensors files only)")


def _info(hub_id: HubId):
    """The repository's commit and file list for the revision asked (one request per command), or one line saying why not."""
    answers = _ANSWERS.get()
    key = (os.environ.get("HF_ENDPOINT"), hub_id)
    if answers is not None and key in answers:
        return answers[key]
    info = _ask(hub_id)
    if answers is not None:
        answers[key] = info
    return info


def _ask(hub_id: HubId):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return HfApi(endpoint=os.environ.get("HF_ENDPOINT")).model_info(hub_id.repo, revision=hub_id.revision,
                                                                         files_metadata=True)
    except RevisionNotFoundError as err:
        raise InputError(f"{hub_id}: the Hub has no revision {hub_id.revision!r} of {hub_id.repo}") from err
    except RepositoryNotFoundError as err:
        raise InputError(f"{hub_id}: no such repository on the Hub (or it is private: log in with `hf auth login`)") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise InputError(f"{hub_id}: the Hub could not be reached ({' '.join(str(err).split())[:160]})") from err
    except Exception as err:  # the HTTP client's own errors (a refused connection, a timeout) are no OSError
        if type(err).__module__.split(".")[0] not in ("httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"):
            raise
        raise InputError(f"{hub_id}: the Hub could not be reached ({type(err).__name__}: {' '.join(str(err).split())[:160]})") from err


def _fetch(hub_id: HubId, files: list[str] | None) -> Path:
    """``files`` (or every JSON and safetensors file of the subfolder) of the revision, into its commit's folder."""
    from huggingface_hub import snapshot_download

    info = _info(hub_id)
    commit = info.sha
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        raise InputError(f"{hub_id}: the Hub answered no commit for this revision")
    names = [s.rfilename for s in info.siblings or []]
    prefix = f"{hub_id.subfolder}/" if hub_id.subfolder else ""
    if not any(n.startswith(prefix) and n.endswith(".safetensors") for n in names):
        raise InputError(f"{hub_id}: holds no safetensors file{' under ' + hub_id.subfolder if prefix else ''} (only "
                         f"{', '.join(sorted(names)[:4]) or 'nothing'}); pickled weights are never fetched or opened")
    folder = _root(hub_id) / commit
    wanted = files if files is not None else [f"{prefix}{p}" for p in PATTERNS]
    if folder.is_dir() and all((folder / f).is_file() for f in (files or [])):
        _remember(hub_id, commit)
        return folder

    def download(partial: Path) -> None:
        if folder.is_dir():  # what an earlier fetch of this commit brought stays
            shutil.copytree(folder, partial, dirs_exist_ok=True)
        with _bars_on_a_terminal_only():
            snapshot_download(hub_id.repo, revision=commit, local_dir=partial, allow_patterns=wanted, endpoint=os.environ.get("HF_ENDPOINT"))
        shutil.rmtree(partial / ".cache", ignore_errors=True)

    _announce(hub_id, info, wanted, folder)
    try:
        return _install(hub_id, commit, download)
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"{hub_id}: fetching {commit[:12]} failed ({' '.join(str(err).split())[:160]})") from err


@contextlib.contextmanager
def _bars_on_a_terminal_only():
    """huggingface_hub's progress bars where stderr is a terminal; in a log or a pipe they are carriage-return noise
    (the announcement above still says what a large fetch brings). ``HF_HUB_DISABLE_PROGRESS_BARS=0`` keeps them."""
    from huggingface_hub import constants
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = not sys.stderr.isatty() and not are_progress_bars_disabled() and constants.HF_HUB_DISABLE_PROGRESS_BARS is not False
    if quiet:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            enable_progress_bars()


def _announce(hub_id: HubId, info, wanted: list[str], folder: Path) -> None:
    """Say what a fetch over ``ANNOUNCE_BYTES`` will bring before it starts (the Hub's sizes; unknown sizes count 0)."""
    todo = {s.rfilename: s.size or 0 for s in info.siblings or []
            if any(fnmatch.fnmatch(s.rfilename, p) for p in wanted) and not (folder / s.rfilename).is_file()}
    total = sum(todo.values())
    if total > ANNOUNCE_BYTES:
        print(f"tlora-analysis: download: {hub_id} ({info.sha[:12]}): {len(todo)} files, {total / 1e9:.1f} GB, into "
              f"{folder}", file=sys.stderr, flush=True)


def fetch_adapter(hub_id: HubId) -> Path:
    """A local folder holding the adapter's JSON and safetensors files (its subfolder, where one was named)."""
    folder = _fetch(hub_id, None) if download_enabled() else _fetched(hub_id)
    if folder is None:
        raise _refused(hub_id, "an adapter")
    source = folder / hub_id.subfolder if hub_id.subfolder else folder
    if not source.is_dir():
        raise InputError(f"{hub_id}: fetched, but it holds no folder {hub_id.subfolder!r}")
    return source


def fetched_commit(folder: Path, hub_id: HubId) -> str:
    """The commit a fetched folder holds (its folder's name under the repository's)."""
    return folder.relative_to(_root(hub_id)).parts[0]


def fetch_base(hub_id: HubId, module_names: list[str] | None = None) -> Path:
    """A local folder with the base's config.json, its safetensors index and the shards holding ``module_names``'
    weights (every shard where the names are not known, None; no shard for ``[]``)."""
    if not download_enabled():
        folder = _fetched(hub_id)
        if folder is None:
            raise _refused(hub_id, "a base model")
        return folder
    prefix = f"{hub_id.subfolder}/" if hub_id.subfolder else ""
    folder = _fetch(hub_id, [f"{prefix}config.json", *(f"{prefix}{n}" for n in _index_names(hub_id))])
    return _shards(hub_id, folder / hub_id.subfolder if hub_id.subfolder else folder, module_names)


def _index_names(hub_id: HubId) -> list[str]:
    info = _info(hub_id)
    prefix = f"{hub_id.subfolder}/" if hub_id.subfolder else ""
    names = {s.rfilename for s in info.siblings or []}
    return ["model.safetensors.index.json"] if f"{prefix}model.safetensors.index.json" in names else ["model.safetensors"]


def _shards(hub_id: HubId, folder: Path, module_names: list[str] | None) -> Path:
    """Fetch the shards of a sharded base that hold the named modules (every shard where names are not given; none
    for an empty list: the config and the index alone)."""
    from .base_weights import INDEX, match_key
    from .io import read_json

    if not (folder / INDEX).is_file():
        return folder
    weight_map = read_json(folder / INDEX, "safetensors index").get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise InputError(f"{hub_id}: its {INDEX} should map tensor names to shard file names")
    keys = [match_key(n, weight_map, str(hub_id)) for n in module_names] if module_names is not None else list(weight_map)
    shards = sorted({weight_map[k] for k in keys if k is not None})
    for shard in shards:
        if not re.fullmatch(r"[\w.-]+\.safetensors", shard):
            raise InputError(f"{hub_id}: its {INDEX} names shard {shard[:80]!r}, not a safetensors file beside the index")
    prefix = f"{hub_id.subfolder}/" if hub_id.subfolder else ""
    held = {s.rfilename for s in _info(hub_id).siblings or []}
    for shard in shards:
        if f"{prefix}{shard}" not in held:
            raise InputError(f"{hub_id}: its {INDEX} names shard {shard!r}, which the repository does not hold")
    _fetch(hub_id, [f"{prefix}config.json", f"{prefix}{INDEX}", *(f"{prefix}{s}" for s in shards)])
    return folder
