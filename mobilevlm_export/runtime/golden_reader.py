"""Reading golden data (numpy + json only): what ``golden_writer.py`` wrote beside the artifacts at build time.

``golden/golden.npz`` holds, per graph and case, ``{graph}/{case}/in/{name}`` and ``{graph}/{case}/out/{name}``,
and each end-to-end pair's pixel values as ``e2e/{i}/pixel_values``; ``golden/e2e.json`` lists (image, question,
prompt ids, reference greedy tokens).
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.files import present, regular_file
from mobilevlm_export.manifest import E2E_JSON, GOLDEN_NPZ
from mobilevlm_export.schema import INT, STR, Each, Kind, check_spec, is_int

E2E_SPEC = Each({"image": STR, "question": STR, "prompt_ids": Each(INT),
                 "reference_ids": Kind(lambda v: isinstance(v, list) and all(map(is_int, v)), "a list of integers")})
# what np.load and reading an npz member raise on a file that is not a readable npz archive
_NPZ_ERRORS = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _files(root: Path) -> tuple[Path, Path]:
    npz, e2e = Path(root) / GOLDEN_NPZ, Path(root) / E2E_JSON
    for f in (npz, e2e):
        if not present(f):
            raise UserError(f"{f}: missing golden data (rebuild to create it)")
        regular_file(f)  # a FIFO or device is refused, never read
    return npz, e2e


def load_golden(root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The arrays and the end-to-end pairs of DIR. ``UserError`` naming the file when either is missing, not
    readable (an npz archive of plain arrays; JSON pairs of ``E2E_SPEC``), or a pair's pixel values are absent."""
    npz, e2e = _files(root)
    arrays = _read_npz(npz, lambda data: {k: data[k] for k in data.files})
    pairs = _read_pairs(e2e)
    missing = [f"e2e/{i}/pixel_values" for i in range(len(pairs)) if f"e2e/{i}/pixel_values" not in arrays]
    if missing:
        raise UserError(f"{npz}: has no {missing[0]} (the pixel values of {e2e}'s pair {missing[0].split('/')[1]})")
    return arrays, pairs


def case_names(root: Path) -> tuple[set[tuple[str, str]], int]:
    """The (graph, case) pairs of DIR's golden data and its number of end-to-end pairs, without reading the
    arrays (an npz's names are its zip directory). ``UserError`` as ``load_golden``'s."""
    npz, e2e = _files(root)
    names = _read_npz(npz, lambda data: {parts[:2] for parts in map(case_key, data.files) if parts})
    return names, len(_read_pairs(e2e))


def case_key(key: str) -> tuple[str, str, str, str] | None:
    """``(graph, case, "in" | "out", name)`` of a graph case's array name, ``{graph}/{case}/{kind}/{name}``; None
    for the other names (``e2e/{i}/pixel_values``)."""
    parts = key.split("/")
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def _read_npz(npz: Path, read: Callable):
    """``read(archive)`` of the npz file ``npz``; ``UserError`` naming it when it is not a readable archive."""
    try:
        data = np.load(npz, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("an .npy array, not an .npz archive")
        with data:
            return read(data)
    except _NPZ_ERRORS as exc:
        raise UserError(f"{npz}: not a readable golden archive ({type(exc).__name__}: {exc}); rebuild to recreate "
                        "it") from None


def _read_pairs(e2e: Path) -> list[dict]:
    """The end-to-end pairs of ``e2e``; ``UserError`` naming it and the key unless they fit ``E2E_SPEC``."""
    try:
        pairs = json.loads(e2e.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{e2e}: not valid JSON ({exc})") from None
    check_spec(pairs, E2E_SPEC, str(e2e))
    return pairs


def cases(arrays: dict[str, np.ndarray]) -> dict[tuple[str, str], tuple[dict, dict]]:
    """``{(graph, case): (inputs, reference outputs)}`` from the flat npz names."""
    out: dict[tuple[str, str], tuple[dict, dict]] = {}
    for key, value in arrays.items():
        parts = case_key(key)
        if parts is None:
            continue
        graph, case, kind, name = parts
        ins, outs = out.setdefault((graph, case), ({}, {}))
        (ins if kind == "in" else outs)[name] = value
    return out
