"""Reading peft's adapter files: the checks and lookups that every peft reader shares.

peft saves an adapter as ``adapter_config.json`` + ``adapter_model.safetensors`` with keys like
``base_model.model.<module>.lora_A.weight``. Both files may come from a stranger, so every
number is checked and pattern keys are matched within a time budget for the whole file.
"""

from __future__ import annotations

import re
import time

from ..errors import InputError

__all__ = ["PEFT_PREFIX", "module_key", "group_by_module", "PatternTable", "check_number", "check_rank", "PATTERN_TIMEOUT_S",
           "PATTERN_BUDGET_S", "MAX_PATTERN_KEYS", "lookup_by_suffix", "resolve_module_patterns"]

PEFT_PREFIX = "base_model.model."
PATTERN_TIMEOUT_S = 0.05
"""How long one rank_pattern/alpha_pattern key may take to match one module name."""
PATTERN_BUDGET_S = 2.0
"""How long matching every pattern key of a file against every module may take, all together."""
MAX_PATTERN_KEYS = 10_000
"""Most keys a rank_pattern or alpha_pattern may have (a 405B model has under 3,000 linear layers)."""


def module_key(key: str, suffixes: str) -> tuple[str, str] | None:
    """(module, which) of a peft tensor key such as ``base_model.model.<module>.lora_A.weight``,
    for ``suffixes`` a regex alternation like ``lora_(?P<which>[AB])``; None for other keys.
    peft's adapter-name segment (``.default``) and ``.weight`` are optional; a ``.bias`` (``lora_bias``) is
    not the tensor itself, so it does not match."""
    match = re.fullmatch(rf"(?:{re.escape(PEFT_PREFIX)})?(?P<module>.+)\.{suffixes}(?:\.(?!bias$|weight$)[^.]+)?(?:\.weight)?", key)
    return (match["module"], match["which"]) if match else None


def group_by_module(tensors: dict, suffixes: str) -> dict[str, dict]:
    """``{module: {which: tensor}}`` of the peft keys that :func:`module_key` recognises with ``suffixes``."""
    grouped: dict[str, dict] = {}
    for key, tensor in tensors.items():
        found = module_key(key, suffixes)
        if found:
            grouped.setdefault(found[0], {})[found[1]] = tensor
    return grouped


class PatternTable:
    """peft's ``rank_pattern``/``alpha_pattern``: a key matches a module name ending with it.

    The keys come from a file, so they are matched as plain suffixes first and as regular expressions
    only with a time limit per key (the ``regex`` package's ``timeout``) and a budget for the whole file:
    neither a catastrophically backtracking key such as ``(a+)+`` nor 10⁵ keys can hang the process.
    Values are checked as whole numbers (ranks) or finite numbers (alphas) when they are read.
    """

    def __init__(self, config: dict, field: str, where: str, integer: bool) -> None:
        self.patterns, self.field, self.where, self.integer = config.get(field) or {}, field, where, integer
        if not isinstance(self.patterns, dict) or not all(isinstance(k, str) for k in self.patterns):
            raise InputError(f"{where}: {field!r} should map module-name patterns to values")
        if len(self.patterns) > MAX_PATTERN_KEYS:
            raise InputError(f"{where}: {field!r} has {len(self.patterns):,} keys, more than the {MAX_PATTERN_KEYS:,} any model needs")
        self.deadline = None

    def value(self, module: str, default, low: float, high: float):
        """The pattern's value for ``module`` (checked to lie in [low, high]), else ``default``."""
        for key, value in self.patterns.items():
            if module == key or module.endswith("." + key):
                return self._checked(value, module, low, high)
        for key, value in self.patterns.items():
            if self._matches(key, module):
                return self._checked(value, module, low, high)
        return default

    def _matches(self, key: str, module: str) -> bool:
        import regex

        self.deadline = self.deadline or time.monotonic() + PATTERN_BUDGET_S
        if time.monotonic() > self.deadline:
            raise InputError(f"{self.where}: matching {self.field!r}'s {len(self.patterns):,} keys took over {PATTERN_BUDGET_S} s; "
                             "use fewer or plainer keys")
        try:
            return regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT_S) is not None
        except regex.error as err:
            raise InputError(f"{self.where}: pattern key {key!r:.80} is not a valid regular expression ({err})") from err
        except TimeoutError as err:
            raise InputError(f"{self.where}: pattern key {key!r:.80} took over {PATTERN_TIMEOUT_S} s to match {module!r}; "
                             "it backtracks catastrophically") from err

    def _checked(self, value, module: str, low: float, high: float):
        return check_number(value, self.where, f"{self.field} value for {module}", low, high, integer=self.integer)


