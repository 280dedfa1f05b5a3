"""A ``transformers.Trainer`` output directory as one trajectory: its ``checkpoint-N`` folders are the states.

Each checkpoint is read as what it holds: a peft adapter (any type), a model saved with this toolkit's
adapters, or a fully fine-tuned model against ``--base``. Its ``trainer_state.json`` gives the epoch,
the step and the logged metrics; its optimizer and RNG pickles are never opened. States are keyed by
epoch where every checkpoint sits at a whole epoch (``save_strategy="epoch"``), else by global step
(``meta["state_unit"]`` says which). Epoch 0, the state before training, is the zero update where the
adapter's init is known to start there (peft's identity inits, a full fine-tune), and is otherwise
left out with a notice.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from ..errors import InputError
from ..factored import FactoredDelta
from ..io import inside, read_json
from ..methods.spec import METHOD_SPECS
from ..peft_types import initial_update_is_zero
from .formats import Sniff, SourceFormat, register_format
from .peft_dirs import CONFIG, PeftAdapter, peft_context, read_peft_folder

__all__ = ["TrainerRun", "checkpoints_of"]

CHECKPOINT = re.compile(r"checkpoint-(\d+)")
STATE = "trainer_state.json"


def checkpoints_of(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders of an output directory, in step order."""
    found = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and CHECKPOINT.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT.fullmatch(p.name)[1]))


