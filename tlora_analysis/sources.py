"""Open anything that holds low-rank updates as one kind of source for the analyses.

- a run directory (``run.json`` + snapshots) -> :class:`~tlora_analysis.store.Run`
- one snapshot file ``RUN/snapshots/epoch_NNN.safetensors`` -> that run, limited to that epoch
- a Hugging Face PEFT LoRA adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``)
  -> :class:`PeftAdapter`, a one-epoch source

Only JSON and safetensors are read. Pickle-based files (``.bin``, ``.pt``, ``.pth``, ``.pkl``)
are refused without being opened, because unpickling runs code from the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from .errors import InputError, require
from .factored import FactoredDelta
from .store import MAX_DIM, Run, check_values, inside, read_json, read_tensors, snapshot_name

__all__ = ["open_updates", "SingleState", "PeftAdapter", "PeftVeraAdapter", "open_peft", "SUPPORTED_PEFT_TYPES", "refuse_pickle", "refuse_pickled_files"]

SUPPORTED_PEFT_TYPES = ("LORA", "VERA")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[^.]+)?\.weight$")


def refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"{path}: refusing to read a pickle-based file ({path.suffix}); unpickling executes code stored in the file. "
            "Convert it once in a trusted environment to safetensors, e.g. "
            "safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter_model.safetensors')"
        )


def refuse_pickled_files(folder: Path, only_if_no: str | None = None) -> None:
    """If a folder holds a pickle-based file, say so (a better error than 'no safetensors found').

    With ``only_if_no=".safetensors"``, pickles beside a safetensors file are left alone:
    the loader reads the safetensors and never opens them.
    """
    files = list(folder.iterdir())
    if only_if_no and any(p.suffix == only_if_no for p in files):
        return
    pickled = sorted(p for p in files if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickled:
        refuse_pickle(pickled[0])


class _SingleEpochRun:
    """A run limited to one of its epochs (what a single snapshot file stands for)."""

    def __init__(self, run: Run, epoch: int) -> None:
        run.record(epoch)  # raises if the epoch is not finished
        self._run, self._epoch = run, epoch
        self.name, self.method, self.meta, self.path = run.name, run.method, run.meta, run.path

    @property
    def epochs(self) -> list[int]:
        return [self._epoch]

    @property
    def metrics(self) -> dict:
        return {self._epoch: self._run.metrics[self._epoch]}

    @property
    def rank(self) -> int:
        return self._run.rank

    def __getattr__(self, attribute):  # deltas, scales, trainable, layers ... of the underlying run
        return getattr(self._run, attribute)


PATTERN_TIMEOUT_S = 0.05
"""How long one rank_pattern/alpha_pattern key may take to match one module name."""


def _pattern_value(patterns: dict, module: str, default, where: str):
    """peft's rank_pattern/alpha_pattern lookup: a key matches a module name ending with it.

    The keys come from a file, so they are matched as plain suffixes first and as regular
    expressions only with a time limit (the ``regex`` package's ``timeout``): a
    catastrophically backtracking key such as ``(a+)+`` cannot hang the process.
    """
    import regex

    for key, value in patterns.items():
        if module == key or module.endswith("." + key):
            return value
    for key, value in patterns.items():
        try:
            if regex.match(rf"(.*\.)?({key})$", module, timeout=PATTERN_TIMEOUT_S):
                return value
        except regex.error as err:
            raise InputError(f"{where}: pattern key {key!r:.80} is not a valid regular expression ({err})") from err
        except TimeoutError as err:
            raise InputError(f"{where}: pattern key {key!r:.80} took over {PATTERN_TIMEOUT_S} s to match {module!r}; "
                             "it backtracks catastrophically") from err
    return default


def _check_number(value, where: str, name: str, low: float, high: float, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not (low <= value <= high):
        kind = "a whole number" if integer else "a finite number"
        raise InputError(f"{where}: {name} should be {kind} from {low:g} to {high:g}, got {value!r:.80}")
    return value


class SingleState:
    """A source that holds one state, not a training history: it reports it as epoch 0."""

    path: Path

    @property
    def epochs(self) -> list[int]:
        return [0]

    @property
    def metrics(self) -> dict:
        return {0: {}}

    def _check(self, epoch: int) -> None:
        if epoch != 0:
            raise InputError(f"{self.path}: holds one state (epoch 0), not epoch {epoch}")

    def scales(self, epoch: int = 0) -> dict[str, float]:
        self._check(epoch)
        return {}

    def trainable(self, epoch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return {}


def _adapter_tensors(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A PEFT adapter directory's ``adapter_model.safetensors``: its path and tensors."""
    weights = folder / "adapter_model.safetensors"
    if not weights.exists():
        refuse_pickled_files(folder)
        raise InputError(f"{weights}: missing; a PEFT adapter directory holds adapter_config.json and adapter_model.safetensors")
    return weights, read_tensors(inside(folder, weights, "adapter_model.safetensors"))


class PeftAdapter(SingleState):
    """A PEFT LoRA adapter directory as a one-epoch source (epoch 0 = the saved state).

    Scaling per module follows peft: ``lora_alpha / r`` (or ``/ √r`` with ``use_rslora``),
    with ``rank_pattern`` and ``alpha_pattern`` overrides. ``fan_in_fan_out`` adapters
    (GPT-2's Conv1D) still yield ΔW in ``nn.Linear`` orientation (d_out x d_in).
    """

    method = "lora"

    def __init__(self, path: str | Path, config: dict) -> None:
        self.path, self.config = Path(path), config
        where = str(self.path / "adapter_config.json")
        if self.config.get("use_dora"):
            raise InputError(f"{where}: DoRA adapters (use_dora: true) are not supported; supported: plain LoRA")
        self.default_rank = _check_number(require(self.config, "r", where), where, "'r'", 1, MAX_DIM, integer=True)
        self.lora_alpha = _check_number(require(self.config, "lora_alpha", where), where, "'lora_alpha'", -1e12, 1e12)
        for field in ("rank_pattern", "alpha_pattern"):
            if not isinstance(self.config.get(field) or {}, dict):
                raise InputError(f"{where}: {field!r} should map module-name patterns to values")
        self.use_rslora = bool(self.config.get("use_rslora", False))
        self.name = self.path.name
        self.meta = {"peft_config": self.config, "model": self.config.get("base_model_name_or_path")}
        weights, tensors = _adapter_tensors(self.path)
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = _LORA_KEY.match(key)
            if match:
                pairs.setdefault(match["module"], {})[match["which"]] = tensor
        if not pairs:
            raise InputError(f"{weights}: no lora_A/lora_B tensors found (keys look like {next(iter(tensors), 'nothing')!r})")
        self.layers: dict[str, dict] = {}
        self._tensors: dict[str, dict[str, torch.Tensor]] = {}
        for module, pair in pairs.items():
            if set(pair) != {"A", "B"}:
                raise InputError(f"{weights}: module {module!r} has lora_{next(iter(pair))} but not its partner")
            a, b = pair["A"], pair["B"]
            if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
                raise InputError(f"{weights}: module {module!r}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not chain")
            r = a.shape[0]
            expected_r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.default_rank, where)
            if r != expected_r:
                raise InputError(f"{weights}: module {module!r} has rank {r}, adapter_config.json says {expected_r}")
            for which, tensor in pair.items():
                check_values(tensor, f"{weights}: tensor lora_{which} of module {module}")
            alpha = _check_number(_pattern_value(self.config.get("alpha_pattern") or {}, module, self.lora_alpha, where),
                                  where, f"alpha_pattern value for {module}", -1e12, 1e12)
            scaling = alpha / (math.sqrt(r) if self.use_rslora else r)
            self.layers[module] = {"shape": [b.shape[0], a.shape[1]], "rank": r, "scaling": scaling, "lora_alpha": alpha}
            self._tensors[module] = {"A": a, "B": b}
        self.rank = self.default_rank

    def __repr__(self) -> str:
        return f"PeftAdapter({str(self.path)!r}, layers={len(self.layers)})"

    def deltas(self, epoch: int = 0) -> dict[str, FactoredDelta]:
        self._check(epoch)
        return {
            m: FactoredDelta(t["B"], torch.eye(self.layers[m]["rank"]) * self.layers[m]["scaling"], t["A"])
            for m, t in self._tensors.items()
        }

    def scales(self, epoch: int = 0) -> dict[str, float]:
        self._check(epoch)
        return {m: layer["scaling"] for m, layer in self.layers.items()}

    def trainable(self, epoch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return self._tensors


class PeftVeraAdapter(SingleState):
    """A PEFT VeRA adapter directory saved with its projections (``save_projection: true``).

    peft stores one shared pair, ``base_model.vera_A`` (r x max d_in) and ``base_model.vera_B``
    (max d_out x r), and per layer λ_b and λ_d; a layer's ΔW is
    (λ_b ⊙ B[:d_out]) · diag(λ_d) · A[:, :d_in]. An adapter file does not say a layer's d_in,
    so layers must all have the shape of the shared pair (as query/value layers do).
    """

    method = "vera"

    def __init__(self, path: str | Path, config: dict) -> None:
        self.path, self.name, self.config = Path(path), Path(path).name, config
        where = str(self.path / "adapter_config.json")
        self.rank = _check_number(require(config, "r", where), where, "'r'", 1, MAX_DIM, integer=True)
        if config.get("fan_in_fan_out"):
            raise InputError(f"{where}: VeRA adapters with fan_in_fan_out are not supported yet")
        self.meta = {"peft_config": config, "model": config.get("base_model_name_or_path")}
        weights, tensors = _adapter_tensors(self.path)
        if "base_model.vera_A" not in tensors or "base_model.vera_B" not in tensors:
            raise InputError(f"{weights}: no base_model.vera_A/vera_B; save the adapter with save_projection=True "
                             "(regenerating them from projection_prng_key depends on the torch build)")
        a, b = tensors["base_model.vera_A"], tensors["base_model.vera_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != self.rank or b.shape[1] != self.rank:
            raise InputError(f"{weights}: vera_A {tuple(a.shape)} and vera_B {tuple(b.shape)} do not have rank r = {self.rank}")
        lambdas: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = re.fullmatch(r"(?:base_model\.model\.)?(?P<module>.+)\.vera_lambda_(?P<which>[bd])(?:\.[^.]+)?", key)
            if match:
                lambdas.setdefault(match["module"], {})[match["which"]] = tensor
        if not lambdas:
            raise InputError(f"{weights}: no vera_lambda_b/vera_lambda_d tensors found")
        for tensor in (a, b, *(t for pair in lambdas.values() for t in pair.values())):
            check_values(tensor, f"{weights}")
        self.layers, self._tensors = {}, {}
        for module, pair in lambdas.items():
            if set(pair) != {"b", "d"} or pair["d"].shape != (self.rank,) or pair["b"].shape != (b.shape[0],):
                raise InputError(f"{weights}: module {module!r} needs vera_lambda_d of shape ({self.rank},) and vera_lambda_b of "
                                 f"shape ({b.shape[0]},) (layers of other shapes than the shared pair are not supported yet)")
            self.layers[module] = {"shape": [b.shape[0], a.shape[1]], "rank": self.rank}
            self._tensors[module] = {"lambda_d": pair["d"], "lambda_b": pair["b"]}
        self._a, self._b = a, b

    def deltas(self, epoch: int = 0) -> dict[str, FactoredDelta]:
        self._check(epoch)
        return {m: FactoredDelta(self._b * t["lambda_b"][:, None], torch.diag(t["lambda_d"]), self._a) for m, t in self._tensors.items()}

    def trainable(self, epoch: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        self._check(epoch)
        return self._tensors


def open_peft(path: Path):
    """A PEFT adapter directory, by its ``peft_type``: LoRA or VeRA."""
    config_path = inside(path, path / "adapter_config.json", "adapter_config.json")
    config = read_json(config_path, "adapter_config.json")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type == "VERA":
        return PeftVeraAdapter(path, config)
    if peft_type != "LORA":
        raise InputError(f"{config_path}: peft_type {peft_type!r} is not supported; supported adapter types: {', '.join(SUPPORTED_PEFT_TYPES)}")
    return PeftAdapter(path, config)


def open_updates(path: str | Path):
    """Open a run directory, a snapshot file or a PEFT adapter directory (see the module docstring).

    A snapshot file is read as the epoch its name gives of the run it sits in
    (``RUN/snapshots/epoch_NNN.safetensors``), and only that epoch: the source is the
    file named, not whatever else the run holds.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise InputError(f"{path}: expected a run directory, a PEFT adapter directory or a snapshot .safetensors file")
        match = re.fullmatch(r"epoch_(\d+)", path.stem)
        if not match or path.parent.name != "snapshots":
            raise InputError(f"{path}: a snapshot is read inside its run, as RUN/snapshots/epoch_NNN.safetensors beside RUN/run.json")
        run_dir = path.parent.parent
        if not (run_dir / "run.json").exists():
            raise InputError(f"{path}: a snapshot is read with its run's run.json (for scales and seeds), not found at {run_dir / 'run.json'}")
        epoch = int(match[1])
        if path.resolve() != (run_dir / snapshot_name(epoch)).resolve():
            raise InputError(f"{path}: epoch {epoch}'s snapshot is {run_dir / snapshot_name(epoch)}")
        return _SingleEpochRun(Run(run_dir), epoch)
    if not path.is_dir():
        raise InputError(f"{path}: neither a regular file nor a directory")
    if (path / "run.json").exists():
        return Run(path)
    if (path / "adapter_config.json").exists():
        return open_peft(path)
    if not any(path.iterdir()):
        raise InputError(f"{path}: empty directory; expected a run (run.json) or a PEFT adapter (adapter_config.json)")
    refuse_pickled_files(path)
    raise InputError(f"{path}: neither a run directory (no run.json) nor a PEFT adapter directory (no adapter_config.json)")
