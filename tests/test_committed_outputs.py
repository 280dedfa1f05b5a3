"""What is committed under figures/ is what the code writes now: every figures.json lists figures the registries
draw, with today's descriptions, and files that exist; every results.json has the fields today's writer gives.

A set whose runs take hours to regenerate and that the code has moved past is listed in STALE with the Makefile
target that regenerates it: its test is a strict xfail, so it fails the day the set is regenerated and the entry
must go."""

import dataclasses
import json
from pathlib import Path

import pytest

from tlora_analysis.analysis.claims import READINGS
from tlora_analysis.analysis.ladder import LADDER_QUANTITIES
from tlora_analysis.config import TrainConfig
from tlora_analysis.figures import FIGURES, OVERVIEW, STUDY_FIGURES, TASK_FIGURES
from tlora_analysis.results import CLAIM_FIELDS, METHOD_FIELDS

ROOT = Path(__file__).resolve().parents[1] / "figures"
STALE: dict[str, str] = {}
"""Committed sets the code has moved past, each with the target that regenerates it (hours of training)."""
NEEDS_NOTHING_BUT_THE_UPDATE = ("stable_rank", "entropy_rank")
NEEDS_W0 = ("amplification", "intruders")


def _sets(name: str) -> list:
    params = []
    for path in sorted(ROOT.rglob(name)):
        folder = str(path.parent.relative_to(ROOT)) if path.parent != ROOT else "."
        marks = [pytest.mark.xfail(strict=True, reason=f"stale: {STALE[folder]}")] if folder in STALE else []
        params.append(pytest.param(path, id=folder, marks=marks))
    return params


@pytest.mark.parametrize("path", _sets("figures.json"))
def test_a_committed_figures_json_lists_what_the_registries_draw(path):
    registry = {name: (needs, shows) for name, (_, needs, shows) in {**FIGURES, **STUDY_FIGURES, **TASK_FIGURES}.items()}
    registry["overview"] = (OVERVIEW[1], OVERVIEW[0])
    manifest = json.loads(path.read_text())
    for entry in manifest["figures"]:
        assert entry["name"] in registry, entry["name"]
        needs, shows = registry[entry["name"]]
        assert (entry["shows"], list(entry["tables"])) == (shows, list(needs)), entry["name"]
        for file in entry["files"]:
            assert (path.parent / file).is_file(), file
    for skipped in manifest["skipped"]:  # its reason is a table's (SKIP_REASONS) or a figure's own (NothingToDraw)
        assert skipped["name"] in registry and skipped["reason"].strip(), skipped


@pytest.mark.parametrize("path", _sets("results.json"))
def test_a_committed_results_json_has_the_fields_the_writer_gives(path):
    results = json.loads(path.read_text())
    settings = {f.name for f in dataclasses.fields(TrainConfig)}
    for group, fields in results["methods"].items():
        missing = set(METHOD_FIELDS) - set(fields)
        extra = set(fields) - set(METHOD_FIELDS) - {"ci_low", "ci_high"} - settings
        assert not missing and not extra, (group, missing, extra)
    readings = {reading.name for reading in READINGS}
    for claim in results["claims"]:
        assert set(CLAIM_FIELDS) <= set(claim) and set(claim) - set(CLAIM_FIELDS) <= {"lora_group", "tlora_group"}, claim
        assert claim["reading"] in readings, claim["reading"]
    for group, quantities in results.get("ladder", {}).items():
        assert set(quantities) <= set(LADDER_QUANTITIES), (group, set(quantities) - set(LADDER_QUANTITIES))
        read = results["methods"].get(group, {}).get("adapter_params", 0) > 0 and len(set(quantities) & {"cosine", "norm_ratio"})
        if read:  # a group whose updates were read has every quantity that needs nothing but them
            assert set(NEEDS_NOTHING_BUT_THE_UPDATE) <= set(quantities), (group, sorted(quantities))
        assert len(set(NEEDS_W0) & set(quantities)) in (0, len(NEEDS_W0)), (group, sorted(quantities))


def test_every_stale_entry_names_a_committed_set():
    assert all((ROOT / folder).is_dir() for folder in STALE)
