"""12. inspect of 7B-shaped LoHa, DoRA and IA³ adapters against a sharded base, in bounded memory, beside peft's merge.

A LLaMA-2-7B-shaped base (config.json of the default LlamaConfig: 4096 wide, 32 layers) whose
shards hold q_proj and v_proj (4096 x 4096, random) of the first LAYERS layers, and three peft
adapters on those layers, with random factors:

- LoHa (r = 16): factored from the file (rank ≤ r² = 256); without a base nothing dense is formed;
- DoRA (r = 16): dense, each layer's ΔW from its W0 read out of the shards;
- IA³: dense through peft itself, built on a meta-device skeleton of the 7B model, W0 read per layer.

Each ``inspect`` runs in a fresh process (peak resident memory from ``VmHWM``), with an empty W0-SVD
cache. Beside it, what peft does for the same update: its LoHa layer's merge of one 4096 x 4096
layer plus the dense ``svdvals`` an analysis then needs, timed on one layer. The full 7B base would
need 13.5 GB (bfloat16) just to load whole for ``merge_and_unload``.
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

LAYERS = int(os.environ.get("BENCH_PEFT_BIG_BASE_LAYERS", "2"))
RANK, D = 16, 4096
MODULES = ("q_proj", "v_proj")


def names() -> list[str]:
    return [f"model.layers.{i}.self_attn.{m}" for i in range(LAYERS) for m in MODULES]


def write_adapter(root: Path, base: Path, kind: str) -> Path:
    generator = torch.Generator().manual_seed(1)
    tensors, config = {}, {"base_model_name_or_path": str(base), "task_type": "CAUSAL_LM", "target_modules": names()}
    for name in names():
        prefix = f"base_model.model.{name}"
        if kind == "loha":
            for part in ("1", "2"):
                tensors[f"{prefix}.hada_w{part}_a"] = torch.randn(D, RANK, generator=generator) / RANK**0.5
                tensors[f"{prefix}.hada_w{part}_b"] = torch.randn(RANK, D, generator=generator) / D**0.5
        elif kind == "dora":
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(RANK, D, generator=generator) / D**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(D, RANK, generator=generator) * 0.01
            tensors[f"{prefix}.lora_magnitude_vector"] = 1 + 0.01 * torch.randn(D, generator=generator)
        else:
            tensors[f"{prefix}.ia3_l"] = 1 + 0.05 * torch.randn(D, 1, generator=generator)
    config.update({"loha": {"peft_type": "LOHA", "r": RANK, "alpha": RANK},
                   "dora": {"peft_type": "LORA", "r": RANK, "lora_alpha": RANK, "use_dora": True},
                   "ia3": {"peft_type": "IA3", "feedforward_modules": []}}[kind])
    folder = root / kind
    folder.mkdir()
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


CHILD = """
import json, sys, time
from tlora_analysis.checkpoints import inspect_checkpoint
start = time.perf_counter()
table = inspect_checkpoint(sys.argv[1], base=sys.argv[2] if len(sys.argv) > 2 else None)
elapsed = time.perf_counter() - start
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024
print(json.dumps({"seconds": elapsed, "peak": peak, "layers": len(table), "frobenius": float(table.frobenius.sum())}))
"""

PEFT_LAYER = """
import json, time, torch
from peft import LoHaConfig
from peft.tuners.loha.layer import Linear
torch.manual_seed(0)
layer = Linear(torch.nn.Linear(4096, 4096, bias=False), "default", config=LoHaConfig(r=16, alpha=16, init_weights=False), r=16, alpha=16)
start = time.perf_counter()
layer.merge()
merged = time.perf_counter()
torch.linalg.svdvals(layer.get_base_layer().weight.detach().double())
done = time.perf_counter()
peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) * 1024
print(json.dumps({"merge": merged - start, "svd": done - merged, "peak": peak}))
"""


def child(code: str, *args: str, cache: Path) -> dict:
    env = {**os.environ, "TLORA_ANALYSIS_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> str:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        base = write_sharded_base(root / "base", LAYERS, MODULES, D)
        adapters = {kind: write_adapter(root, base, kind) for kind in ("loha", "dora", "ia3")}
        runs = [("LoHa, no base (factored)", adapters["loha"], None), ("LoHa, --base: + amplification, intruders", adapters["loha"], base),
                ("DoRA, --base (dense from W0 per layer)", adapters["dora"], base),
                ("IA³, --base (peft on a 7B skeleton, W0 per layer)", adapters["ia3"], base)]
        for index, (what, adapter, with_base) in enumerate(runs):
            started = time.perf_counter()
            result = child(CHILD, str(adapter), *([str(with_base)] if with_base else []), cache=root / f"cache{index}")
            print(f"  {what}: {time.perf_counter() - started:.1f}s wall, {json.dumps(result)}", file=sys.stderr, flush=True)
            rows.append([what, f"{result['layers']}", f"{result['seconds']:.2f} s ({result['seconds'] / result['layers']:.2f} s per layer)",
                         f"**{megabytes(result['peak'])}**"])
        peft_layer = child(PEFT_LAYER, cache=root / "cache-peft")
        rows.append(["peft: LoHa layer.merge() of one layer, then the dense svdvals an analysis needs", "1",
                     f"{peft_layer['merge']:.2f} s merge + {peft_layer['svd']:.2f} s SVD per layer", megabytes(peft_layer["peak"])])
    return table(["what", "layers", "time", "peak resident memory (process, torch included)"], rows)


if __name__ == "__main__":
    print(f"Machine: {machine()}; {LAYERS} layers x q, v of a 4096-wide base")
    print(main())
