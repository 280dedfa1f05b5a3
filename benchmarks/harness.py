"""Timing and memory helpers shared by the benchmarks.

Every target is a ratio of two things measured side by side in the same run (the
machine is shared and noisy): medians of several repetitions, alternating the two
variants. Peak memory is how far the resident set of a fresh spawned process rises above
its level just before an operation (Linux's VmHWM, reset right before it), so nothing
else the benchmark did counts; its resolution is a page (4 KiB).
"""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {platform.python_version()}"


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def side_by_side(first: Callable[[], object], second: Callable[[], object], repeats: int = 5) -> tuple[float, float]:
    """Median times of two callables, run alternately so that load on the machine hits both alike."""
    first(), second()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        for fn, sink in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _child(queue, setup, operation, args, warmup_args):
    if warmup_args is not None:
        operation(setup(*warmup_args))  # loads the code the operation runs (LAPACK pages count as RSS too)
    state = setup(*args)
    gc.collect()
    # Reset the kernel's peak-RSS counter (VmHWM) so that only this operation's peak counts;
    # the lifetime maximum (ru_maxrss) would still hold the peak of importing torch.
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = _status_kib("VmRSS")
    operation(state)
    queue.put((_status_kib("VmHWM") - before) * 1024)


def peak_memory(setup: Callable, operation: Callable, *args, warmup_args: tuple | None = None) -> int:
    """Bytes by which ``operation(setup(*args))`` raises the peak RSS of a fresh process (module-level callables only).

    ``warmup_args`` runs the operation once on small inputs first, so that loading code is not counted.
    """
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, setup, operation, args, warmup_args))
    process.start()
    process.join()
    if process.exitcode != 0 or queue.empty():
        raise RuntimeError(f"memory measurement of {operation.__name__} failed (exit code {process.exitcode})")
    return queue.get()


def megabytes(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table, so the output can be pasted into benchmarks/README.md as is."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_sharded_base(base: Path, layers: int, modules: tuple[str, ...], width: int) -> Path:
    """A LLaMA-shaped base of random ``width`` x ``width`` projections (``modules`` of the first ``layers`` layers),
    one safetensors shard per layer with its index, as the 7B-shaped benchmarks read it."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    base.mkdir()
    weight_map = {}
    for i in range(layers):
        shard = f"model-{i + 1:05d}-of-{layers:05d}.safetensors"
        tensors = {f"model.layers.{i}.self_attn.{m}.weight": torch.randn(width, width, generator=generator) / width**0.5 for m in modules}
        save_file(tensors, str(base / shard))
        weight_map.update(dict.fromkeys(tensors, shard))
    (base / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    return base
