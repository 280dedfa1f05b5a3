"""What a study adds to one pair of runs: the controls the paper lacks, and its claims over seeds.

- :func:`similarity_controls`: cosine and top-r subspace similarity φ between runs of the
  *same* method that differ only in seed, beside runs of different methods at the same
  seed. A LoRA–TLoRA cosine means little until it is set against LoRA–LoRA.
- :func:`rank_similarity`: φ(i, j) between the updates of one method at two ranks, same
  seed (the LoRA paper's rank study).
- :func:`study_claims`: every reading of the paper's findings per seed, for each pairing of
  a LoRA group with a TLoRA group; :func:`summarize_claims` folds the seeds into mean, CI
  and "holds in k of n seeds".
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from ..config import ANALYSIS
from ..factored import FactoredDelta, cosine_similarity
from ..study.directory import Study
from ._common import module_and_layer, same_but_method, settings_without
from .claims import PAPER_METHOD, REFERENCE_METHOD, paper_claims
from .distributions import weight_distributions
from .norms import norms, scales
from .seed_statistics import aggregate
from .similarity import (
    RandomUpdates,
    adapted_weight_similarity,
    random_subspace_similarity,
    reachable_cosine,
    subspace_similarity_table,
    update_similarity,
)
from .spectra import core_eigenvalues, effective_rank, spectra

SAME_METHOD = "same method, other seed"
OTHER_METHOD = "other method, same seed"


def _pairs(study: Study):
    """(kind, a, sa, b, sb) for every pair of finished adapted cells that differ only in seed, or only in method at one seed."""
    cells = study.finished(adapted_only=True)
    per_method = set(study.spec.per_method)
    for i, (a, sa) in enumerate(cells):
        for b, sb in cells[i + 1:]:
            if sa["method"] == sb["method"] and settings_without(sa, "seed") == settings_without(sb, "seed"):
                yield SAME_METHOD, a, sa, b, sb
            elif sa["method"] != sb["method"] and same_but_method(sa, sb, per_method):
                yield OTHER_METHOD, a, sa, b, sb


def _last(a, b) -> int:
    return min(a.epochs[-1], b.epochs[-1])


def similarity_controls(study: Study, baseline_samples: int = ANALYSIS.baseline_samples, seed: int = 0) -> pd.DataFrame:
    """Per layer at the last shared epoch, for every control pair: cosine of ΔW (with the random
    baseline of :func:`update_similarity`), φ of the top-r left singular subspaces, and φ of
    random subspaces of that size.

    ``kind`` is "same method, other seed" or "other method, same seed"; the pair's
    settings appear as ``<key>_a`` / ``<key>_b`` columns. Each run's update and its singular
    vectors are computed once per layer and shared by every pair it is in.

    Each pair's rows are stored beside the study (:mod:`.table_cache`), keyed by its two cells, the last shared
    epoch and the order in which the random baselines are drawn (one draw per (shape, rank), in the order the
    layers and pairs first meet it), so a new cell computes only the pairs it enters, with the draws a full
    computation would make, unless it brings a shape and rank drawn before the others'.
    """
    from .table_cache import shared_cache

    pairs = list(_pairs(study))
    if not pairs:
        return pd.DataFrame(columns=["kind", "run_a", "run_b", "method_a", "method_b", "module", "layer", "epoch", "name", "cosine", "phi"])
    runs = {r.name: r for _, a, _, b, _ in pairs for r in (a, b)}
    last = min(r.epochs[-1] for r in runs.values())
    deltas = {name: dict(run.deltas(last)) for name, run in runs.items()}  # copies: layers are dropped below
    draws = _draw_order(pairs, deltas) if baseline_samples else []
    cache = shared_cache(list(runs.values()))
    keys = [((a, b), (kind, sa, sb, last, baseline_samples, seed, draws)) for kind, a, sa, b, sb in pairs]
    tables = [cache.read("similarity_controls", cells, args, {}) if cache is not None else None for cells, args in keys]
    todo = [i for i, table in enumerate(tables) if table is None]
    if todo:
        computed = _controls([pairs[i] for i in todo], deltas, last, draws, baseline_samples, seed)
        for i, table in zip(todo, computed):
            tables[i] = table
            if cache is not None:
                cache.write("similarity_controls", *keys[i], {}, table)
    layers = {name: i for i, name in enumerate(next(iter(deltas.values())))}
    table = pd.concat([t.assign(_pair=i) for i, t in enumerate(tables)], ignore_index=True)
    order = table.name.map(layers) * len(tables) + table._pair  # layer by layer, pairs in order, as one pass makes them
    return table.iloc[order.argsort(kind="stable")].drop(columns="_pair").reset_index(drop=True)


def _draw_order(pairs: list, deltas: dict) -> list:
    """The (shape, rank) of each random baseline set, in the order one pass over layers and pairs first meets it."""
    order = []
    for layer_name in next(iter(deltas.values())):
        for _, a, _, _, _ in pairs:
            delta = deltas[a.name][layer_name]
            if (delta.shape, delta.rank) not in order:
                order.append((delta.shape, delta.rank))
    return order


def _random_sets(draws: list, wanted: set, baseline_samples: int, seed: int) -> dict:
    """The random baseline sets of the shapes and ranks in ``wanted``, drawn from one generator in ``draws``' order
    (the sets before a wanted one are drawn and dropped, so each set is the one a full pass draws)."""
    generator = torch.Generator().manual_seed(seed)
    sets = {}
    for shape, rank in draws[:max((draws.index(key) + 1 for key in wanted), default=0)]:
        template = FactoredDelta(torch.zeros(shape[0], rank), torch.eye(rank), torch.zeros(rank, shape[1]))
        updates = RandomUpdates(template, baseline_samples, generator)
        if (shape, rank) in wanted:
            sets[(shape, rank)] = updates
    return sets


def _controls(pairs: list, deltas: dict, last: int, draws: list, baseline_samples: int, seed: int) -> list[pd.DataFrame]:
    """The rows of :func:`similarity_controls` for ``pairs``, one table per pair."""
    needed = {(deltas[a.name][n].shape, deltas[a.name][n].rank) for _, a, _, _, _ in pairs for n in deltas[a.name]}
    random_updates = _random_sets(draws, needed, baseline_samples, seed) if baseline_samples else {}
    random_phi, rows = {}, [[] for _ in pairs]
    for layer_name in next(iter(deltas.values())):
        module, layer = module_and_layer(layer_name)
        vectors = {}
        for _, a, _, b, _ in pairs:
            for run in (a, b):
                if run.name not in vectors:
                    delta = deltas[run.name][layer_name]
                    vectors[run.name] = delta.top_singular_vectors()[0] if delta.frobenius_norm() > 0 else None
        chances = {}  # the baseline depends on run b's update and the random set only: once per run b
        for i, (kind, a, sa, b, sb) in enumerate(pairs):
            da, db = deltas[a.name][layer_name], deltas[b.name][layer_name]
            key = (da.shape, da.rank)
            if (b.name, key) not in chances:
                chances[(b.name, key)] = (np.abs(random_updates[key].cosines(db)) if baseline_samples and db.frobenius_norm() > 0
                                          else np.full(1, math.nan))
            chance = chances[(b.name, key)]
            k = min(da.rank, db.rank)
            if (da.shape[0], k) not in random_phi:
                random_phi[(da.shape[0], k)] = float(random_subspace_similarity(da.shape[0], k, k)[-1, -1])
            ua, ub = vectors[a.name], vectors[b.name]
            phi = float((ua[:, :k].T @ ub[:, :k]).pow(2).sum() / k) if ua is not None and ub is not None else math.nan
            rows[i].append({"run_a": a.name, "run_b": b.name, "method_a": a.method, "method_b": b.method, "module": module, "layer": layer,
                            "epoch": last, "name": layer_name, "cosine": cosine_similarity(da, db),
                            "baseline_abs_mean": float(chance.mean()), "baseline_abs_q95": float(np.quantile(chance, 0.95)),
                            "kind": kind, "phi": phi, "phi_random": random_phi[(da.shape[0], k)],
                            **{f"{key}_a": v for key, v in sa.items()}, **{f"{key}_b": v for key, v in sb.items()}})
        for run_name in vectors:  # free this layer's cached SVDs before the next layer
            deltas[run_name][layer_name] = None
    return [pd.DataFrame(r) for r in rows]


def rank_similarity(study: Study) -> pd.DataFrame:
    """φ(i, j) between the last-epoch updates of every two cells of one method and seed that differ only in rank."""
    cells = study.finished(adapted_only=True)
    tables = []
    for i, (a, sa) in enumerate(cells):
        for b, sb in cells[i + 1:]:
            if sa.get("rank") != sb.get("rank") and settings_without(sa, "rank") == settings_without(sb, "rank"):
                small, large = (a, b) if a.rank <= b.rank else (b, a)
                table = subspace_similarity_table(small, large, epochs=[_last(a, b)])
                tables.append(table.assign(method=sa["method"], seed=sa.get("seed"), rank_a=small.rank, rank_b=large.rank))
    if not tables:
        return pd.DataFrame(columns=["run_a", "run_b", "method", "rank_a", "rank_b", "module", "layer", "i", "j", "phi", "phi_random"])
    return pd.concat(tables, ignore_index=True)


def pair_tables(lora, tlora, base_weights: Mapping[str, torch.Tensor] | None = None, baseline_samples: int = ANALYSIS.baseline_samples,
                function_examples: int = 0, norms_table: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """The tables the claims read, for one LoRA and one TLoRA run (cheaper than all of compare_runs);
    with ``function_examples`` also the function-space cosine on that many validation examples.
    ``norms_table``: a study's :func:`norms` table to take the two runs' rows from instead of recomputing them."""
    from .base_alignment import amplification

    last = _last(lora, tlora)
    runs = (lora, tlora)
    tables = {
        "norms": (pd.concat([norms(r) for r in runs], ignore_index=True) if norms_table is None
                  else norms_table[norms_table.run.isin([lora.name, tlora.name])].reset_index(drop=True)),
        "spectra": pd.concat([spectra(r, [last]) for r in runs], ignore_index=True),
        "effective_rank": pd.concat([effective_rank(r, [last]) for r in runs], ignore_index=True),
        "weight_stats": pd.concat([weight_distributions(r, [last], pool=True) for r in runs], ignore_index=True),
        "core_eigenvalues": pd.concat([core_eigenvalues(r, [last]) for r in runs], ignore_index=True),
        "scales": scales(tlora),
        "similarity": update_similarity(lora, tlora, epochs=[last], baseline_samples=baseline_samples),
        "reachable": reachable_cosine(lora, tlora, epochs=[last]),
    }
    if base_weights is not None:
        tables["adapted_similarity"] = adapted_weight_similarity(lora, tlora, base_weights, epochs=[last])
        tables["amplification"] = pd.concat([amplification(r, base_weights, [last]) for r in runs], ignore_index=True)
    if function_examples:
        from .function_space import function_similarity

        tables["function_similarity"] = function_similarity(lora, tlora, examples=function_examples, epoch=last)
    return tables


def study_claims(study: Study, base_weights: Mapping[str, torch.Tensor] | None = None,
                 controls: pd.DataFrame | None = None, function_examples: int = 0, norms_table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every reading of the paper's findings, per seed, for each (LoRA group, TLoRA group) pairing.

    A group is a cell's settings without its seed. The TLoRA group's settings are columns
    (so a sensitivity study's verdicts can be laid out by init, lr, rank); ``lora_group``
    and ``tlora_group`` name the two groups. The same-method seed control and the α-vs-seed
    reading use every seed of the group at once and are repeated on each seed's row.
    ``function_examples`` > 0 adds the function-space reading (it loads the base model).
    """
    controls = similarity_controls(study) if controls is None else controls
    cells = study.finished(adapted_only=True)
    per_method = set(study.spec.per_method)
    lora = [(r, s) for r, s in cells if s["method"] == REFERENCE_METHOD]
    tlora = [(r, s) for r, s in cells if s["method"] == PAPER_METHOD]
    rows = []
    for t, st in tlora:
        for lo, sl in lora:
            if not same_but_method(sl, st, per_method):
                continue
            tables = pair_tables(lo, t, base_weights, function_examples=function_examples, norms_table=norms_table)
            group_l, group_t = settings_without(sl, "seed"), settings_without(st, "seed")
            same = controls[(controls.kind == SAME_METHOD)] if len(controls) else controls
            if len(same):
                mask = same.method_a == REFERENCE_METHOD
                for key, value in group_l.items():
                    mask &= same[f"{key}_a"] == value
                if mask.any():
                    tables["seed_control"] = same[mask]
            siblings = [r for r, s in tlora if settings_without(s, "seed") == group_t]
            if len(siblings) > 1:
                tables["scales_over_seeds"] = pd.concat([scales(r) for r in siblings], ignore_index=True)
            claims = paper_claims(tables)
            rows.append(claims.assign(seed=st.get("seed"), lora_run=lo.name, tlora_run=t.name,
                                      lora_group=_label(group_l), tlora_group=_label(group_t),
                                      **{k: v for k, v in group_t.items() if k != "method"}))
    if not rows:
        return pd.DataFrame(columns=["finding", "reading", "value", "holds", "seed", "lora_group", "tlora_group"])
    return pd.concat(rows, ignore_index=True)


