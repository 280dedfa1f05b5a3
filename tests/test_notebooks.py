"""Both notebooks execute headless on tiny runs, so they cannot rot."""

from pathlib import Path

import nbformat
import pytest

from helpers import HANG_GUARD_S

nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory, tiny_model_dir):
    from tlora_analysis.training import TrainConfig, train

    root = tmp_path_factory.mktemp("nb-runs")
    kwargs = dict(model=tiny_model_dir, epochs=2, max_train_samples=64, max_eval_samples=16, batch_size=16, max_length=24, rank=4)
    return {m: train(TrainConfig(method=m, **kwargs), root / m, progress=False, log=lambda _: None).path for m in ("lora", "tlora")}


@pytest.mark.parametrize("name", ["explore.ipynb", "inspect_checkpoint.ipynb"])
def test_notebook_executes(name, tiny_runs, monkeypatch, tmp_path):
    monkeypatch.setenv("TLORA_LORA_RUN", str(tiny_runs["lora"]))
    monkeypatch.setenv("TLORA_TLORA_RUN", str(tiny_runs["tlora"]))
    monkeypatch.setenv("TLORA_CHECKPOINT", str(tiny_runs["tlora"]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit notebooks without outputs"
    nbclient.NotebookClient(notebook, timeout=HANG_GUARD_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "the notebook should show figures inline"
