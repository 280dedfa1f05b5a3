"""Dense updates (a peft type merged through peft, a full fine-tune) rebuilt once per state, within one memory budget
shared by every open run (``store.kept``): the tables equal those rebuilt at every request, and the budget bounds
what is kept."""

import gc

import pandas as pd
import pytest

from tlora_analysis import analysis as A
from tlora_analysis.factored import FactoredDelta
from tlora_analysis.store import kept, load_run
from tlora_analysis.training import TrainConfig, train


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory, tiny_model_dir):
    """An IA³ run (read through peft, ΔW dense) and a full fine-tune, two epochs each on the tiny BERT."""
    root = tmp_path_factory.mktemp("dense")
    for method in ("ia3", "full"):
        config = TrainConfig(method=method, model=tiny_model_dir, epochs=2, max_train_samples=16, max_eval_samples=8, batch_size=8)
        train(config, root / method, progress=False, log=lambda _: None)
    return root


def counting_svds(monkeypatch):
    """Count the dense SVDs (``FactoredDelta.from_dense``) made from here on."""
    made = []
    original = FactoredDelta.from_dense.__func__
    monkeypatch.setattr(FactoredDelta, "from_dense", classmethod(lambda cls, *a, **k: made.append(1) or original(cls, *a, **k)))
    return made


def three_tables(path):
    run = load_run(path)
    return [A.norms(run), A.spectra(run), A.effective_rank(run)], len(run.epochs) * len(run.layers)


@pytest.mark.parametrize("method", ["ia3", "full"])
def test_a_dense_state_is_rebuilt_once_and_equals_one_rebuilt_at_every_request(dense_runs, monkeypatch, method):
    made = counting_svds(monkeypatch)
    kept_tables, states_times_layers = three_tables(dense_runs / method)
    assert len(made) == states_times_layers  # one SVD per layer and state, though three tables read every state
    made.clear()
    monkeypatch.setattr(kept.KEPT, "budget", 0)  # nothing fits: every request rebuilds, as before the budget
    rebuilt_tables, _ = three_tables(dense_runs / method)
    assert len(made) >= 2 * states_times_layers  # norms and spectra read every state, effective rank some
    for once, every_time in zip(kept_tables, rebuilt_tables):
        pd.testing.assert_frame_equal(once, every_time, check_exact=True)


def test_the_first_states_that_fit_are_kept_and_a_collected_run_frees_them(dense_runs, monkeypatch):
    gc.collect()
    before = kept.KEPT.used
    run = load_run(dense_runs / "ia3")
    one_state = sum(t.numel() * t.element_size() for d in run.deltas(0).values() for t in (d.left, d.core, d.right))
    assert kept.KEPT.used == before + one_state
    monkeypatch.setattr(kept.KEPT, "budget", kept.KEPT.used + one_state // 2)  # room for no other state
    made = counting_svds(monkeypatch)
    for epoch in run.epochs:
        run.deltas(epoch)
    assert kept.KEPT.used == before + one_state and len(made) == (len(run.epochs) - 1) * len(run.layers)
    assert run.deltas(0) is run.deltas(0)  # the first state stays: a later one never pushes it out
    del run
    gc.collect()
    assert kept.KEPT.used == before
