"""The embedded offline default task: SST-2-style binary sentiment from a compositional grammar.

Why a grammar: with no network there is no SST-2, and a task whose label can be read off
single words would not need the encoder to change. Here the label depends on structure:

    clause   := SUBJECT VERB [INTENSIFIER] ADJECTIVE
                VERB is a copula ("is", "was", ...) or a negated one ("is not", "is hardly", ...);
                polarity(clause) = polarity(ADJECTIVE), flipped by a negation;
                intensifiers ("very", "truly", ...) never change polarity.
    sentence := clause "."                                  -> polarity(clause)
              | clause ", but " clause "."                  -> polarity(second clause)
              | "although " clause ", " clause "."          -> polarity(second clause)
              | clause ", although " clause "."             -> polarity(first clause)
              | clause ", and " clause "."                  -> both clauses agree

In the three contrast forms the two clauses always have opposite polarity, so every such
sentence holds one positive and one negative clause and only word order and negation
decide the label. Labels: 1 positive, 0 negative, balanced in both splits. Generation is
deterministic (a fixed ``random.Random`` seed); validation sentences never occur in train.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "the movie", "this film", "the story", "the acting", "the script", "the soundtrack", "the ending",
    "the cast", "the direction", "the dialogue", "the pacing", "the plot", "the photography", "the humor",
    "the sequel", "the lead performance",
]
POSITIVE = [
    "good", "great", "wonderful", "brilliant", "charming", "moving", "delightful", "clever", "gripping",
    "beautiful", "funny", "memorable", "engaging", "superb",
]
NEGATIVE = [
    "bad", "dull", "awful", "boring", "terrible", "clumsy", "tedious", "bland", "forgettable", "messy",
    "lifeless", "predictable", "weak", "painful",
]
COPULAS = ["is", "was", "feels", "seems"]
NEGATED_COPULAS = ["is not", "was not", "is never", "is hardly", "was hardly", "does not feel", "is far from"]
INTENSIFIERS = ["very", "really", "truly", "incredibly", "remarkably", "quite", "utterly"]

FORMS = ("single", "but", "although_first", "although_last", "and")
TRAIN_SIZE = 2400
VALIDATION_SIZE = 600
SEED = 20250425  # the TLoRA preprint's date; any fixed value would do


def _clause(rng: random.Random, polarity: int) -> str:
    negated = rng.random() < 0.5
    adjective_polarity = -polarity if negated else polarity
    verb = rng.choice(NEGATED_COPULAS if negated else COPULAS)
    adjective = rng.choice(POSITIVE if adjective_polarity > 0 else NEGATIVE)
    intensifier = rng.choice(INTENSIFIERS) + " " if rng.random() < 0.4 else ""
    return f"{rng.choice(SUBJECTS)} {verb} {intensifier}{adjective}"


def _sentence(rng: random.Random, label: int) -> str:
    polarity = 1 if label == 1 else -1
    form = rng.choice(FORMS)
    if form == "single":
        text = _clause(rng, polarity)
    elif form == "but":
        text = f"{_clause(rng, -polarity)}, but {_clause(rng, polarity)}"
    elif form == "although_first":
        text = f"although {_clause(rng, -polarity)}, {_clause(rng, polarity)}"
    elif form == "although_last":
        text = f"{_clause(rng, polarity)}, although {_clause(rng, -polarity)}"
    else:
        text = f"{_clause(rng, polarity)}, and {_clause(rng, polarity)}"
    return text[0].upper() + text[1:] + "."


def generate(seed: int = SEED, train_size: int = TRAIN_SIZE, validation_size: int = VALIDATION_SIZE) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...]}`` of ``{"sentence": str, "label": int}``, balanced and disjoint."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in (("validation", validation_size), ("train", train_size)):
        examples: list[dict] = []
        while len(examples) < size:
            label = len(examples) % 2
            sentence = _sentence(rng, label)
            if sentence not in seen:
                seen.add(sentence)
                examples.append({"sentence": sentence, "label": label})
        rng.shuffle(examples)
        splits[split] = examples
    return splits
