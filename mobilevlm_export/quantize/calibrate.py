"""Calibration: statistics of a float graph's activation tensors over a set of feeds, run with ONNX Runtime
(what w8a8's activation scales, AWQ's search and SmoothQuant's migration read).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from mobilevlm_export.backends.onnx import ort_session
from mobilevlm_export.quantize.graph import QdqError
from mobilevlm_export.quantize.select import find_weight_matmuls


@dataclass(frozen=True)
class Calibration:
    """Statistics of activation tensors over a set of feeds.

    ``amax``: max |x| per tensor; ``channel_mean``: mean |x| per channel of the last axis, shape ``[K]``;
    ``samples``: up to ``max_rows`` rows of each tensor flattened to ``[rows, K]`` (fp32), for ``awq_search``;
    ``channel_amax``: max |x| per channel of the last axis, ``[K]`` (for ``smoothquant_scales``)."""

    amax: dict[str, float]
    channel_mean: dict[str, np.ndarray]
    samples: dict[str, np.ndarray] = field(repr=False)
    channel_amax: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


def calibrate(model: onnx.ModelProto | Path, feeds: Iterable[Mapping[str, np.ndarray]],
              tensors: Sequence[str] | None = None, *, max_rows: int = 512, threads: int | None = None,
              logits: str = "logits") -> Calibration:
    """Run ``model`` (fp32/fp16, not quantized) with ONNX Runtime on each of ``feeds`` and collect statistics of
    ``tensors`` (default: input 0 of every weight MatMul, lm_head included), which are made graph outputs of a
    temporary copy. ``max_rows`` rows per tensor are kept (evenly strided over each run) for ``awq_search``.
    ``model``: a graph in memory (over 2 GB it runs from a temporary file with external data), or the path of an
    ``.onnx`` file: then only its graph is read here and ONNX Runtime reads the weights from the file, so a
    full-size decoder is not held twice."""
    if isinstance(model, str | Path):
        path = Path(model)
        tmp = onnx.load(str(path), load_external_data=False)  # weights stay in the file, where ORT reads them
    else:
        path, tmp = None, copy.deepcopy(model)
    found = find_weight_matmuls(tmp, logits)
    if tensors is None:
        tensors = list(dict.fromkeys(c.activation for c in found))
    have = {o.name for o in tmp.graph.output}
    known = {v.name: v for v in (*tmp.graph.value_info, *tmp.graph.input)}
    dtype = next((c.dtype for c in found), "float32")
    for name in tensors:
        if name not in have:
            v = known.get(name) or helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(
                np.dtype(dtype)), None)
            tmp.graph.output.append(v)
    if path is None:
        session = ort_session(tmp, threads, calibration=True)
    else:  # beside the original, so its external-data references resolve
        probe = path.with_name(f".calibrate-{os.getpid()}-{path.name}")
        try:
            onnx.save_model(tmp, str(probe))
            session = ort_session(probe, threads, calibration=True)
        finally:
            probe.unlink(missing_ok=True)
    del tmp
    inputs = {i.name for i in session.get_inputs()}
    amax: dict[str, float] = {t: 0.0 for t in tensors}
    channel_amax: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = dict.fromkeys(tensors, 0)
    rows: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    feeds = list(feeds)
    if not feeds:
        raise QdqError("calibrate needs at least one feed")
    per_run = max(1, max_rows // len(feeds))
    for feed in feeds:
        values = session.run(list(tensors), {k: v for k, v in feed.items() if k in inputs})
        for name, x in zip(tensors, values, strict=True):
            x = x.astype(np.float32).reshape(-1, x.shape[-1] if x.ndim else 1)
            a = np.abs(x)
            amax[name] = max(amax[name], float(a.max(initial=0.0)))
            peak = a.max(axis=0) if a.shape[0] else np.zeros(a.shape[1], np.float32)
            channel_amax[name] = np.maximum(channel_amax[name], peak) if name in channel_amax else peak
            sums[name] = sums.get(name, 0) + a.sum(axis=0)
            counts[name] += x.shape[0]
            rows[name].append(x[:: max(1, math.ceil(x.shape[0] / per_run))])
    return Calibration(amax, {t: (sums[t] / max(counts[t], 1)).astype(np.float32) for t in tensors},
                       {t: np.concatenate(rows[t])[:max_rows] for t in tensors},
                       {t: channel_amax[t].astype(np.float32) for t in tensors})
