"""The public names, docs/usage.md's Python example checked against dense computations (on tiny recorded
runs instead of runs/reproduce), and the import boundary of analysing a recorded run."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import tlora_analysis
from helpers import make_run
from tlora_analysis import analysis as A


def test_public_names_resolve_to_the_package_objects_they_name():
    for name in tlora_analysis.__all__:
        obj = getattr(tlora_analysis, name)
        assert obj.__module__.startswith("tlora_analysis.") and obj.__name__ == name, name


def test_readme_example(tmp_path):
    from tlora_analysis import adapter_layers, count_parameters, inject_adapters, load_run
    from tlora_analysis.models import load_model

    model = inject_adapters(load_model("default"), "tlora", rank=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    assert count_parameters(model).adapter_trainable == 12 * (64 + 1)
    delta = adapter_layers(model)["bert.encoder.layer.0.attention.self.query"].delta()
    assert delta.frobenius_norm() == 0.0 and len(delta.singular_values()) == 8
    make_run(tmp_path / "lora", "lora")
    make_run(tmp_path / "tlora", "tlora")
    run, lora = load_run(tmp_path / "tlora"), load_run(tmp_path / "lora")
    name, epoch = next(iter(run.layers)), run.epochs[-1]
    dense, dense_lora = run.deltas(epoch)[name].dense(torch.float64).numpy(), lora.deltas(epoch)[name].dense(torch.float64).numpy()
    spectra = A.spectra(run).query("name == @name and epoch == @epoch")
    np.testing.assert_allclose(spectra.singular_value, np.linalg.svd(dense, compute_uv=False)[: run.rank], rtol=1e-8, atol=1e-12)
    norms = A.norms(run).set_index(["name", "epoch"])
    assert norms.loc[(name, epoch), "frobenius"] == pytest.approx(np.linalg.norm(dense), rel=1e-10)
    scales = A.scales(run).set_index(["name", "epoch"])
    assert scales.loc[(name, epoch), "alpha"] == pytest.approx(run.scales(epoch)[name])
    similarity = A.update_similarity(str(tmp_path / "lora"), run).set_index(["name", "epoch"])
    expected = float((dense * dense_lora).sum() / np.linalg.norm(dense) / np.linalg.norm(dense_lora))
    assert similarity.loc[(name, epoch), "cosine"] == pytest.approx(expected, rel=1e-8)


def test_analysing_a_recorded_run_imports_no_training_distributed_or_executors(tmp_path):
    make_run(tmp_path / "run", "tlora")
    code = ("import sys; from tlora_analysis import load_run; from tlora_analysis.analysis import norms, spectra; "
            f"run = load_run({str(tmp_path / 'run')!r}); norms(run); spectra(run); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith(('tlora_analysis', 'transformers', 'submitit')))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    forbidden = [m for m in loaded if m.startswith(("tlora_analysis.training", "tlora_analysis.distributed", "tlora_analysis.study.execute",
                                                    "tlora_analysis.recording", "transformers", "submitit"))]
    assert not forbidden and "tlora_analysis.analysis.norms" in loaded
