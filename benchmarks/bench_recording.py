"""4. Recording overhead of DeltaRecorder on the default training run.

Two costs: the per-layer gradient norms, taken on every step, and the snapshot, written
once per epoch. ``train`` takes the norms after ``backward`` from the reduced gradients
(:func:`~tlora_analysis.distributed.squared_grad_norms`); a user's own loop gets them from
the recorder's tensor hooks. Whole epochs timed on separate model builds vary by several
percent on this shared machine, more than the target, so both are measured paired: one
model runs the default epoch's steps in blocks of 5 with no norms, hooks, no norms, the
explicit norms, in turn, and the per-step medians are compared. The snapshot's write time
is compared with the epoch's time (steps x median step).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time

import torch
from harness import machine, table

from tlora_analysis.data import load_task
from tlora_analysis.data.encode import encode
from tlora_analysis.distributed import squared_grad_norms
from tlora_analysis.models import load_tokenizer
from tlora_analysis.recording import DeltaRecorder, trainable_groups
from tlora_analysis.training import TrainConfig
from tlora_analysis.training.batches import batches as padded_batches
from tlora_analysis.training.model import build_model

BLOCK = 5


def measure(method: str, passes: int = 4) -> list:
    config = TrainConfig(method=method)
    tokenizer = load_tokenizer(config.model)
    features = encode(tokenizer, load_task("default").train, load_task("default").spec, config.max_length)
    model = build_model(config, 2).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    batches = list(padded_batches(tokenizer, features, config.batch_size, list(range(len(features))), "cpu"))
    with tempfile.TemporaryDirectory() as root:
        recorder = DeltaRecorder(model, root)
        groups = trainable_groups(model)
        times: dict[str, list[float]] = {"off": [], "hooks": [], "explicit": []}
        for block_index, start in enumerate(range(0, passes * len(batches), BLOCK)):
            mode = ("off", "hooks", "off", "explicit")[block_index % 4]
            if mode == "hooks":
                recorder._attach_grad_hooks()
            for batch, labels in (batches[i % len(batches)] for i in range(start, start + BLOCK)):
                began = time.perf_counter()
                model(**batch, labels=labels).loss.backward()
                if mode == "explicit":
                    recorder.add_gradient_norms(squared_grad_norms(groups))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times[mode].append(time.perf_counter() - began)
            recorder.close()  # detaches the hooks
        snapshot = statistics.median(_timed(lambda: recorder.snapshot(1)) for _ in range(5))
    off, hooks, explicit = (statistics.median(times[k]) for k in ("off", "hooks", "explicit"))
    epoch = off * len(batches)
    print(f"  {method}: step {off * 1e3:.1f} ms without norms, {hooks * 1e3:.1f} ms with hooks, {explicit * 1e3:.1f} ms explicit; "
          f"snapshot {snapshot * 1e3:.1f} ms", file=sys.stderr)
    return [method, f"{epoch:.1f} s ({len(batches)} steps)", f"{off * 1e3:.1f} ms", f"{(hooks / off - 1) * 100:+.2f}%",
            f"{(explicit / off - 1) * 100:+.2f}%", f"{snapshot * 1e3:.1f} ms", f"{snapshot / epoch * 100:.3f}%",
            f"**{(explicit / off - 1 + snapshot / epoch) * 100:+.2f}%**"]


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def main() -> str:
    rows = [measure(method) for method in ("lora", "tlora")]
    return table(["method", "epoch", "step without norms", "hooks (paired)", "train's norms (paired)", "snapshot write",
                  "snapshot / epoch", "train's total overhead"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
