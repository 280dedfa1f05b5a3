"""Two text-classification tasks on WordNet's glosses: real English written by lexicographers.

Why WordNet: the default task is generated and saturates (LoRA and most peft methods reach 1.000),
so methods cannot differ in what they reach. WordNet 3.0 is labelled real text that installs
offline (see :mod:`.wordnet_db`); a 22M-parameter encoder does not solve these tasks.

``wordnet-lexname``: a noun synset's gloss (its definition and example sentences, as WordNet writes
them) -> its lexicographer file (noun.animal, noun.artifact, ...).
  - Input is the gloss alone, not the synset's own words: the task is to place a definition written
    in sentences, not to recall a word's file, and a lemma such as "oak" would answer it by itself.
  - Classes: the 24 noun files with at least 125 synsets, enough to fill both splits balanced; the
    other two (noun.Tops, 51 synsets; noun.motive, 42) cannot. Nouns only, so that a class is never
    given away by the part of speech (verb glosses start "to ...", adjective clusters differ in form).
  - Balanced: 100 training and 25 validation glosses per class, 2,400 and 600 in all, the default
    task's sizes, so that a cell trains in about a default cell's time.

``wordnet-hypernym`` (a pair task like MRPC): two noun glosses -> is the second synset a direct
hypernym (``@``) of the first. Half the pairs are positive. A negative pairs a synset with a synset
from the lexicographer file of one of its true hypernyms that is neither the synset nor any of its
ancestors, so the label cannot be read off the second gloss's file.

Splits are deterministic and disjoint by synset: a synset's CRC-32 of its offset puts it in
validation (one in five) or train, and a pair is kept only where both synsets share a split.
A gloss that several synsets share (355 glosses of 960 synsets in WordNet 3.0) is left out of both
tasks: the same text in both splits, or under two labels, would not measure generalisation.
Sampling uses a fixed seed; the same database always gives the same examples.
"""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from ..errors import InputError
from .wordnet_db import Synset, find_wordnet, read_noun_synsets

__all__ = ["LEXNAME_CLASSES", "load_wordnet", "split_of", "BUILDERS"]

LEXNAME_CLASSES = (
    "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body", "noun.cognition", "noun.communication",
    "noun.event", "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape",
    "noun.state", "noun.substance", "noun.time",
)
"""``wordnet-lexname``'s classes, label = position: the noun files with at least 125 synsets in WordNet 3.0."""
PER_CLASS = {"train": 100, "validation": 25}
"""``wordnet-lexname``'s examples per class and split."""
PAIRS = {"train": 2400, "validation": 600}
"""``wordnet-hypernym``'s pairs per split (a pair whose negative cannot be drawn is left out, so at most these)."""
SEED = 20250425  # the TLoRA preprint's date, as the default task's; any fixed value would do
VALIDATION_BUCKETS = 5  # one synset in five is a validation synset


def split_of(offset: int) -> str:
    """The split a synset belongs to, from its offset alone (stable across runs, machines and Python versions)."""
    return "validation" if zlib.crc32(offset.to_bytes(8, "big")) % VALIDATION_BUCKETS == 0 else "train"


def unique_glosses(synsets: dict[int, Synset]) -> list[int]:
    """Offsets, ascending, of the synsets whose gloss no other synset has."""
    counts: dict[str, int] = {}
    for synset in synsets.values():
        counts[synset.gloss] = counts.get(synset.gloss, 0) + 1
    return [offset for offset in sorted(synsets) if counts[synsets[offset].gloss] == 1]


def _pools(synsets: dict[int, Synset], offsets: list[int]) -> dict[tuple[str, str], list[int]]:
    """Offsets by (split, lexicographer file), ascending."""
    pools: dict[tuple[str, str], list[int]] = {}
    for offset in offsets:
        pools.setdefault((split_of(offset), synsets[offset].lexname), []).append(offset)
    return pools


def lexname_splits(synsets: dict[int, Synset], where: str, per_class: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Balanced gloss -> lexicographer-file examples for each split (``per_class``: examples per class and split)."""
    pools = _pools(synsets, unique_glosses(synsets))
    rng = random.Random(SEED)
    splits: dict[str, list[dict]] = {}
    for split, count in (per_class or PER_CLASS).items():
        examples = []
        for label, lexname in enumerate(LEXNAME_CLASSES):
            pool = pools.get((split, lexname), [])
            if len(pool) < count:
                raise InputError(f"{where}: {lexname} has {len(pool)} synsets in the {split} split, {count} needed "
                                 "(is this WordNet 3.x's whole data.noun?)")
            examples += [{"sentence": synsets[o].gloss, "label": label} for o in rng.sample(pool, count)]
        rng.shuffle(examples)
        splits[split] = examples
    return splits


def hypernym_splits(synsets: dict[int, Synset], where: str, sizes: dict[str, int] | None = None) -> dict[str, list[dict]]:
    """Balanced (gloss, gloss) -> is-direct-hypernym pairs for each split, both synsets of a pair in that split."""
    rng = random.Random(SEED)
    eligible = unique_glosses(synsets)
    by_file, kept = _pools(synsets, eligible), set(eligible)
    splits: dict[str, list[dict]] = {}
    for split, size in (sizes or PAIRS).items():
        anchors = [o for o in eligible if split_of(o) == split and any(split_of(h) == split and h in kept for h in synsets[o].hypernyms)]
        if len(anchors) < size:
            raise InputError(f"{where}: {len(anchors)} synsets with a hypernym in the {split} split, {size} needed "
                             "(is this WordNet 3.x's whole data.noun?)")
        chosen = rng.sample(anchors, size)
        examples = []
        for index, offset in enumerate(chosen):
            hypernym = rng.choice([h for h in synsets[offset].hypernyms if split_of(h) == split and h in kept])
            partner = hypernym if index % 2 == 0 else _negative(synsets, offset, by_file[(split, synsets[hypernym].lexname)], rng)
            if partner is not None:
                examples.append({"sentence1": synsets[offset].gloss, "sentence2": synsets[partner].gloss,
                                 "label": int(partner == hypernym)})
        rng.shuffle(examples)
        splits[split] = examples
    return splits


def _negative(synsets: dict[int, Synset], offset: int, pool: list[int], rng: random.Random) -> int | None:
    """A synset of ``pool`` (the true hypernym's file, this split) that is neither ``offset`` nor one of its ancestors."""
    excluded = _ancestors(synsets, offset) | {offset}
    for _ in range(64):
        candidate = rng.choice(pool)
        if candidate not in excluded:
            return candidate
    return None  # a file made of this synset's ancestors alone: the pair is left out


def _ancestors(synsets: dict[int, Synset], offset: int) -> set[int]:
    seen: set[int] = set()
    frontier = list(synsets[offset].hypernyms)
    while frontier:
        current = frontier.pop()
        if current not in seen:
            seen.add(current)
            frontier.extend(synsets[current].hypernyms)
    return seen


BUILDERS = {"wordnet-lexname": lexname_splits, "wordnet-hypernym": hypernym_splits}
"""Each WordNet task's examples, by task name (``TASKS`` entries whose source is ``wordnet``)."""


def load_wordnet(task: str, data_dir: str | Path | None = None) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...]}`` for a WordNet task, from the database where it is installed."""
    folder = find_wordnet(data_dir)
    return BUILDERS[task](read_noun_synsets(folder), str(folder / "data.noun"))
