"""Reading a WordNet 3.x database where the user has it installed, in WordNet's own format.

Why read the database files rather than a packaged copy: WordNet's text is Princeton's, and the
toolkit ships none of it. Debian/Ubuntu (`apt-get install wordnet-base`), Homebrew and NLTK all
install the same ``data.noun`` file (see wndb(5WN)); this module finds it and parses the lines it
needs, one synset a line::

    offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt [ptr ...] [frames] | gloss

Every line is checked as it is read: a truncated line, an offset that is not the line's byte
position (WordNet's own invariant), a pointer to no synset, bytes that are not UTF-8, a line
longer than any WordNet writes, or a file far larger than WordNet's all end in one
:class:`InputError` naming the file and the line, never a traceback, and never a read that
grows without bound.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

__all__ = ["Synset", "find_wordnet", "read_noun_synsets", "LEXNAMES", "WORDNET_INSTALL_HINT"]

MAX_LINE_BYTES = 1 << 16
"""Longest line read: WordNet 3.0's longest data line is 12,972 bytes; a longer one is not WordNet's."""
MAX_FILE_BYTES = 1 << 27
"""Largest data file read (128 MiB): WordNet 3.0's data.noun is 15 MB."""

LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
"""The 45 lexicographer files by number, as lexnames(5WN) lists them. Debian's wordnet-base ships no
``lexnames`` file, so the numbers in data lines are named from this table (a ``lexnames`` file beside
the data, as NLTK ships, is read instead and must agree)."""

WORDNET_INSTALL_HINT = ("install WordNet 3.0 (Debian/Ubuntu: apt-get install wordnet-base; macOS: brew install wordnet; "
                        "Python: nltk.download('wordnet')) or pass --data-dir with the folder holding data.noun")


@dataclass(frozen=True)
class Synset:
    """One noun synset: what the WordNet tasks read of it."""

    offset: int
    lexname: str
    words: tuple[str, ...]
    hypernyms: tuple[int, ...]
    """Offsets of its direct hypernyms (pointer ``@``; instance hypernyms ``@i`` are a different relation)."""
    gloss: str


