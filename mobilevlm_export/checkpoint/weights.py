"""Reading checkpoint weights: ``*.safetensors`` or ``pytorch_model*.bin``, single or sharded with an index.

Safetensors tensors are read on demand (``StoredTensor``), one at a time with plain file reads: the loader casts
each into the model as it reads it, so a checkpoint is never resident twice (its stored fp16 copy beside the
fp32 model) and never memory-mapped whole (mapped pages count towards the process's RSS until unmapped).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import open_regular, present, regular_file
from mobilevlm_export.schema import read_json

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint directory, in a stable order: the shards its index names, else every
    ``*.safetensors`` (or ``pytorch_model*.bin``). ``UserError`` when there are none or the index is bad."""
    for name in INDEX_FILES:
        if present(directory / name):  # (a FIFO or device there is refused by read_json, not skipped)
            return _index_shards(directory / name)
    found = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("pytorch_model*.bin"))
    if not found:
        raise UserError(f"{directory}: no weights (*.safetensors or pytorch_model*.bin)")
    return [regular_file(f) for f in found]  # a FIFO would hang the reader: refused before any is read


def _index_shards(index: Path) -> list[Path]:
    """The shard files of a shard index, whose ``weight_map`` must map tensor names to files that exist in the
    index's directory; ``UserError`` names the index and key at fault."""
    data = read_json(index)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index}: key 'weight_map' must be a non-empty mapping of tensor names to shard files, "
                        f"got {type(weight_map).__name__}")
    files = set()
    for tensor, name in weight_map.items():
        if not _names_a_path_inside(index.parent, name):
            raise UserError(f"{index}: key 'weight_map.{tensor}' is {name!r}; must name a file in {index.parent}")
        if not present(index.parent / name):
            raise UserError(f"{index}: key 'weight_map.{tensor}' names shard {name}, which is missing")
        files.add(regular_file(index.parent / name))
    return sorted(files)


def _names_a_path_inside(directory: Path, name) -> bool:
    """Whether ``name`` is a non-empty relative path that stays inside ``directory``."""
    if not isinstance(name, str) or not name:
        return False
    try:
        return (directory / name).resolve().is_relative_to(directory.resolve())
    except (OSError, ValueError):  # ValueError: a NUL byte in the name
        return False


