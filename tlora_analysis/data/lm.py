"""Causal-LM fine-tuning data: a local text or JSONL file, or the offline default LM task.

- ``.txt``: one example per non-empty line, ``{"text": line}``; the loss covers every token.
- ``.jsonl``: one JSON object per line with ``text``, or ``prompt`` and ``completion``; with a
  prompt the loss covers the completion only.

The last tenth of a file's examples (at least one) is the validation split. The default LM
task turns the default task's sentences into prompt/completion pairs
(``Review: <sentence>\\nSentiment:`` → `` positive``/`` negative``), so the LM path runs with
no download.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import parse_json

MAX_FILE_BYTES = 1 << 30
MAX_EXAMPLES = 250_000
"""Most examples a data file may give: tokenized, 250,000 short examples take about 1 GB."""


def default_lm_examples() -> dict[str, list[dict]]:
    from .default_task import generate

    words = {0: " negative", 1: " positive"}
    return {split: [{"prompt": f"Review: {ex['sentence']}\nSentiment:", "completion": words[ex["label"]]} for ex in examples]
            for split, examples in generate().items()}


def read_lm_file(path: str | Path) -> dict[str, list[dict]]:
    """``{"train": [...], "validation": [...]}`` from a ``.txt`` or ``.jsonl`` file (see the module docstring).

    The file is read a line at a time, and at most :data:`MAX_EXAMPLES` examples are kept, so memory
    is bounded by the examples, not by the file's size alone (tokenized, an example costs a few KB)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--data-file {path}: no such regular file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"--data-file {path}: larger than {MAX_FILE_BYTES:,} bytes")
    if path.suffix not in (".txt", ".jsonl"):
        raise InputError(f"--data-file {path}: expected a .txt or .jsonl file")
    examples = []
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            example = _example(raw, number, path)
            if example is None:
                continue
            if len(examples) == MAX_EXAMPLES:
                raise InputError(f"--data-file {path}: more than {MAX_EXAMPLES:,} examples; split the file or take a part of it")
            examples.append(example)
    if len(examples) < 2:
        raise InputError(f"--data-file {path}: needs at least two examples (the last tenth is the validation split)")
    held_out = max(1, len(examples) // 10)
    return {"train": examples[:-held_out], "validation": examples[-held_out:]}


def _example(raw: bytes, number: int, path: Path) -> dict | None:
    """One line as an example (None for a blank line), or one line naming what is wrong with it."""
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise InputError(f"--data-file {path}: line {number} is not UTF-8 (byte {err.start + 1})") from err
    if not line.strip():
        return None
    if path.suffix == ".txt":
        return {"text": line}
    record = parse_json(line, f"--data-file {path}: line {number}", "JSON line")
    if isinstance(record, dict) and isinstance(record.get("text"), str):
        example = {"text": record["text"]}
    elif isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        example = {"prompt": record["prompt"], "completion": record["completion"]}
    else:
        raise InputError(f"--data-file {path}: line {number} needs a string 'text', or string 'prompt' and 'completion'")
    for value in example.values():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # a JSON escape of half a surrogate pair
            raise InputError(f"--data-file {path}: line {number} holds a lone surrogate ({value[err.start]!r}), not text") from err
    return example


def encode_lm(tokenizer, examples: list[dict], max_length: int) -> list[dict]:
    """Token ids with ``labels``: the ids themselves, or -100 over the prompt so that only the completion is learned.
    Examples left with no token to predict are dropped."""
    features = []
    for example in examples:
        if "text" in example:
            ids = tokenizer(example["text"], truncation=True, max_length=max_length)["input_ids"]
            labels = list(ids)
        else:
            prompt = tokenizer(example["prompt"], add_special_tokens=True)["input_ids"]
            completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"]
            ids = (prompt + completion)[:max_length]
            labels = ([-100] * len(prompt) + completion)[:max_length]
        if any(label != -100 for label in labels[1:]):  # the first token is never predicted
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def predicted_tokens(feature: dict) -> int:
    """How many of an encoded example's tokens the loss averages over (the model shifts labels by one)."""
    return sum(label != -100 for label in feature["labels"][1:])
