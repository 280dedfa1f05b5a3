"""Runs built from known random factors, for checking analyses against dense computations, and the CLI run as a user runs it."""

import functools
import hashlib
import os
import resource
import subprocess
import sys

import torch
from torch import nn

from tlora_analysis import adapter_layers, inject_adapters
from tlora_analysis.recording import DeltaRecorder


class ToyBlock(nn.Module):
    def __init__(self, d_model, d_kv):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_kv)


class ToyModel(nn.Module):
    """Named like a transformer: ``layers.<i>.query`` / ``layers.<i>.value``."""

    def __init__(self, n_layers=3, d_model=24, d_kv=16):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(ToyBlock(d_model, d_kv) for _ in range(n_layers))


def make_run(path, method, rank=4, epochs=3, seed=0, n_layers=3):
    """Record ``epochs`` epochs of random adapter states (epoch 0 is the zero update)."""
    model = inject_adapters(ToyModel(n_layers), method, rank, ["query", "value"], seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with DeltaRecorder(model, path, metadata={"task": "toy", "main_metric": "accuracy"}) as recorder:
        recorder.snapshot(0, {"accuracy": 0.5})
        for epoch in range(1, epochs + 1):
            with torch.no_grad():
                for layer in adapter_layers(model).values():
                    for name, p in layer.named_parameters():
                        if not name.startswith("base."):
                            p.copy_(torch.randn(p.shape, generator=generator) * 0.5 + (1.0 if p.ndim == 0 else 0.0))
            recorder.snapshot(epoch, {"accuracy": 0.5 + 0.1 * epoch})
        recorder.finish()
    return model


# --------------------------------------------------------------------------- the CLI as a user runs it
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
HANG_GUARD_S = 1800
"""Every time limit in the tests guards against a hang only, never measures speed (benchmarks/ do): generous enough
that a correct program passes on a slow machine busy with other jobs (the suite passes at a load of 4 on 2 cores)."""


PRELOADED = ("torch", "pandas", "scipy.stats", "matplotlib.pyplot", "seaborn", "safetensors.torch", "transformers",
             "transformers.modeling_utils", "transformers.models.bert.modeling_bert", "peft", "datasets",
             *(f"tlora_analysis.{name}" for name in ("cli", "analysis", "figures", "report", "training", "sources")))
"""What the CLI's own start-up imports for seconds (torch, transformers, peft: ~6 s on a busy core, the bulk of a
small command): imported once in a fork server, whose fork then runs the command."""


def cli(*args, env=ENV, timeout=HANG_GUARD_S, memory_mb=3000):
    """``python -m tlora_analysis ARGS`` in a process of its own, under a time limit and an address-space limit.

    The process is forked from a server that has imported the heavy packages already (``PRELOADED``): still a process
    of its own with its exit status, file descriptors, environment, working folder, umask and limits, without paying the
    imports at each of the suite's hundreds of commands. An environment other than ``ENV`` (read at import by
    huggingface_hub and matplotlib) gets a fresh interpreter instead."""
    argv = [*map(str, args)]
    if env is not ENV and env != ENV:
        return _fresh_interpreter(argv, env, timeout, memory_mb)
    return _forked(argv, timeout, memory_mb)


def _address_space_limit(memory_mb):
    if memory_mb:
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))


def _fresh_interpreter(argv, env, timeout, memory_mb):
    return subprocess.run([sys.executable, "-m", "tlora_analysis", *argv], capture_output=True, text=True, env=env,
                          timeout=timeout, preexec_fn=lambda: _address_space_limit(memory_mb), stdin=subprocess.DEVNULL)


@functools.cache
def _fork_server():
    """This process's fork server, started once under ``ENV`` (so that what is read at import is what a command
    started with ``ENV`` would read)."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOADED))
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(ENV)
        forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return context


def _forked(argv, timeout, memory_mb):
    import tempfile

    from tlora_analysis.io import umask

    with tempfile.TemporaryDirectory(prefix="tlora-cli-") as folder:
        out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
        process = _fork_server().Process(target=_run_command, args=(argv, os.getcwd(), umask(), out, err, memory_mb))
        process.start()
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(["tlora-analysis", *argv], timeout)
        with open(out, encoding="utf-8", errors="replace") as o, open(err, encoding="utf-8", errors="replace") as e:
            return subprocess.CompletedProcess(["tlora-analysis", *argv], process.exitcode, o.read(), e.read())


def _run_command(argv, cwd, mask, out, err, memory_mb):
    """In the forked process: what ``python -m tlora_analysis ARGV`` does, with its streams on files."""
    import runpy
    import traceback

    os.chdir(cwd)
    os.umask(mask)
    os.environ.clear()
    os.environ.update(ENV)
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT), (2, err, os.O_WRONLY | os.O_CREAT)):
        os.dup2(os.open(path, mode), fd)
    sys.stdin = open(0, encoding="utf-8", closefd=False)
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)
    _address_space_limit(memory_mb)
    sys.argv = ["tlora-analysis", *argv]
    code = 0
    try:
        runpy.run_module("tlora_analysis", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:  # as the interpreter exits: None is 0, a number is the status, anything else printed and 1
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter prints for an uncaught exception, and its exit status
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def expect_error(result, *fragments):
    """Exit 2, exactly one ``error:`` line, no traceback, and each fragment in the message."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    # progress lines (a phase that ended before the error, on a stderr that is no terminal) are not part of the error
    err = "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith("tlora-analysis: progress: "))
    assert err.startswith("tlora-analysis: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


def tree_digest(*paths):
    """SHA-256 of every file under the paths (links reported as links, not followed)."""
    digest = {}
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_symlink():
                digest[str(p)] = "link -> " + os.readlink(p)
            elif p.is_file():
                digest[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return digest


def read_events(folder):
    """Every TensorBoard scalar and histogram under ``folder``: ``{tag: {step: value}}`` each."""
    from tensorboard.backend.event_processing import event_accumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    scalars, histograms = {}, {}
    for file in files:
        acc = event_accumulator.EventAccumulator(str(file), size_guidance={"scalars": 0, "histograms": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["histograms"]:
            histograms.setdefault(tag, {}).update({e.step: e.histogram_value for e in acc.Histograms(tag)})
    return scalars, histograms
