"""Reading checkpoint weights: ``*.safetensors`` or ``pytorch_model*.bin``, single or sharded with an index.

Safetensors tensors are read on demand (``StoredTensor``), one at a time with plain file reads: the loader casts
each into the model as it reads it, so a checkpoint is never resident twice (its stored fp16 copy beside the
fp32 model) and never memory-mapped whole (mapped pages count towards the process's RSS until unmapped).
"""

from __future__ import annotations

import json
import struct
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


# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec) -> torch dtype names
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


class StoredTensor:
    """One tensor of a safetensors file: its dtype and shape from the header, its bytes read only by ``to``."""

    def __init__(self, path: Path, name: str, dtype: str, shape: list[int], start: int, end: int) -> None:
        import torch

        self.path, self.name, self.start, self.end = path, name, start, end
        self.dtype = getattr(torch, dtype)
        self.shape = torch.Size(shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def to(self, dtype):
        """Read the tensor and return it as ``dtype`` (a fresh tensor; the bytes read are dropped after a cast)."""
        import torch

        buf = bytearray(self.end - self.start)
        with open(self.path, "rb") as f:
            f.seek(self.start)
            if f.readinto(buf) != len(buf):
                raise UserError(f"{self.path}: truncated safetensors file (tensor '{self.name}' is cut short)")
        if not buf:  # torch.frombuffer refuses an empty buffer
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=self.dtype).reshape(self.shape).to(dtype)


def _read_safetensors(f: Path) -> dict:
    """The header of a safetensors file as ``StoredTensor``s; ``UserError`` names the file when it is corrupt
    or shorter than its header says."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8 or (n := struct.unpack("<Q", raw)[0]) > size - 8:
                raise ValueError("header length past the end of the file")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
    base = 8 + n
    out = {}
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            start, end = info["data_offsets"]
            if not 0 <= start <= end or base + end > size:
                raise ValueError(f"tensor '{name}' lies past the end of the file")
            out[name] = StoredTensor(f, name, dtype, list(info["shape"]), base + start, base + end)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{f}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
    return out
