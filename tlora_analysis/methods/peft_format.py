"""Reading peft's adapter files: the checks and lookups that every method's ``from_peft`` shares.

peft saves an adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` with keys like
``base_model.model.<module>.lora_A.weight``. Both files may come from a stranger, so every
number is checked and every pattern key is matched under a time limit.
"""

from __future__ import annotations

import re

from ..errors import InputError

__all__ = ["PEFT_PREFIX", "module_key", "group_by_module", "pattern_value", "check_number", "PATTERN_TIMEOUT_S"]

PEFT_PREFIX = "base_model.model."
PATTERN_TIMEOUT_S = 0.05
"""How long one rank_pattern/alpha_pattern key may take to match one module name."""


def module_key(key: str, suffixes: str) -> tuple[str, str] | None:
    """(module, which) of a peft tensor key such as ``base_model.model.<module>.lora_A.weight``,
    for ``suffixes`` a regex alternation like ``lora_(?P<which>[AB])``; None for other keys.
    peft's adapter-name segment (``.default``) and ``.weight`` are optional."""
    match = re.fullmatch(rf"(?:{re.escape(PEFT_PREFIX)})?(?P<module>.+)\.{suffixes}(?:\.[^.]+)?(?:\.weight)?", key)
    return (match["module"], match["which"]) if match else None


def group_by_module(tensors: dict, suffixes: str) -> dict[str, dict]:
    """``{module: {which: tensor}}`` of the peft keys that :func:`module_key` recognises with ``suffixes``."""
    grouped: dict[str, dict] = {}
    for key, tensor in tensors.items():
        found = module_key(key, suffixes)
        if found:
            grouped.setdefault(found[0], {})[found[1]] = tensor
    return grouped


def pattern_value(patterns: dict, module: str, default, where: str):
    """peft's rank_pattern/alpha_pattern lookup: a key matches a module name ending with it.

    The keys come from a file, so they are matched as plain suffixes first and as regular
    expressions only with a time limit (the ``regex`` package's ``timeout``): a
    catastrophically backtracking key such as ``(a+)+`` cannot hang the process.
    """
    import regex

    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    for key, value in patterns.items():
        try:
            if regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT_S):
                return value
        except regex.error as err:
            raise InputError(f"{where}: pattern key {key!r:.80} is not a valid regular expression ({err})") from err
        except TimeoutError as err:
            raise InputError(f"{where}: pattern key {key!r:.80} took over {PATTERN_TIMEOUT_S} s to match {module!r}; "
                             "it backtracks catastrophically") from err
    return default


def check_number(value, where: str, name: str, low: float, high: float, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not (low <= value <= high):
        kind = "a whole number" if integer else "a finite number"
        raise InputError(f"{where}: {name} should be {kind} from {low:g} to {high:g}, got {value!r:.80}")
    return value
