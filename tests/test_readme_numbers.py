"""Every number the docs' results pages quote from a committed results.json is that file's number: the tables are
rebuilt here from the files and must appear in the pages verbatim (bold aside). Run this module as a script to
print them (``python tests/test_readme_numbers.py``) after regenerating the results."""

import json
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LABELS = {"lora": "LoRA", "lorafa": "LoRA-FA", "tlora": "TLoRA", "vera": "VeRA", "loraxs": "LoRA-XS", "full": "full fine-tuning",
          "head": "head only"}


def _load(path: str) -> dict:
    return json.loads((ROOT / path).read_text())


def _ci(entry: dict, digits: int = 3) -> str:
    low, high = entry["ci"]
    return f"{entry['mean']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]" if low is not None else f"{entry['mean']:.{digits}f}"


def _rate(lr: float) -> str:
    return f"{lr:g}" if lr >= 0.1 else f"{lr:.0e}".replace("e-0", "e-")


def _accuracy(group: dict) -> str:
    return f"{group['mean']:.3f} [{group['ci_low']:.3f}, {group['ci_high']:.3f}]"


def _sweep(entry: dict) -> str:
    """A sweep's chosen rate (its mean) and every rate's mean, as the README's sweep tables write them."""
    best = next(r for r in entry["per_lr"] if r["lr"] == entry["chosen"])
    rates = ", ".join(f"{_rate(r['lr'])}: {r['mean']:.3f}" for r in entry["per_lr"])
    return f"**{_rate(entry['chosen'])}** ({best['mean']:.3f}) | {rates}"


def main_rows(path: str = "figures/results.json") -> list[str]:
    """A main job's table (the default task's, or WordNet's): accuracy, per seed, parameter counts."""
    rows = []
    for group in _load(path)["methods"].values():
        seeds = ", ".join(f"{v:.3f}" for v in group["per_seed"])
        rows.append(f"{_accuracy(group)} | {seeds} | {group['adapter_params']:,} | "
                    f"{group['head_params']:,} | {group['frozen_random_params']:,} |")
    return rows


def ladder_rows() -> list[str]:
    """The README's ladder table, one row per method, from figures/relatives/results.json."""
    results = _load("figures/relatives/results.json")
    rows = []
    for method, group in results["methods"].items():
        ladder = results.get("ladder", {}).get(method, {})
        counts = f"{group['adapter_params']:,} / {group['frozen_random_params']:,}"
        cells = [_ci(ladder[q]) if q in ladder else "—" for q in ("cosine", "cosine_next_seed", "reachable_cosine", "reachable_random",
                                                                  "function_cosine", "norm_ratio")]
        rows.append(f"| {LABELS.get(method, method)} | {_accuracy(group)} | {counts} | " + " | ".join(cells) + " |")
    return rows


def rank_rows() -> list[str]:
    """The README's rank table from figures/ranks/results.json: TLoRA against LoRA of its rank."""
    results = _load("figures/ranks/results.json")
    rows = []
    for name, group in results["methods"].items():
        ladder = results.get("ladder", {}).get(name, {})
        if group["method"] != "tlora":
            continue
        lora = results["methods"][name.replace("tlora", "lora", 1)]
        rows.append(f"| {group['rank']} | {ladder['rank_ratio']['mean']:.3f} | {lora['mean']:.3f} | {group['mean']:.3f} | "
                    f"{_ci(ladder['cosine'])} | {_ci(ladder['reachable_cosine'])} | {ladder['reachable_random']['mean']:.3f} | "
                    f"{_ci(ladder['norm_ratio'], 2)} |")
    return rows


def learning_rate_rows(path: str = "figures/lr_sweep/results.json") -> list[str]:
    results = _load(path)["learning_rates"]
    rows = []
    for method, entry in results.items():
        rows.append(f"| {LABELS.get(method, method)} | {_sweep(entry)} |")
    return rows


def atlas_rate_rows() -> list[str]:
    """docs/atlas.md's sweep table: each peft method's chosen rate and every rate's mean accuracy."""
    from tlora_analysis.methods import METHOD_SPECS

    results = _load("figures/atlas/lr_sweep/results.json")["learning_rates"]
    return [f"| {METHOD_SPECS[method].label} | {_sweep(entry)} |" for method, entry in results.items()]


ATLAS_AGAINST_LORA = ("cosine", "cosine_next_seed", "reachable_cosine", "norm_ratio", "function_cosine")
ATLAS_OWN = ("stable_rank", "entropy_rank", "amplification", "intruders")


def atlas_rows() -> list[str]:
    """docs/atlas.md's two tables, one row per method each, from figures/atlas/results.json (mean [95% CI] over seeds):
    accuracy, counts and the update against LoRA's; then the update's own ranks and its alignment with W0 (split so that
    every column shows at 1280 px)."""
    from tlora_analysis.methods import METHOD_SPECS

    results = _load("figures/atlas/results.json")
    against, own = [], []
    for method, group in results["methods"].items():
        ladder = results["ladder"].get(method, {})
        cells = {q: _ci(ladder[q], 2) if q in ladder and ladder[q]["mean"] is not None else "—" for q in ATLAS_AGAINST_LORA + ATLAS_OWN}
        label = METHOD_SPECS[method].label
        counts = f"{group['adapter_params']:,} / {group['frozen_random_params']:,}"
        against.append(f"| {label} | {_accuracy(group)} | {counts} | " + " | ".join(cells[q] for q in ATLAS_AGAINST_LORA) + " |")
        own.append(f"| {label} | " + " | ".join(cells[q] for q in ATLAS_OWN) + " |")
    return against + own


