"""What a reader of a saved update may need besides the file itself: the base model, opened only when asked.

Many updates read from their factors alone. Some need W0 (DoRA's magnitude, PiSSA's initial factors,
every type peft computes on the base), and those ask :class:`ReadContext` for it. A model named in
a file is used only if it is the embedded default or a local folder (never fetched); ``--base``
always wins. Where no base can be had, the reader that needs it says so in one line.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import InputError
from ..methods.peft_format import lookup_by_suffix

__all__ = ["ReadContext", "lookup_by_suffix"]


class ReadContext:
    """Where a reading comes from (for messages) and the base model, if one is given or named locally.

    Args:
        where: the file or folder read, named in every message.
        base: the user's ``--base`` (a name or folder), or None.
        named: the base model named in the adapter's own files (``base_model_name_or_path``), or None.
    """

    def __init__(self, where: str, base: str | None = None, named: str | None = None) -> None:
        self.where, self._given, self._named = where, base, named
        self._weights: Mapping | None = None
        self._weight_names: tuple = ()
        self._shapes: dict | None = None
        self._engine = None

    @property
    def base(self) -> str | None:
        """The base model to use, or None where none is given and the file names none that may be opened."""
        from ..models import model_named_in_file

        try:
            return model_named_in_file(self._named, self.where, self._given)
        except InputError:
            return None

    def require_base(self, why: str) -> str:
        """The base model, or one line naming why it is needed and how to give it."""
        from ..models import model_named_in_file

        if self._given is None and self._named in (None, ""):
            raise InputError(f"{self.where}: {why}; pass the base model with --base MODEL (base=...)")
        try:
            return model_named_in_file(self._named, self.where, self._given)
        except InputError as err:
            raise InputError(f"{err}; it is needed because {why}") from err

    def weights(self, names: list[str], shapes: Mapping[str, tuple[int, int]], why: str) -> Mapping:
        """W0 of the named modules (read one tensor at a time from a sharded base), kept for later readings."""
        from ..models import base_weights

        if self._weights is None or not set(names) <= set(self._weight_names):
            self._weights = base_weights(self.require_base(why), list(names), dict(shapes))
            self._weight_names = tuple(names)
        return self._weights

    def shapes(self) -> dict | None:
        """(d_out, d_in) of every 2-D weight of the base, from its safetensors headers; None without a local base."""
        from ..base_weights import weight_shapes
        from ..models import resolve_model

        if self._shapes is None and self.base is not None:
            self._shapes = weight_shapes(resolve_model(self.base)) or {}
        return self._shapes

    def engine(self, config: dict, why: str, tensors: Mapping):
        """peft itself, with this adapter loaded on the base model (built once per context, its shapes checked
        against ``tensors`` first)."""
        from .engine import PeftEngine

        if self._engine is None or self._engine.config != config:
            self._engine = PeftEngine(config, self.require_base(why), self.where, tensors=tensors)
        return self._engine

    def release(self) -> None:
        """Drop the base model's weights and peft's model on it (~ the base's size each); asked for again, they are
        rebuilt. A study of many dense-update cells holds one of each per cell otherwise."""
        self._weights, self._weight_names, self._engine = None, (), None
