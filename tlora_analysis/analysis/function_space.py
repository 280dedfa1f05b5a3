"""How alike two updates act on real inputs: cos(ΔW_a·x, ΔW_b·x) over the tokens x that reach each layer.

Two updates can point in unrelated directions of weight space yet change a layer's output
alike on the inputs it actually sees (or the reverse). The inputs are captured with forward
hooks on the *base* model, W0 alone, on a fixed sample of the task's validation split, so
both updates are applied to the same x; padding positions are left out. Only token x d
matrices are formed, never a d x d one.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..errors import InputError
from ._common import UpdateSource, as_source, module_and_layer


@torch.no_grad()
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
    from ..data import load_task
    from ..data.encode import encode
    from ..models import load_model, load_tokenizer, model_named_in_file

    run_a, run_b = as_source(run_a), as_source(run_b)
    if "config" not in run_a.meta:
        raise InputError(f"{run_a.path}: has no training config, so its task and model are unknown")
    config = TrainConfig.from_dict(run_a.meta["config"])
    epoch = min(run_a.epochs[-1], run_b.epochs[-1]) if epoch is None else epoch
    deltas_a, deltas_b = run_a.deltas(epoch), run_b.deltas(epoch)
    if list(deltas_a) != list(deltas_b):
        raise InputError(f"runs {run_a.name!r} and {run_b.name!r} adapt different modules")
    name = model_named_in_file(config.model, run_a.path / "run.json", model)
    data = load_task(config.task, config.data_dir, max_eval_samples=examples, max_train_samples=1)
    tokenizer = load_tokenizer(name)
    features = encode(tokenizer, data.validation, data.spec, config.max_length)
    base = load_model(name, data.spec.num_labels, device).eval()
    sums = _accumulate_outputs(base, name, tokenizer, features, deltas_a, deltas_b, batch_size, device)
    rows = []
    for layer_name, (dot, na, nb, tokens) in sums.items():
        module, layer = module_and_layer(layer_name)
        cosine = dot / (na * nb) ** 0.5 if na > 0 and nb > 0 else float("nan")
        rows.append({"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method, "module": module,
                     "layer": layer, "epoch": epoch, "name": layer_name, "cosine": cosine, "tokens": tokens})
    return pd.DataFrame(rows)


def _accumulate_outputs(base, model_name: str, tokenizer, features, deltas_a, deltas_b, batch_size: int, device: str) -> dict:
    """Per layer, over the non-padding tokens x that reach it in the base model: Σ⟨ΔW_a x, ΔW_b x⟩,
    Σ‖ΔW_a x‖², Σ‖ΔW_b x‖² and the token count, from forward pre-hooks (ΔW x from the factors)."""
    factors = {n: [tuple(t.to(device, torch.float64) for t in (d.left, d.core, d.right)) for d in (deltas_a[n], deltas_b[n])]
               for n in deltas_a}
    sums = {n: [0.0, 0.0, 0.0, 0] for n in deltas_a}
    mask: list[torch.Tensor] = []

    def hook(name):
        def capture(module, inputs):
            x = inputs[0][mask[0]].to(torch.float64)  # (tokens, d_in), padding left out
            ya, yb = (((x @ right.T) @ core.T) @ left.T for left, core, right in factors[name])
            total = sums[name]
            total[0] += float((ya * yb).sum())
            total[1] += float(ya.pow(2).sum())
            total[2] += float(yb.pow(2).sum())
            total[3] += x.shape[0]
        return capture

    handles = []
    try:
        for layer_name in deltas_a:
            try:
                handles.append(base.get_submodule(layer_name).register_forward_pre_hook(hook(layer_name)))
            except AttributeError as err:
                raise InputError(f"{model_name}: the base model has no module {layer_name!r} (is it the runs' base model?)") from err
        for start in range(0, len(features), batch_size):
            chunk = [{k: v for k, v in f.items() if k != "labels"} for f in features[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in tokenizer.pad(chunk, return_tensors="pt").items()}
            mask[:] = [batch["attention_mask"].bool()]
            base(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return sums