def rank_rate_rows() -> list[str]:
    """The README's per-rank rate table from figures/ranks/rates/results.json: TLoRA's chosen rate at each
    rank, every rate's mean accuracy, and at the chosen rate the cosine with LoRA, its bound and the norm ratio."""
    results = _load("figures/ranks/rates/results.json")
    rows = []
    for name, entry in results["learning_rates"].items():
        rank = int(name.split("rank=")[1])
        ladder = results["ladder"][f"{name} lr={entry['chosen']:g}"]
        rows.append(f"| {rank} | {_sweep(entry)} | {_ci(ladder['cosine'])} | "
                    f"{_ci(ladder['reachable_cosine'])} | {_ci(ladder['norm_ratio'], 2)} |")
    return rows


TABLES = {"figures/results.json": (main_rows, "docs/results.md"), "figures/lr_sweep/results.json": (learning_rate_rows, "docs/ladder.md"),
          "figures/relatives/results.json": (ladder_rows, "docs/ladder.md"), "figures/ranks/results.json": (rank_rows, "docs/ladder.md"),
          "figures/ranks/rates/results.json": (rank_rate_rows, "docs/ladder.md"),
          "figures/atlas/lr_sweep/results.json": (atlas_rate_rows, "docs/atlas.md"), "figures/atlas/results.json": (atlas_rows, "docs/atlas.md"),
          "figures/wordnet/lr_sweep/results.json": (partial(learning_rate_rows, "figures/wordnet/lr_sweep/results.json"), "docs/results.md"),
          "figures/wordnet/results.json": (partial(main_rows, "figures/wordnet/results.json"), "docs/results.md"),
          "figures/wordnet/hypernym/results.json": (partial(main_rows, "figures/wordnet/hypernym/results.json"), "docs/results.md")}


def test_the_readme_real_text_line_quotes_the_wordnet_files():
    import pandas as pd

    results = _load("figures/wordnet/results.json")
    methods, norm = results["methods"], next(c for c in results["claims"] if c["finding"] == 5 and c["headline"])
    transfers = int((pd.read_csv(ROOT / "figures/across_tasks/transfer.csv").outcome == "transfers").sum())
    line = " ".join((ROOT / "README.md").read_text().split())
    assert (f"LoRA {methods['lora']['mean']:.3f}, TLoRA {methods['tlora']['mean']:.3f}, head only {methods['head']['mean']:.3f}" in line
            and f"25 readings {transfers} transfer" in line and f"(ratio {norm['mean']:.3f})" in line)


def test_the_transfer_counts_are_the_committed_tables():
    """docs/results.md's count of readings that transfer, differ and stay undecided is figures/across_tasks/transfer.csv's."""
    import pandas as pd

    counts = pd.read_csv(ROOT / "figures/across_tasks/transfer.csv").outcome.value_counts()
    sentence = (f"Of the {int(counts.sum())} readings, {counts.get('transfers', 0)} transfer, {counts.get('differs', 0)} differ and "
                f"{counts.get('undecided', 0)} {'is' if counts.get('undecided', 0) == 1 else 'are'} undecided")
    assert sentence in " ".join((ROOT / "docs/results.md").read_text().split())


@pytest.mark.parametrize("source", TABLES)
def test_the_pages_quote_the_results_files(source):
    rows, page = TABLES[source]
    text = (ROOT / page).read_text().replace("**", "")
    for row in rows():
        assert row.replace("**", "") in text, f"{page} does not quote {source}: {row}"


def test_the_main_job_is_the_ladders_lora_tlora_and_head_cells():
    """docs/results.md says so: same settings, seeds and length (3 epochs), so the same accuracies to within one of the
    600 validation examples (a rerun flipped one TLoRA example: float sums in another order)."""
    main, ladder = _load("figures/results.json")["methods"], _load("figures/relatives/results.json")["methods"]
    for method in main:
        assert main[method]["seeds"] == ladder[method]["seeds"]
        assert all(abs(a - b) <= 1 / 600 + 1e-4 for a, b in zip(main[method]["per_seed"], ladder[method]["per_seed"])), method


if __name__ == "__main__":
    for source, (rows, page) in TABLES.items():
        print(f"\n{source} (quoted in {page})")
        print("\n".join(rows()))


def test_the_readme_atlas_line_quotes_the_atlas():
    """The README's atlas finding: two LoRA seeds' cosine, the highest cosine with LoRA among the orthogonal,
    multiplicative and spectral methods, and LoRA's and TLoRA's amplification, read from figures/atlas/results.json."""
    ladder = _load("figures/atlas/results.json")["ladder"]
    text = " ".join((ROOT / "README.md").read_text().split())
    others = max(ladder[m]["cosine"]["mean"] for m in ("oft", "boft", "hra", "ia3", "fourierft", "lokr"))
    for fragment in (f"cosine of {ladder['lora']['cosine']['mean']:.3f}", f"under {others:.2f} with LoRA",
                     f"LoRA {ladder['lora']['amplification']['mean']:.1f}x", f"TLoRA {ladder['tlora']['amplification']['mean']:.1f}x"):
        assert fragment in text, fragment
