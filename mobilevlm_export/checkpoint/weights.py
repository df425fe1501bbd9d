"""Reading checkpoint weights: ``*.safetensors`` or ``pytorch_model*.bin``, single or sharded with an index."""

from __future__ import annotations

import json
from pathlib import Path

from mobilevlm_export.errors import UserError

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, in a stable order. ``UserError`` when there are none."""
    for name in INDEX_FILES:
        index = directory / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise UserError(f"{index}: not a valid shard index ({type(exc).__name__}: {exc})") from None
            files = sorted({directory / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise UserError(f"{index}: shard {f.name} is missing")
            return files
    found = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not found:
        raise UserError(f"{directory}: no weights (*.safetensors or pytorch_model*.bin)")
    return found


def read_state_dict(files: list[Path]) -> dict:
    """All tensors of ``files`` by name. Corrupt or truncated files are a ``UserError`` naming the file."""
    import torch

    state: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            part = _read_safetensors(f)
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                try:
                    part = torch.load(f, map_location="cpu", weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
                    raise UserError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None
            if not isinstance(part, dict):
                raise UserError(f"{f}: expected a state_dict, got {type(part).__name__}")
        dup = state.keys() & part.keys()
        if dup:
            raise UserError(f"{f}: tensor '{sorted(dup)[0]}' also appears in another weight file")
        state.update(part)
    return state


def _read_safetensors(f: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
