"""The README's Python example runs as written (on a tiny recorded run instead of runs/reproduce)."""

import tlora_analysis
from helpers import make_run
from tlora_analysis import analysis as A


def test_public_names_resolve():
    for name in tlora_analysis.__all__:
        assert getattr(tlora_analysis, name) is not None, name


def test_readme_example(tmp_path):
    from tlora_analysis import adapter_layers, count_parameters, inject_adapters, load_run
    from tlora_analysis.models import load_model

    model = inject_adapters(load_model("default"), "tlora", rank=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    assert count_parameters(model).adapter_trainable == 12 * (64 + 1)
    delta = adapter_layers(model)["bert.encoder.layer.0.attention.self.query"].delta()
    assert delta.frobenius_norm() == 0.0 and len(delta.singular_values()) == 8
    make_run(tmp_path / "lora", "lora")
    make_run(tmp_path / "tlora", "tlora")
    run = load_run(tmp_path / "tlora")
    for table in (A.spectra(run), A.norms(run), A.scales(run), A.update_similarity(str(tmp_path / "lora"), run)):
        assert len(table) > 0
