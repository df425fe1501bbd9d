"""Reading golden data (numpy + json only): what ``golden.py`` wrote beside the artifacts at build time.

``golden/golden.npz`` holds, per graph and case, ``{graph}/{case}/in/{name}`` and ``{graph}/{case}/out/{name}``,
and each end-to-end pair's pixel values as ``e2e/{i}/pixel_values``; ``golden/e2e.json`` lists (image, question,
prompt ids, reference greedy tokens).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError

GOLDEN_NPZ, E2E_JSON = "golden/golden.npz", "golden/e2e.json"


def _files(root: Path) -> tuple[Path, Path]:
    npz, e2e = Path(root) / GOLDEN_NPZ, Path(root) / E2E_JSON
    for f in (npz, e2e):
        if not f.is_file():
            raise UserError(f"{f}: missing golden data (rebuild to create it)")
    return npz, e2e


def load_golden(root: Path) -> tuple[dict[str, np.ndarray], list[dict]]:
    """The arrays and the end-to-end pairs of DIR (``UserError`` when missing)."""
    npz, e2e = _files(root)
    with np.load(npz, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(e2e.read_text())


def case_names(root: Path) -> tuple[set[tuple[str, str]], int]:
    """The (graph, case) pairs of DIR's golden data and its number of end-to-end pairs, without reading the
    arrays (an npz's names are its zip directory)."""
    npz, e2e = _files(root)
    with np.load(npz, allow_pickle=False) as data:
        names = {tuple(k.split("/")[:2]) for k in data.files if len(k.split("/")) == 4}
    return names, len(json.loads(e2e.read_text()))


def cases(arrays: dict[str, np.ndarray]) -> dict[tuple[str, str], tuple[dict, dict]]:
    """``{(graph, case): (inputs, reference outputs)}`` from the flat npz names."""
    out: dict[tuple[str, str], tuple[dict, dict]] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if len(parts) != 4:
            continue
        graph, case, kind, name = parts
        ins, outs = out.setdefault((graph, case), ({}, {}))
        (ins if kind == "in" else outs)[name] = value
    return out
