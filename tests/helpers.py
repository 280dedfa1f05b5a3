"""Runs built from known random factors, for checking analyses against dense computations."""

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
