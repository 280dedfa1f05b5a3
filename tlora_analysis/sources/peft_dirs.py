"""peft adapters: a ``save_pretrained`` folder, its ``adapter_name`` subfolders, and a state dict saved as one file.

Every peft type reads through :func:`~tlora_analysis.peft_types.read_state`: factored from the file
where its type allows, through peft on the base model otherwise.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import inside, read_json, refuse_pickled_files
from ..peft_types import method_of_config, read_state
from ..peft_types.context import ReadContext
from ..tensors import check_values, read_tensors
from .formats import Sniff, SourceFormat, register_format
from .states import ReadingState

__all__ = ["PeftAdapter", "open_peft", "peft_state", "peft_context", "read_peft_folder", "CONFIG", "WEIGHTS"]

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def peft_context(config: dict, where: str, base: str | None) -> ReadContext:
    """Where a peft adapter's base comes from: ``base`` if given, else its config's base_model_name_or_path if local."""
    named = config.get("base_model_name_or_path")
    return ReadContext(where, base, named if isinstance(named, str) else None)


def peft_state(config: dict, tensors: dict, context: ReadContext):
    """(method, reading) of one peft adapter state, its tensors checked first (floating ones finite and bounded)."""
    for key, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            check_values(tensor, f"{context.where}: tensor {key}")
    return method_of_config(config), read_state(config, tensors, context)


class PeftAdapter(ReadingState):
    """A peft adapter (any type with a ΔW) as a one-state source.

    ``base`` (a model name or folder) is the base model where reading needs one: DoRA's magnitude,
    PiSSA's initial factors, VeRA's layer shapes, every type computed through peft. Without it the base
    named in adapter_config.json is used if it is the embedded default or a local folder (a name read
    from a file is never fetched).
    """

    def __init__(self, path: str | Path, config: dict, tensors: dict, base: str | None = None, where: str | None = None,
                 context: ReadContext | None = None) -> None:
        self.config = config
        method, reading = peft_state(config, tensors, context or peft_context(config, where or str(Path(path) / CONFIG), base))
        rank = config.get("r") if isinstance(config.get("r"), int) and not isinstance(config.get("r"), bool) else 0
        super().__init__(path, method, reading, {"peft_config": config, "model": config.get("base_model_name_or_path")}, rank)


def read_peft_folder(path: Path) -> tuple[dict, dict]:
    """(config, tensors) of a peft ``save_pretrained`` folder."""
    config = read_json(inside(path, path / CONFIG, CONFIG), CONFIG)
    weights = path / WEIGHTS
    if not weights.exists():
        refuse_pickled_files(path)
        raise InputError(f"{weights}: missing; a peft adapter folder holds {CONFIG} and {WEIGHTS}")
    return config, read_tensors(inside(path, weights, WEIGHTS))


def open_peft(path: Path, base: str | None = None, context: ReadContext | None = None) -> PeftAdapter:
    """A peft ``save_pretrained`` folder: adapter_config.json + adapter_model.safetensors."""
    config, tensors = read_peft_folder(path)
    adapter = PeftAdapter(path, config, tensors, base, context=context)
    others = _named_adapters(path)
    if others:  # save_pretrained with several adapters: "default" at the root, the others in subfolders
        adapter.notices.append(f"{path}: read the adapter at the folder's root; {len(others)} more in subfolders were not read "
                               f"({', '.join(p.name for p in others[:5])}): give one, e.g. {others[0]}")
    return adapter


def _named_adapters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and (p / CONFIG).is_file())


def _open_named(path: Path, base: str | None) -> PeftAdapter:
    """A folder that peft's ``save_pretrained`` wrote for adapters not named "default": one subfolder per adapter name."""
    adapters = _named_adapters(path)
    if len(adapters) > 1:
        raise InputError(f"{path}: holds {len(adapters)} peft adapters ({', '.join(p.name for p in adapters[:5])}); "
                         f"give one folder, e.g. {adapters[0]}")
    return open_peft(adapters[0], base)


def _open_state_dict(path: Path, base: str | None) -> PeftAdapter:
    """A peft state dict saved as one file: its adapter_config.json must sit beside it (it gives the type and scaling)."""
    config_path = path.parent / CONFIG
    if not config_path.is_file():
        raise InputError(f"{path}: a peft state dict (keys base_model.model.…) without an {CONFIG} beside it; the config gives "
                         "the adapter's type and scaling (lora_alpha), so put it in the same folder")
    return PeftAdapter(path, read_json(inside(path.parent, config_path, CONFIG), CONFIG), read_tensors(path), base, where=str(path))


def _is_peft_state_dict(sniff: Sniff) -> bool:
    return bool(sniff.keys) and all(k.startswith("base_model.") for k in sniff.keys)


register_format(SourceFormat("peft adapter folder", "adapter_config.json + adapter_model.safetensors (save_pretrained)", "folder",
                                lambda s: CONFIG in s.names, lambda p, base: open_peft(p, base), base="some", order=30))
register_format(SourceFormat("peft adapters saved by name", "one subfolder per adapter_name, each a peft adapter folder", "folder",
                                lambda s: CONFIG not in s.names and bool(_named_adapters(s.path)), _open_named, base="some"))
register_format(SourceFormat("peft state dict file", "a .safetensors of peft keys (base_model.model.…) beside its adapter_config.json",
                                "file", _is_peft_state_dict, _open_state_dict, base="some", order=30))