def _label(settings: Mapping) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def summarize_claims(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Fold the seeds of :func:`study_claims`: each reading's mean statistic with its 95% bootstrap
    CI, and ``holds_in`` = "k/n" (seeds where it holds / seeds where it could be decided)."""
    if per_seed.empty:
        return per_seed
    keys = [c for c in per_seed.columns if c not in ("statistic", "value", "holds", "reason", "seed", "lora_run", "tlora_run", "epoch")]
    stats = aggregate(per_seed[[*keys, "seed", "value"]], over="seed", by=keys, values=["value"]).drop(columns="quantity")
    decided = per_seed.dropna(subset=["holds"]).groupby(keys, dropna=False)["holds"].agg(k="sum", n="size").reset_index()
    out = per_seed[keys].drop_duplicates().merge(stats, on=keys, how="left").merge(decided, on=keys, how="left", suffixes=("", "_decided"))
    out["holds_in"] = [f"{int(k)}/{int(n)}" if not math.isnan(n) else "—" for k, n in zip(out.k.fillna(0), out.n_decided.fillna(math.nan))]
    out["verdict"] = [("holds" if k == n else "does not hold" if k == 0 else "mixed") if not math.isnan(n) else "not computed"
                      for k, n in zip(out.k.fillna(0), out.n_decided.fillna(math.nan))]
    order = {name: i for i, name in enumerate(per_seed.reading.drop_duplicates())}
    out = out.assign(_order=out.reading.map(order)).sort_values([c for c in keys if c not in ("finding", "claim", "reading", "headline", "threshold")] + ["finding", "_order"], kind="stable")
    return out.drop(columns=["_order", "k"]).reset_index(drop=True)
