"""7. Where a training epoch's time goes, on the default run (all-MiniLM-L6-v2, q and v, r = 8).

The starting point for making the main job a multi-seed study (issue 10): each phase of
one LoRA epoch of ``train`` timed on its own (tokenization, padding into batches,
optimizer steps, evaluation), then the same steps with one and with two torch threads, and
two one-thread processes side by side against one two-thread process (the throughput a
study of many runs gets from the machine's two cores).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

import torch
from harness import machine, table

from tlora_analysis.config import TrainConfig
from tlora_analysis.data import load_task
from tlora_analysis.data.encode import encode
from tlora_analysis.models import load_tokenizer
from tlora_analysis.training import evaluate
from tlora_analysis.training.batches import batches as padded_batches
from tlora_analysis.training.model import build_model

STEPS = 24  # optimizer steps timed per setting


def _setup():
    config = TrainConfig(method="lora")
    tokenizer = load_tokenizer(config.model)
    data = load_task("default")
    return config, tokenizer, data


def _steps(threads: int, steps: int = STEPS) -> float:
    """Seconds per optimizer step (median), with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    config, tokenizer, data = _setup()
    features = encode(tokenizer, data.train, data.spec, config.max_length)
    model = build_model(config, 2).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr)
    batches = list(padded_batches(tokenizer, features, config.batch_size, list(range(len(features))), "cpu"))[: steps + 2]
    times = []
    for batch, labels in batches:
        started = time.perf_counter()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def _worker(threads: int, queue) -> None:
    started = time.perf_counter()
    step = _steps(threads)
    queue.put((step, time.perf_counter() - started))


def phases() -> list[list]:
    config, tokenizer, data = _setup()
    started = time.perf_counter()
    features = encode(tokenizer, data.train, data.spec, config.max_length)
    tokenize = time.perf_counter() - started
    started = time.perf_counter()
    batches = list(padded_batches(tokenizer, features, config.batch_size, list(range(len(features))), "cpu"))
    pad = time.perf_counter() - started
    step = _steps(torch.get_num_threads())
    model = build_model(config, 2)
    eval_features = encode(tokenizer, data.validation, data.spec, config.max_length)
    started = time.perf_counter()
    evaluate(model, tokenizer, eval_features, "default", config.batch_size, "cpu")
    evaluation = time.perf_counter() - started
    train = step * len(batches)
    total = tokenize + pad + train + evaluation
    return [[name, f"{seconds:.2f} s", f"{seconds / total:.1%}"] for name, seconds in
            [("tokenize 2,400 sentences (once per run)", tokenize), ("pad into 75 batches (every epoch)", pad),
             (f"75 optimizer steps (median {step * 1000:.0f} ms each)", train), ("evaluate 600 sentences (every epoch)", evaluation)]]


def parallel() -> list[list]:
    context = mp.get_context("spawn")
    rows = []
    for label, jobs, threads in (("one process, 2 threads", 1, 2), ("two processes, 1 thread each", 2, 1)):
        queue = context.Queue()
        started = time.perf_counter()
        workers = [context.Process(target=_worker, args=(threads, queue)) for _ in range(jobs)]
        for w in workers:
            w.start()
        results = [queue.get() for _ in workers]
        for w in workers:
            w.join()
        wall = time.perf_counter() - started
        step = statistics.mean(r[0] for r in results)
        rows.append([label, f"{step * 1000:.0f} ms", f"{jobs / step:.2f}", f"{wall:.0f} s"])
    return rows


def main() -> str:
    return "\n\n".join([
        table(["phase of one LoRA epoch", "time", "share"], phases()),
        table(["layout of the 2 cores", "step time", "steps per second (all jobs)", "wall incl. start-up"], parallel()),
    ])


if __name__ == "__main__":
    print(machine(), "\n")
    print(main())
