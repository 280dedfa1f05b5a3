"""9. inspect with a sharded 7B-shaped base: amplification and intruder dimensions within bounded memory.

A PEFT LoRA adapter of LLaMA-2-7B's shape (q and v, 4096 x 4096, r = 16, random factors)
and a sharded safetensors directory of random W0 (one shard per layer, plus the index).
``inspect --base DIR`` reads W0 one tensor at a time and caches W0's SVD on disk; it runs
twice in fresh processes (first: computing the SVDs, second: from the cache), each process's
whole peak resident memory reported. The full 32 layers need 64 dense SVDs of 4096²
(about 20 s each on 2 cores), so by default the benchmark uses the first LAYERS layers of
that model and reports the time per layer; peak memory does not grow with the layer count,
since one layer's tensors are alive at a time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import machine, megabytes, table, write_sharded_base
from safetensors.torch import save_file

LAYERS = int(os.environ.get("BENCH_BIG_BASE_LAYERS", "4"))
RANK, D = 16, 4096
MODULES = ("q_proj", "v_proj")


def write(root: Path) -> tuple[Path, Path]:
    base, adapter = write_sharded_base(root / "base", LAYERS, MODULES, D), root / "adapter"
    adapter.mkdir()
    generator = torch.Generator().manual_seed(1)
    lora = {}
    for i in range(LAYERS):
        for m in MODULES:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{m}"
            lora[f"{prefix}.lora_A.weight"] = torch.randn(RANK, D, generator=generator) / D**0.5
            lora[f"{prefix}.lora_B.weight"] = torch.randn(D, RANK, generator=generator) * 0.01
    save_file(lora, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": RANK, "lora_alpha": 32,
                                                             "target_modules": list(MODULES), "base_model_name_or_path": str(base)}))
    return base, adapter


CHILD = """
import json, sys, time
from tlora_analysis.checkpoints import inspect_checkpoint
start = time.perf_counter()
table = inspect_checkpoint(sys.argv[1], base=sys.argv[2])
elapsed = time.perf_counter() - start
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024
print(json.dumps({"seconds": elapsed, "peak": peak, "layers": len(table), "intruders": int(table.intruders.sum())}))
"""


def run(adapter: Path, base: Path, cache: Path) -> dict:
    env = {**os.environ, "TLORA_ANALYSIS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, str(adapter), str(base)], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> str:
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        base, adapter = write(root)
        on_disk = sum(p.stat().st_size for p in base.glob("*.safetensors"))
        first = run(adapter, base, root / "cache")
        started = time.perf_counter()
        second = run(adapter, base, root / "cache")
        print(f"  second run {time.perf_counter() - started:.1f}s wall", file=sys.stderr)
        cache_size = sum(p.stat().st_size for p in (root / "cache").rglob("*.safetensors"))
    n = first["layers"]
    return table(
        ["what", "first run (computes W0's SVDs)", "second run (cache)"],
        [
            ["updates inspected", f"{n} ({LAYERS} layers x q, v; 4096 x 4096, r = {RANK})", f"{second['layers']}"],
            ["inspect time, amplification + intruders", f"{first['seconds']:.1f} s ({first['seconds'] / n:.1f} s per update)",
             f"{second['seconds']:.1f} s ({second['seconds'] / n:.1f} s per update)"],
            ["peak resident memory of the process, torch included", f"**{megabytes(first['peak'])}**", f"**{megabytes(second['peak'])}**"],
            ["base on disk / W0 SVD cache on disk", megabytes(on_disk), megabytes(cache_size)],
        ],
    )


if __name__ == "__main__":
    print(f"Machine: {machine()}")
    print(main())
