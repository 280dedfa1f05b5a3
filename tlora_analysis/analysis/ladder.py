"""The ladder of frozen randomness: every method of a study set against LoRA on the same seed.

LoRA freezes nothing; LoRA-FA freezes a random input side; VeRA and TLoRA freeze random
subspaces on both sides (VeRA with a diagonal core, TLoRA with an r x r core and α);
LoRA-XS freezes W0's principal subspaces; full fine-tuning is the reference. Lined up on
the same runs, they separate what frozen random subspaces cost from what a small core costs.

Per cell, against the LoRA cell of the same seed and settings (for a LoRA cell: the LoRA cell of
the next seed, the ceiling a method can be held to), at the last epoch both have: the mean over
layers of the cosine with LoRA's ΔW, the reachable bound of the method's fixed subspaces
(:func:`~.similarity.reachable_cosine`) beside what random subspaces of the same sizes give,
the norm ratio ‖ΔW‖_F / ‖ΔW_LoRA‖_F, the update's own stable and entropy effective rank, with
``function_examples`` the function-space cosine, and with the base weights W0 the amplification
factor and the number of intruder dimensions (:mod:`.base_alignment`). Many methods side by side
(the atlas) read the same table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import pandas as pd
import torch

from ..factored import cosine_similarity
from ..study.directory import Study
from ._common import same_but_method, settings_without
from .claims import REFERENCE_METHOD
from .seed_statistics import aggregate
from .similarity import reachable_cosine
from .spectra import rank_measures

__all__ = ["ladder", "ladder_layers", "ladder_over_seeds", "LADDER_QUANTITIES", "LAYER_QUANTITIES"]

LAYER_QUANTITIES = ("rank_ratio", "cosine", "cosine_next_seed", "reachable_cosine", "reachable_random", "norm_ratio", "function_cosine",
                    "stable_rank", "entropy_rank", "amplification", "intruders")
"""The per-layer numbers of :func:`ladder_layers`, averaged over layers by :func:`ladder`."""

LADDER_QUANTITIES = ("final_metric", "trainable_params", "frozen_random_params", *LAYER_QUANTITIES)
"""The per-cell numbers of :func:`ladder`, each folded over seeds by :func:`ladder_over_seeds`."""

SAME_SEED, OTHER_SEED = "LoRA, same seed", "LoRA, next seed"


def _next_seed(cells: list, settings: Mapping, key) -> object | None:
    """The cell of ``cells`` at the next seed (cyclically) with the same ``key(settings)``."""
    seed, wanted = settings.get("seed", 0), key(settings)
    others = sorted((s.get("seed", 0), i) for i, (_, s) in enumerate(cells) if key(s) == wanted and s.get("seed", 0) != seed)
    later = [i for other, i in others if other > seed] or [i for _, i in others]
    return cells[later[0]][0] if later else None


def _partners(study: Study):
    """(cell, its settings, its LoRA partner, how they pair, LoRA of the next seed or None) for every
    finished adapted cell that has a partner."""
    per_method = set(study.spec.per_method)
    cells = study.finished(adapted_only=True)
    lora = [(r, s) for r, s in cells if s["method"] == REFERENCE_METHOD]
    for run, settings in cells:
        if settings["method"] == REFERENCE_METHOD:  # its own settings (lr too) at another seed
            partner = _next_seed(lora, settings, lambda s: settings_without(s, "seed"))
            if partner is not None:
                yield run, settings, partner, OTHER_SEED, None
            continue
        partner = next((r for r, s in lora if same_but_method(s, settings, per_method)), None)
        if partner is not None:
            yield run, settings, partner, SAME_SEED, _next_seed(lora, settings, lambda s: settings_without(s, "method", "seed", *per_method))


def ladder_layers(study: Study, function_examples: int = 0, base_weights: Mapping[str, torch.Tensor] | None = None) -> pd.DataFrame:
    """Per cell and adapted layer, against its LoRA partner: cosine, reachable bound (and its random
    counterpart), norm ratio and, with ``function_examples`` > 0, the function-space cosine; and
    ``cosine_next_seed``, the cosine with LoRA of the next seed, whose random draws the cell does not
    share (LoRA-FA's frozen A is LoRA's initial A at the same seed, as in peft). Of the cell's own update:
    stable and entropy effective rank, and with ``base_weights`` amplification and intruder dimensions.

    A cell's rows are stored beside the study keyed by the cell, its partner and its next-seed LoRA
    (:func:`~.table_cache.cached`), so a new cell computes only its own rows and those it is a partner of. The
    function-space cosine is added from :func:`~.function_space.function_similarity`, which stores its own tables
    (keyed by the files of the base model and the task's examples too)."""
    from .table_cache import cached

    tables = []
    for run, settings, lora, pairing, independent in _partners(study):
        cells = (run, lora) if independent is None else (run, lora, independent)
        rows = cached("ladder_layers", cells, (settings, pairing, base_weights), {},
                      functools.partial(_cell_layers, run, settings, lora, pairing, independent, base_weights))
        if function_examples and len(rows):
            functions = _function_cosines(lora, run, function_examples, int(rows.epoch.iloc[0]))
            rows = rows.assign(function_cosine=[functions.get(name, math.nan) for name in rows.name])
        tables.append(rows)
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def _cell_layers(run, settings: Mapping, lora, pairing: str, independent, base_weights) -> pd.DataFrame:
    """One cell's rows of :func:`ladder_layers`, the function-space cosine left NaN."""
    epoch = min(run.epochs[-1], lora.epochs[-1])
    ours, theirs = run.deltas(epoch), lora.deltas(epoch)
    unshared = independent.deltas(min(epoch, independent.epochs[-1])) if independent is not None else {}
    bounds = reachable_cosine(lora, run, epochs=[epoch]).set_index("name")
    rows = []
    for name, delta in ours.items():
        reference = theirs.get(name)
        if reference is None:
            continue
        norm = reference.frobenius_norm()
        ranks = rank_measures(delta.singular_values().numpy())
        rows.append({"run": run.name, **settings, "partner": lora.name, "pairing": pairing, "epoch": epoch, "name": name,
                     "rank_ratio": delta.rank / math.sqrt(delta.shape[0] * delta.shape[1]), "cosine": cosine_similarity(reference, delta),
                     "cosine_next_seed": cosine_similarity(unshared[name], delta) if name in unshared else math.nan,
                     "reachable_cosine": bounds.reachable_cosine.get(name, math.nan),
                     "reachable_random": bounds.reachable_random.get(name, math.nan),
                     "norm_ratio": delta.frobenius_norm() / norm if norm > 0 else math.nan,
                     "function_cosine": math.nan,
                     "stable_rank": ranks["stable_rank"], "entropy_rank": ranks["entropy_rank"],
                     **_alignment(delta, base_weights, name)})
    return pd.DataFrame(rows)


def _alignment(delta, base_weights, name: str) -> dict[str, float]:
    if base_weights is None:
        return {"amplification": math.nan, "intruders": math.nan}
    from .base_alignment import layer_alignment

    return layer_alignment(delta, base_weights, name)


def _function_cosines(lora, run, examples: int, epoch: int) -> dict[str, float]:
    if not examples:
        return {}
    from .function_space import function_similarity

    table = function_similarity(lora, run, examples=examples, epoch=epoch)
    return dict(zip(table.name, table.cosine))


def ladder(study: Study, layers: pd.DataFrame | None = None, function_examples: int = 0) -> pd.DataFrame:
    """One row per finished cell (head-only included): its settings, final metric, trainable and
    frozen random numbers, and the means over layers of :func:`ladder_layers` (NaN where a cell has
    no LoRA partner or no adapted layer)."""
    layers = ladder_layers(study, function_examples) if layers is None else layers
    runs = study.runs
    finished = runs[runs.status == "finished"]
    columns = ["run", *study.swept, "final_metric", "trainable_params", "frozen_random_params"]
    table = finished[[c for c in columns if c in finished.columns]].copy()
    if "seed" not in table.columns:
        table["seed"] = 0
    if len(layers):
        means = layers.groupby("run")[[q for q in LAYER_QUANTITIES if q in layers.columns]].mean()
        table = table.merge(means, left_on="run", right_index=True, how="left")
        table = table.merge(layers.groupby("run")[["partner", "pairing"]].first(), left_on="run", right_index=True, how="left")
    return table.reset_index(drop=True)


def ladder_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`ladder` folded over seeds: mean, std, n and 95% bootstrap CI per method and setting."""
    keys = [c for c in table.columns if c not in (*LADDER_QUANTITIES, "run", "seed", "partner", "pairing")]
    values = [c for c in LADDER_QUANTITIES if c in table.columns and table[c].notna().any()]
    return aggregate(table.assign(seed=table.seed.fillna(0)), over="seed", by=keys, values=values)
