"""The head-only baseline as a linear probe: the encoder runs once per run, in eval mode, and the
head trains on the cached inputs it would receive.

A head-only run trains nothing below the head, so running the encoder every step only repeats
the same computation (with dropout noise). Caching turns a head-only study cell from minutes
into seconds. The probe applies where the head takes one vector per example and returns the
model's logits from it (BERT-family classifiers); that is checked on every cached batch, and
any other head trains through the whole model as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..adapters import CLASSIFIER_HEADS
from ..data import compute_metrics
from .batches import batches

__all__ = ["LinearProbe"]


class LinearProbe:
    """A classifier head and the inputs the frozen encoder gives it, for both splits."""

    def __init__(self, head: torch.nn.Module, task: str, train: tuple[torch.Tensor, torch.Tensor],
                 validation: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.head, self.task = head, task
        (self.train_inputs, self.train_labels), (self.eval_inputs, self.eval_labels) = train, validation

    @classmethod
    def build(cls, model, tokenizer, task: str, train_features: list[dict], eval_features: list[dict],
              batch_size: int, device: str) -> LinearProbe | None:
        """Encode both splits once in eval mode; None where the head is not a function of one
        cached vector per example (or the model's loss is not the probe's)."""
        head = next((getattr(model, name) for name in CLASSIFIER_HEADS if isinstance(getattr(model, name, None), torch.nn.Module)), None)
        if head is None:
            return None
        was_training = model.training
        model.eval()
        try:
            train, validation = (_head_inputs(model, head, tokenizer, f, batch_size, device) for f in (train_features, eval_features))
        finally:
            model.train(was_training)
        if train is None or validation is None:
            return None
        return cls(head, task, train, validation)

    def loss(self, indices: list[int]) -> torch.Tensor:
        """The mean loss of the head on these training examples (the model's own loss function)."""
        return _loss(self.head(self.train_inputs[indices]), self.train_labels[indices])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """What :func:`~.batches.evaluate` gives for the model, from the cached validation inputs."""
        was_training = self.head.training
        self.head.eval()
        logits = self.head(self.eval_inputs).float()
        self.head.train(was_training)
        predictions = logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)
        metrics = compute_metrics(self.task, predictions.cpu().numpy(), self.eval_labels.cpu().numpy())
        return {"eval_loss": float(_loss(logits, self.eval_labels)), **metrics}


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """transformers' sequence-classification loss: mean squared error for one output (regression),
    cross-entropy otherwise."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


@torch.no_grad()
def _head_inputs(model, head, tokenizer, features: list[dict], batch_size: int, device: str):
    """(inputs, labels) of one split, or None if a batch's head input is not one vector per
    example, or the head on it does not give the model's logits and loss."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach()))
    inputs, labels = [], []
    try:
        for batch, y in batches(tokenizer, features, batch_size, list(range(len(features))), device):
            captured.clear()
            out = model(**batch, labels=y)
            if len(captured) != 1 or captured[0].dim() != 2 or captured[0].shape[0] != len(y):
                return None
            logits = head(captured[0])
            if (logits.shape != out.logits.shape or not torch.allclose(logits, out.logits, rtol=1e-4, atol=1e-5)
                    or not torch.allclose(_loss(logits.float(), y), out.loss.float(), rtol=1e-4, atol=1e-6)):
                return None
            inputs.append(captured[0].float())
            labels.append(y)
    finally:
        hook.remove()
    return torch.cat(inputs), torch.cat(labels)