class TrainerRun:
    """The checkpoints of one Trainer run as the states of one source (see the module docstring)."""

    def __init__(self, path: str | Path, base: str | None = None) -> None:
        self.path, self.name, self._base = Path(path), Path(path).name, base
        self._trainer_states: dict[Path, dict] = {}
        folders = checkpoints_of(self.path)
        if not folders:
            raise InputError(f"{self.path}: a Trainer output directory without checkpoint-N folders; give the saved model or adapter "
                             "itself, or save checkpoints (save_strategy)")
        steps = [self._step(p) for p in folders]
        _refuse_shared_steps(folders, steps)
        epochs = [step[1] for step in steps]
        by_epoch = all(e is not None and abs(e - round(e)) < 1e-6 for e in epochs) and len({round(e) for e in epochs}) == len(epochs)
        keys = [round(e) for e in epochs] if by_epoch else [s for s, _ in steps]
        self._folders = dict(zip(keys, folders))
        self._steps = dict(zip(keys, steps))
        self._context = None
        last = self._state(keys[-1])
        self.method, self.layers, self.rank = last.method, last.layers, last.rank
        self.meta = {**last.meta, "state_unit": "epoch" if by_epoch else "step",
                     "trainer_state": {"global_steps": [s for s, _ in steps], "epochs": epochs}}
        self._zero_start = self._starts_at_zero(last)
        self.notices = list(last.notices)
        if not self._zero_start:
            self.notices.append(f"{self.path}: the state before training is not recorded and not known to be ΔW = 0 "
                                f"(a {self.method} update that starts elsewhere); the trajectory starts at its first checkpoint")
        if not by_epoch:
            self.notices.append(f"{self.path}: the checkpoints are not at whole epochs; states are keyed by global step")
        self.notices += self._ends_early(folders[-1], steps[-1][0])

    def __repr__(self) -> str:
        return f"TrainerRun({str(self.path)!r}, method={self.method!r}, states={self.epochs})"

    @property
    def epochs(self) -> list[int]:
        return ([0] if self._zero_start else []) + sorted(self._folders)

    @property
    def metrics(self) -> dict[int, dict[str, float]]:
        history = self._history()
        out = {0: {}} if self._zero_start else {}
        for key, (step, _) in self._steps.items():
            out[key] = {k: float(v) for entry in history if entry.get("step") == step
                        for k, v in entry.items() if k not in ("step", "epoch") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        return out

    def deltas(self, epoch: int) -> dict[str, FactoredDelta]:
        if epoch == 0 and self._zero_start and 0 not in self._folders:
            return {name: FactoredDelta.zeros(tuple(record["shape"])) for name, record in self.layers.items()}
        return self._checked(epoch).deltas()

    def scales(self, epoch: int) -> dict[str, float]:
        return {} if epoch == 0 and 0 not in self._folders else self._checked(epoch).scales()

    def trainable(self, epoch: int) -> dict:
        return {} if epoch == 0 and 0 not in self._folders else self._checked(epoch).trainable()

    def _checked(self, key: int):
        if key not in self._folders:
            raise InputError(f"{self.path}: no state {key} (states: {self.epochs})")
        state = self._state(key)
        if set(state.layers) != set(self.layers) or state.method != self.method:
            raise InputError(f"{self._folders[key]}: holds another adapter ({state.method}, {len(state.layers)} layers) than the last "
                             f"checkpoint ({self.method}, {len(self.layers)} layers)")
        return state

    @cache  # noqa: B019 - one source, a handful of checkpoints, each read once
    def _state(self, key: int):
        folder = self._folders[key]
        if (folder / CONFIG).is_file():  # one base model (and one peft engine) for every checkpoint
            config, tensors = read_peft_folder(folder)
            if self._context is None:
                self._context = peft_context(config, str(self.path), self._base)
            return PeftAdapter(folder, config, tensors, context=self._context)
        from .finetuned import open_model

        return open_model(folder, self._base)

    def _trainer_state(self, folder: Path) -> dict:
        """A checkpoint's trainer_state.json ({} where it has none), read once and only from inside the output directory."""
        if folder not in self._trainer_states:
            path = folder / STATE
            self._trainer_states[folder] = read_json(inside(self.path, path, STATE), STATE) if path.is_file() else {}
        return self._trainer_states[folder]

    def _step(self, folder: Path) -> tuple[int, float | None]:
        state = self._trainer_state(folder)
        step, epoch = state.get("global_step"), state.get("epoch")
        step = step if isinstance(step, int) and not isinstance(step, bool) else int(CHECKPOINT.fullmatch(folder.name)[1])
        return step, float(epoch) if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) else None

    def _ends_early(self, folder: Path, step: int) -> list[str]:
        """A notice where training went on past the last checkpoint kept (``load_best_model_at_end`` with
        ``save_total_limit`` deletes later ones): the trajectory then ends before training did."""
        state = self._trainer_state(folder)
        total = state.get("max_steps")
        if isinstance(total, int) and not isinstance(total, bool) and step < total:
            best = state.get("best_model_checkpoint")
            return [f"{self.path}: the last checkpoint kept is at step {step} of the {total} trained"
                    + (f" (best_model_checkpoint {Path(str(best)).name})" if best else "")
                    + "; the trajectory ends before training did"]
        return []

    def _history(self) -> list[dict]:
        history = self._trainer_state(self._folders[max(self._folders)]).get("log_history", [])
        return [entry for entry in history if isinstance(entry, dict)] if isinstance(history, list) else []

    @staticmethod
    def _starts_at_zero(state) -> bool:
        if isinstance(state, PeftAdapter):
            return initial_update_is_zero(state.config)
        spec = METHOD_SPECS.get(state.method)
        return spec is not None and spec.starts_at_zero


def _refuse_shared_steps(folders: list[Path], steps: list[tuple[int, float | None]]) -> None:
    """Two checkpoints at one global step (checkpoint-20 and checkpoint-0020) are one state twice: which to read would
    depend on directory order, so neither is chosen silently."""
    seen: dict[int, Path] = {}
    for folder, (step, _) in zip(folders, steps):
        if step in seen:
            raise InputError(f"{folder.parent}: {seen[step].name} and {folder.name} are both at global step {step}; "
                             "keep one of them (or give one checkpoint folder itself)")
        seen[step] = folder


def _is_trainer_output(sniff: Sniff) -> bool:
    return any(CHECKPOINT.fullmatch(name) for name in sniff.names)


register_format(SourceFormat("Trainer output directory", "checkpoint-N folders (peft adapters, models with these adapters, or full "
                                                         "fine-tunes against --base) as one trajectory, with trainer_state.json",
                             "folder", _is_trainer_output, TrainerRun, base="some", order=20))