def resolve_module_patterns(config: dict, module_names: list[str], where: str) -> dict:
    """``config`` with a string ``target_modules`` / ``exclude_modules`` replaced by the module names it matches.

    peft matches such a string with ``re.fullmatch`` against every module name, with no time limit, so a pattern from
    a file that backtracks catastrophically (``(.*)*x``) would hang the process inside peft. Here it is matched
    first with the ``regex`` package's timeout per name and a budget for the whole model, and peft is given the
    names it matched (a list peft matches as whole names or dotted suffixes: the same modules)."""
    import regex

    resolved = dict(config)
    for field in ("target_modules", "exclude_modules"):
        pattern = config.get(field)
        if not isinstance(pattern, str):
            continue
        try:
            compiled = regex.compile(pattern)
        except regex.error as err:
            raise InputError(f"{where}: {field} {pattern!r:.80} is not a valid regular expression ({err})") from None
        deadline = time.monotonic() + PATTERN_BUDGET_S
        matched = []
        for name in module_names:
            try:
                if compiled.fullmatch(name, timeout=PATTERN_TIMEOUT_S):
                    matched.append(name)
            except TimeoutError:
                raise InputError(f"{where}: {field} {pattern!r:.80} took over {PATTERN_TIMEOUT_S} s to match {name!r}; it "
                                 "backtracks catastrophically: give a plainer pattern or a list of module names") from None
            if time.monotonic() > deadline:
                raise InputError(f"{where}: matching {field} {pattern!r:.80} against the model's {len(module_names):,} modules "
                                 f"took over {PATTERN_BUDGET_S} s; give a plainer pattern or a list of module names")
        resolved[field] = matched
    return resolved


def lookup_by_suffix(mapping, name: str):
    """``mapping``'s entry for the longest dotted suffix of ``name`` it holds, or None: an adapter made on
    ``AutoModelForSequenceClassification`` names ``bert.encoder...``, the base checkpoint ``encoder...``."""
    parts = name.split(".")
    for i in range(len(parts)):
        key = ".".join(parts[i:])
        if key in mapping:
            return mapping[key]
    return None


def check_number(value, where: str, name: str, low: float, high: float, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not (low <= value <= high):
        kind = "a whole number" if integer else "a finite number"
        raise InputError(f"{where}: {name} should be {kind} from {low:g} to {high:g}, got {value!r:.80}")
    return value


MAX_RANK = 1 << 16
"""Largest rank read. A rank above min(d_out, d_in) is valid (peft builds r = 8 on a 2-label head) and is read
through :meth:`~tlora_analysis.factored.FactoredDelta.diagonal`, whose memory follows the layer's shape; the
factors themselves are the file's own tensors (or regenerated, r x d each), linear in r."""


def check_rank(rank: int, shape: tuple[int, int], where: str, module: str) -> None:
    """A rank-r update of a d_out x d_in layer: a layer of at least 1 x 1 and 1 ≤ r ≤ :data:`MAX_RANK`."""
    if min(shape) < 1 or not 1 <= rank <= MAX_RANK:
        raise InputError(f"{where}: module {module!r} has rank {rank} for a {shape[0]}x{shape[1]} layer; "
                         f"the rank must be from 1 to {MAX_RANK:,} and the layer at least 1x1")