def candidate_folders(data_dir: str | Path | None) -> list[Path]:
    """Where WordNet is looked for, in order: ``--data-dir``, WNSEARCHDIR, WNHOME, the system's, Homebrew's, NLTK's."""
    if data_dir is not None:
        root = Path(data_dir)
        return [root, root / "dict", root / "wordnet", root / "corpora" / "wordnet"]
    folders = []
    if os.environ.get("WNSEARCHDIR"):
        folders.append(Path(os.environ["WNSEARCHDIR"]))
    if os.environ.get("WNHOME"):
        folders.append(Path(os.environ["WNHOME"]) / "dict")
    folders += [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet"), Path("/usr/local/WordNet-3.0/dict")]
    brew = [os.environ.get("HOMEBREW_PREFIX", ""), "/opt/homebrew", "/usr/local", "/home/linuxbrew/.linuxbrew"]
    folders += [Path(prefix) / "opt" / "wordnet" / "dict" for prefix in brew if prefix]
    nltk = [*os.environ.get("NLTK_DATA", "").split(os.pathsep), str(Path.home() / "nltk_data"), "/usr/share/nltk_data",
            "/usr/local/share/nltk_data", "/usr/lib/nltk_data", "/usr/local/lib/nltk_data",
            *(str(Path(sys.prefix) / sub) for sub in ("nltk_data", "share/nltk_data", "lib/nltk_data"))]
    folders += [Path(root) / "corpora" / "wordnet" for root in nltk if root]
    return folders


def find_wordnet(data_dir: str | Path | None = None) -> Path:
    """The first folder holding ``data.noun``, or one line naming where it was looked for and how to install it."""
    folders = candidate_folders(data_dir)
    for folder in folders:
        if (folder / "data.noun").exists():
            return folder
    where = f"--data-dir {data_dir} (and its dict/, wordnet/)" if data_dir is not None else \
        f"WNSEARCHDIR, WNHOME, {', '.join(str(f) for f in folders if 'nltk' not in str(f))} and NLTK's data paths"
    raise InputError(f"WordNet not found: no data.noun in {where}; {WORDNET_INSTALL_HINT}")


def read_lexnames(folder: Path) -> tuple[str, ...]:
    """The lexicographer file names: a ``lexnames`` file where there is one (checked against WordNet's table), else the table."""
    path = folder / "lexnames"
    if not path.exists():
        return LEXNAMES
    names = []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != 3 or not fields[0].isdigit() or int(fields[0]) != len(names):
            raise InputError(f"{path}, line {number}: expected 'NN name pos' with NN = {len(names):02d}, got {line[:60]!r}")
        names.append(fields[1])
    if tuple(names) != LEXNAMES[:len(names)]:
        raise InputError(f"{path}: its names differ from WordNet 3.0's 45 lexicographer files; this is not WordNet 3.x")
    return tuple(names)


def read_noun_synsets(folder: Path) -> dict[int, Synset]:
    """Every noun synset of ``folder/data.noun`` by offset, its hypernym pointers checked to name synsets of the file."""
    path = folder / "data.noun"
    lexnames = read_lexnames(folder)
    synsets: dict[int, Synset] = {}
    lines: dict[int, int] = {}
    for number, offset, line in _data_lines(path):
        synsets[offset] = _parse_synset(line, offset, lexnames, f"{path}, line {number}")
        lines[offset] = number
    for offset, synset in synsets.items():
        missing = [h for h in synset.hypernyms if h not in synsets]
        if missing:
            raise InputError(f"{path}, line {lines[offset]}: hypernym pointer to offset {missing[0]:08d}, which no line of the file has")
    if not synsets:
        raise InputError(f"{path}: no synset lines (is this WordNet's data.noun?)")
    return synsets


def _parse_synset(line: str, offset: int, lexnames: tuple[str, ...], where: str) -> Synset:
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    try:
        lex_number, ss_type, word_count = int(fields[1]), fields[2], int(fields[3], 16)
        words = tuple(fields[4 + 2 * i] for i in range(word_count))
        at = 4 + 2 * word_count
        pointer_count = int(fields[at])
        pointers = [fields[at + 1 + 4 * i: at + 5 + 4 * i] for i in range(pointer_count)]
    except (IndexError, ValueError):
        raise InputError(f"{where}: not a WordNet synset line (fields missing or not numbers): {line[:60]!r}") from None
    if not bar or ss_type != "n" or not 0 <= lex_number < len(lexnames) or any(len(p) != 4 for p in pointers) or word_count < 1:
        raise InputError(f"{where}: not a noun synset line of WordNet's data.noun (a gloss after ' | ', type 'n', a lexicographer "
                         f"file 00-{len(lexnames) - 1:02d}, whole pointers): {line[:60]!r}")
    try:
        hypernyms = tuple(int(p[1]) for p in pointers if p[0] == "@" and p[2] == "n")
    except ValueError:
        raise InputError(f"{where}: a hypernym pointer's offset is not a number: {line[:60]!r}") from None
    return Synset(offset, lexnames[lex_number], words, hypernyms, gloss.strip())


def _data_lines(path: Path):
    """``(line number, offset, text)`` for each synset line; the licence header (lines starting with two spaces) skipped."""
    position = 0
    for number, raw in _raw_lines(path):
        start, position = position, position + len(raw)
        if raw.startswith(b"  "):
            continue
        text = _decode(raw, path, number)
        offset_text = text.split(" ", 1)[0]
        if not (len(offset_text) == 8 and offset_text.isdigit()):
            raise InputError(f"{path}, line {number}: expected an 8-digit synset offset first, got {text[:40]!r}")
        if int(offset_text) != start:
            raise InputError(f"{path}, line {number}: offset {offset_text} is not the line's byte position {start} "
                             "(WordNet's offsets are byte positions; the file is truncated, edited or not WordNet's)")
        yield number, start, text


def _lines(path: Path):
    for number, raw in _raw_lines(path):
        yield number, _decode(raw, path, number)


def _decode(raw: bytes, path: Path, number: int) -> str:
    try:
        return raw.decode("utf-8").rstrip("\n").rstrip()
    except UnicodeDecodeError as err:
        raise InputError(f"{path}, line {number}: not UTF-8 text (byte {err.start}); WordNet's files are ASCII") from None


def _raw_lines(path: Path):
    """Lines as bytes, each bounded by :data:`MAX_LINE_BYTES`, from a regular file of at most :data:`MAX_FILE_BYTES`."""
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (WordNet's {path.name} is a text file)")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise InputError(f"{path}: {size:,} bytes, more than WordNet's files ever hold ({MAX_FILE_BYTES:,} at most)")
    with path.open("rb") as handle:
        for number in range(1, sys.maxsize):
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(f"{path}, line {number}: longer than {MAX_LINE_BYTES:,} bytes; WordNet's lines are shorter")
            if not raw.endswith(b"\n"):
                raise InputError(f"{path}, line {number}: truncated (the file ends inside the line)")
            yield number, raw
