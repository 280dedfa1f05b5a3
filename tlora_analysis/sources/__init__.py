"""Every kind of saved update, opened as one kind of source for the analyses.

A source has a ``name`` (its label), ``method``, ``path``, ``meta``, ``layers`` (shape and rank per
adapted layer), ``epochs`` (its states), ``metrics``, ``notices`` (what its reading left out, one
line each) and ``deltas(epoch)`` -> ``{layer: FactoredDelta}``. Each format lives in one module and
registers itself in :data:`~.formats.FORMATS` (:mod:`.runs`, :mod:`.peft_dirs`, :mod:`.trainer`,
:mod:`.single_files`, :mod:`.finetuned`); :func:`open_updates` asks the registry.

Only JSON and safetensors are read. Pickle-based files (``.bin``, ``.pt``, ``.pth``, ``.pkl``)
are refused without being opened, because unpickling runs code from the file; a folder that holds
them beside what is read (a Trainer checkpoint's ``optimizer.pt``) is fine, since they are never opened.
"""

from __future__ import annotations

from ..io import refuse_pickle, refuse_pickled_files
from . import finetuned, peft_dirs, runs, single_files, trainer  # noqa: F401 - each registers its formats on import
from .formats import FORMATS, Sniff, SourceFormat, formats_table, open_updates, origin, register_format
from .labels import LABEL_SETTINGS, Labelled, labelled_paths, open_sources
from .peft_dirs import PeftAdapter, open_peft
from .states import FINAL_STATE, ReadingState, SingleState, state_name

__all__ = ["open_updates", "origin", "open_sources", "labelled_paths", "Labelled", "SingleState", "ReadingState", "FINAL_STATE", "state_name", "PeftAdapter", "open_peft",
           "FORMATS", "SourceFormat", "Sniff", "register_format", "formats_table", "refuse_pickle", "refuse_pickled_files", "LABEL_SETTINGS"]
