"""How alike two updates act on real inputs: cos(ΔW_a·x, ΔW_b·x) over the tokens x that reach each layer.

Two updates can point in unrelated directions of weight space yet change a layer's output
alike on the inputs it actually sees (or the reverse). The inputs are captured with forward
hooks on the *base* model, W0 alone, on a fixed sample of the task's validation split, so
both updates are applied to the same x; padding positions are left out. The inputs enter only
through each layer's Gram matrix G = Σ x xᵀ (d_in x d_in), so the base runs forward once for all
pairs of a command, and each pair's sums are quadratic forms of G computed from the factors.
"""

from __future__ import annotations

import functools

import pandas as pd
import torch

from ..errors import InputError
from ._common import UpdateSource, as_source, module_and_layer


def function_similarity(run_a: UpdateSource, run_b: UpdateSource, *, examples: int = 64, epoch: int | None = None, model: str | None = None,
                        batch_size: int = 32, device: str = "cpu") -> pd.DataFrame:
    """Per adapted layer: Σ⟨ΔW_a x, ΔW_b x⟩ / √(Σ‖ΔW_a x‖² Σ‖ΔW_b x‖²) over the non-padding tokens of the
    first ``examples`` validation examples of run_a's task, at ``epoch`` (default: the last both share).

    Args:
        run_a, run_b: runs of the same model and targets.
        examples: validation examples fed through the base model.
        epoch: the epoch to compare.
        model: base model to load instead of the one run_a names (see ``model_named_in_file``).
        batch_size: examples per forward pass.
        device: where the base model runs.
    """
    from ..config import TrainConfig
    from ..models import model_named_in_file
    from .table_cache import cached

    run_a, run_b = as_source(run_a), as_source(run_b)
    if "config" not in run_a.meta:
        raise InputError(f"{run_a.path}: has no training config, so its task and model are unknown")
    config = TrainConfig.from_dict(run_a.meta["config"])
    epoch = min(run_a.epochs[-1], run_b.epochs[-1]) if epoch is None else epoch
    name = model_named_in_file(config.model, run_a.path / "run.json", model)
    inputs = _inputs_identity(name, config)
    compute = functools.partial(_similarity, run_a, run_b, config, name, examples, epoch, batch_size, str(device))
    if inputs is None:  # a model or examples no file names (the Hub): computed each time
        return compute()
    return cached("function_similarity", (run_a, run_b), (inputs, examples, epoch, batch_size, str(device)), {}, compute)


def _inputs_identity(model_name: str, config) -> list | None:
    """Path, size and modification time of every file of the base model and of the task's examples, or None where
    one of them is not a local file (a Hub id): with the runs' own files, what a stored cosine is keyed by."""
    from ..data import task_files
    from ..models import local_model_files

    model = local_model_files(model_name)
    examples = task_files(config.task, config.data_dir)
    if model is None or examples is None:
        return None
    return [*model, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in examples)]


@torch.no_grad()
def _similarity(run_a, run_b, config, name: str, examples: int, epoch: int, batch_size: int, device: str) -> pd.DataFrame:
    """The rows of :func:`function_similarity`."""
    deltas_a, deltas_b = run_a.deltas(epoch), run_b.deltas(epoch)
    if list(deltas_a) != list(deltas_b):
        raise InputError(f"runs {run_a.name!r} and {run_b.name!r} adapt different modules")
    grams = input_grams(name, config.task, config.data_dir, examples, config.max_length, tuple(deltas_a), batch_size, str(device))
    rows = []
    for layer_name, (gram, tokens) in grams.items():
        a, b = deltas_a[layer_name], deltas_b[layer_name]
        dot, na, nb = (_quadratic(x, gram, y) for x, y in ((a, b), (a, a), (b, b)))
        module, layer = module_and_layer(layer_name)
        cosine = dot / (na * nb) ** 0.5 if na > 0 and nb > 0 else float("nan")
        rows.append({"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method, "module": module,
                     "layer": layer, "epoch": epoch, "name": layer_name, "cosine": cosine, "tokens": tokens})
    return pd.DataFrame(rows)


def _quadratic(a, gram: torch.Tensor, b) -> float:
    """Σ_x ⟨ΔW_a x, ΔW_b x⟩ = trace(ΔW_a G ΔW_bᵀ) with G = Σ_x x xᵀ, from the factors:
    trace((L_bᵀ L_a) K_a (R_a G R_bᵀ) K_bᵀ), so nothing larger than d_in x r is formed."""
    f64 = torch.float64
    inner_right = a.right.to(f64) @ gram @ b.right.to(f64).T
    inner_left = b.left.to(f64).T @ a.left.to(f64)
    return float(torch.trace(inner_left @ a.core.to(f64) @ inner_right @ b.core.to(f64).T))


@functools.lru_cache(maxsize=2)
def input_grams(model_name: str, task: str, data_dir, examples: int, max_length: int, layer_names: tuple[str, ...],
                batch_size: int, device: str) -> dict[str, tuple[torch.Tensor, int]]:
    """Per layer, G = Σ x xᵀ (float64) over the non-padding tokens x that reach it in the base model, and their count.

    Every pair of a study shares one base and one sample of inputs, so the base runs forward once per command
    (kept for the last two settings), not once per pair; a pair's cosine is then a quadratic form of G."""
    from ..data import load_task
    from ..data.encode import encode
    from ..models import load_model, load_tokenizer

    data = load_task(task, data_dir, max_eval_samples=examples, max_train_samples=1)
    tokenizer = load_tokenizer(model_name)
    features = encode(tokenizer, data.validation, data.spec, max_length)
    base = load_model(model_name, data.spec.num_labels, device).eval()
    return _accumulate_grams(base, model_name, tokenizer, features, layer_names, batch_size, device)


def _accumulate_grams(base, model_name: str, tokenizer, features, layer_names, batch_size: int, device: str) -> dict:
    """Each layer's Σ x xᵀ and token count, from forward pre-hooks on the base model."""
    sums = {n: [None, 0] for n in layer_names}
    mask: list[torch.Tensor] = []

    def hook(name):
        def capture(module, inputs):
            x = inputs[0][mask[0]].to(torch.float64)  # (tokens, d_in), padding left out
            total = sums[name]
            total[0] = x.T @ x if total[0] is None else total[0] + x.T @ x
            total[1] += x.shape[0]
        return capture

    handles = []
    try:
        for layer_name in layer_names:
            try:
                handles.append(base.get_submodule(layer_name).register_forward_pre_hook(hook(layer_name)))
            except AttributeError as err:
                raise InputError(f"{model_name}: the base model has no module {layer_name!r} (is it the runs' base model?)") from err
        with torch.no_grad():
            for start in range(0, len(features), batch_size):
                chunk = [{k: v for k, v in f.items() if k != "labels"} for f in features[start:start + batch_size]]
                batch = {k: v.to(device) for k, v in tokenizer.pad(chunk, return_tensors="pt").items()}
                mask[:] = [batch["attention_mask"].bool()]
                base(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return {n: (gram.cpu(), tokens) for n, (gram, tokens) in sums.items() if gram is not None}