def read_state_dict(files: list[Path], origin: dict[str, Path] | None = None) -> dict:
    """All tensors of ``files`` by name; ``origin``, when given, receives each tensor's file. Corrupt or truncated
    files, and pickles holding other than named tensors, are a ``UserError`` naming the file."""
    import torch

    state: dict = {}
    for f in files:
        if f.suffix == ".safetensors":
            part = _read_safetensors(f)
        else:
            regular_file(f)  # (torch.load would block on a FIFO)
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
            odd = next((k for k, v in part.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
            if odd is not None:
                raise UserError(f"{f}: entry {odd!r} is a {type(part[odd]).__name__}, not a named tensor")
        dup = state.keys() & part.keys()
        if dup:
            raise UserError(f"{f}: tensor '{sorted(dup)[0]}' also appears in another weight file")
        state.update(part)
        if origin is not None:
            origin.update(dict.fromkeys(part, f))
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
        with open_regular(self.path) as f:
            f.seek(self.start)
            if f.readinto(buf) != len(buf):
                raise UserError(f"{self.path}: truncated safetensors file (tensor '{self.name}' is cut short)")
        if not buf:  # torch.frombuffer refuses an empty buffer
            return torch.empty(self.shape, dtype=dtype)
        return torch.frombuffer(buf, dtype=self.dtype).reshape(self.shape).to(dtype)


# the reference reader's limit on the JSON header (safetensors' MAX_HEADER_SIZE): a larger one is refused unread
MAX_HEADER_BYTES = 100_000_000


def _read_safetensors(f: Path) -> dict:
    """The header of a safetensors file as ``StoredTensor``s, checked as the reference reader (huggingface/
    safetensors, ``SafeTensors::read_metadata``) checks it: a JSON object of at most ``MAX_HEADER_BYTES``; every
    tensor's ``data_offsets`` consistent with its dtype x shape; the tensors, sorted by offset, tiling the data
    section from its start to the end of the file with no overlap and no gap. ``UserError`` names the file (and the
    tensor) when it is corrupt, truncated or overlapping; a FIFO or device is refused unread."""
    try:
        with open_regular(f) as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(8)
            if len(raw) < 8 or (n := struct.unpack("<Q", raw)[0]) > size - 8:
                raise ValueError("header length past the end of the file")
            if n > MAX_HEADER_BYTES:
                raise ValueError(f"a header of {n} bytes, over the format's limit of {MAX_HEADER_BYTES}")
            header = json.loads(fh.read(n))
            if not isinstance(header, dict):
                raise ValueError("the header is not a JSON object")
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: also JSONDecodeError, UnicodeDecodeError
        raise UserError(f"{f}: corrupt or truncated safetensors file ({exc})") from None
    base = 8 + n
    try:
        tensors = {name: _stored_tensor(f, name, info, base, size) for name, info in header.items()
                   if name != "__metadata__"}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{f}: corrupt or truncated safetensors file ({type(exc).__name__}: {exc})") from None
    _check_layout(f, tensors, base, size)
    return tensors


def _check_layout(f: Path, tensors: dict[str, StoredTensor], base: int, size: int) -> None:
    """The tensors' byte ranges, in offset order, follow one another from the data section's start (``base``) to
    the end of the file (``size``), as the reference reader requires (its ``validate``: each start equal to the
    previous end; then the last end equal to the buffer's length). ``UserError`` names the file and the tensor."""
    end, prev = base, None
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start < end:
            raise UserError(f"{f}: tensor '{t.name}' (bytes {t.start - base}..{t.end - base} of the data) overlaps "
                            f"tensor '{prev}' (ending at {end - base}); a safetensors file's byte ranges may not "
                            "overlap")
        if t.start > end:
            raise UserError(f"{f}: tensor '{t.name}' starts at byte {t.start - base} of the data, leaving a gap after "
                            + (f"tensor '{prev}' (ending at {end - base})" if prev else "the header")
                            + "; a safetensors file's tensors must follow one another")
        end, prev = t.end, t.name
    if end != size:
        raise UserError(f"{f}: {size - end} bytes after the last tensor"
                        + (f" ('{prev}')" if prev else "") + "; a safetensors file ends with its last tensor's data")


def _stored_tensor(f: Path, name: str, info, base: int, size: int) -> StoredTensor:
    """One header entry (its data at ``base`` + offsets of a ``size``-byte file). ``KeyError``, ``TypeError`` or
    ``ValueError`` when it is malformed: an unknown dtype, a shape that is not a list of sizes, data offsets
    outside the file or spanning other than the shape's bytes."""
    import torch

    if not isinstance(info, dict):
        raise TypeError(f"tensor '{name}': its entry is not an object")
    dtype = SAFETENSORS_DTYPES[info["dtype"]]
    offsets, shape = info["data_offsets"], info["shape"]
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise ValueError(f"tensor '{name}': data_offsets must be [start, end]")
    start, end = offsets
    if not isinstance(shape, list) or not all(_is_size(d) for d in [*shape, start, end]):
        raise ValueError(f"tensor '{name}': shape and data_offsets must be lists of sizes")
    if not start <= end or base + end > size:
        raise ValueError(f"tensor '{name}' lies past the end of the file")
    if end - start != math.prod(shape) * getattr(torch, dtype).itemsize:
        raise ValueError(f"tensor '{name}' has {end - start} bytes, not those of shape {shape} in {dtype}")
    return StoredTensor(f, name, dtype, shape, base + start, base + end)


def _is_size(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
