"""Per-input-channel pre-scales applied before quantizing weights: AWQ's searched scales (int4) and SmoothQuant's
migration scales (w8a8), computed from a ``Calibration`` and applied to the graph (``apply_awq_scales``), folded
into the norm weight that produces the activation where the graph allows it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.quantize.calibrate import Calibration
from mobilevlm_export.quantize.graph import (
    FLOAT_TYPES,
    QdqError,
    all_names,
    drop_unused_initializers,
    referenced,
    unique_name,
)
from mobilevlm_export.quantize.scales import int4_blocked_roundtrip
from mobilevlm_export.quantize.select import WeightMatMul, find_weight_matmuls


@dataclass(frozen=True)
class AwqScales:
    """Per-input-channel scales ``s [K]`` for the weights that read one activation tensor."""

    activation: str
    weights: tuple[str, ...]  # the initializers (each [K, N_i]) the search covered
    scales: np.ndarray  # [K], fp32, > 0
    alpha: float
    error: float  # mean squared output error of int4(W * s[:, None]) / s[:, None] on the calibration rows
    error_rtn: float  # the same without scaling (alpha = 0)


def awq_search(weight: np.ndarray, x: np.ndarray, channel_mean: np.ndarray | None = None, *,
               block_size: int = 128, grid: int = 20) -> tuple[np.ndarray, float, float, float]:
    """AWQ-style search (Lin et al. 2023): ``s = mean^alpha`` (normalised so ``sqrt(max s * min s) = 1``) over
    ``alpha`` in ``{0, 1/grid, ..., (grid-1)/grid}``, minimising ``|| x W - x diag(1/s) Q(diag(s) W) ||^2`` with
    ``Q`` the symmetric blocked int4 of ``quantize_int4_blocked``.

    ``weight``: ``[K, N]`` (several weights reading the same activation: concatenate along N); ``x``: calibration
    rows ``[rows, K]``; ``channel_mean``: mean |x| per channel (default: from ``x``).
    Returns ``(scales [K], alpha, error, error_at_alpha_0)``; alpha 0 (s = 1, plain round-to-nearest) is one of
    the candidates, so ``error <= error_at_alpha_0``."""
    w = weight.astype(np.float32)
    x = x.astype(np.float32)
    ref = x @ w
    mean = np.abs(x).mean(axis=0) if channel_mean is None else channel_mean.astype(np.float32)
    mean = np.maximum(mean, 1e-8)
    best = (np.ones(w.shape[0], np.float32), 0.0, math.inf)
    rtn = math.inf
    w_hat, diff = np.empty_like(w), np.empty_like(ref)  # (reused per grid point)
    # diag(1/s) Q(diag(s) W) one int4 block of rows at a time, in place: each block stays in cache through its
    # four passes (the same values; 4.5x faster than whole-weight passes on a 2048 x 6144 weight)
    rows = [slice(r, r + block_size) for r in range(0, w.shape[0], block_size)]
    for i in range(grid):
        alpha = i / grid
        s = mean ** alpha
        s = s / math.sqrt(float(s.max() * s.min()))
        for r in rows:
            block = w_hat[r]
            np.multiply(w[r], s[r, None], out=block)
            int4_blocked_roundtrip(block, block_size, out=block)
            np.divide(block, s[r, None], out=block)
        np.matmul(x, w_hat, out=diff)
        np.subtract(ref, diff, out=diff)
        np.square(diff, out=diff)
        err = float(np.mean(diff))
        if i == 0:
            rtn = err
        if err < best[2]:
            best = (s.astype(np.float32), alpha, err)
    return best[0], best[1], best[2], rtn


def awq_scales(model: onnx.ModelProto, calibration: Calibration, *, block_size: int = 128, grid: int = 20,
               lm_head: bool = False, logits: str = "logits") -> dict[str, AwqScales]:
    """``awq_search`` once per activation tensor of the weight MatMuls (the lm_head's only if ``lm_head``), over
    the concatenation of every weight that reads it (q/k/v, gate/up), on ``calibration.samples``.

    Contract for the caller, per entry ``a -> AwqScales(s)``: the graph stays equivalent only when both halves are
    applied: multiply rows of every listed weight by ``s`` (``W[k, :] *= s[k]``) and divide the tensor ``a`` by
    ``s`` on its last axis, which for a decoder means dividing the weight of the RMSNorm that produces ``a``
    (``norm.weight /= s``) when ``a`` is read only by the listed MatMuls. Then quantize with
    ``quantize_weights(..., "int4", block_size=block_size)``. ``apply_awq_scales`` does both halves on the graph:
    the fold where a norm's ``Mul`` by its weight produces ``a``, an explicit ``Mul`` by ``1/s`` elsewhere (o_proj,
    down_proj)."""
    found = [c for c in find_weight_matmuls(model, logits) if lm_head or not c.lm_head]
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, AwqScales] = {}
    by_act: dict[str, list[WeightMatMul]] = {}
    for c in found:
        by_act.setdefault(c.activation, []).append(c)
    for act, users in by_act.items():
        if act not in calibration.samples:
            raise QdqError(f"no calibration samples for {act!r} (MatMul {users[0].node!r})")
        weights = list(dict.fromkeys(c.weight for c in users))
        w = np.concatenate([numpy_helper.to_array(inits[n]).astype(np.float32) for n in weights], axis=1)
        s, alpha, err, rtn = awq_search(w, calibration.samples[act], calibration.channel_mean.get(act),
                                        block_size=block_size, grid=grid)
        out[act] = AwqScales(act, tuple(weights), s, alpha, err, rtn)
    return out


SMOOTHQUANT_ALPHA = 0.5  # the SmoothQuant paper's default migration strength


def smoothquant_scales(model: onnx.ModelProto, calibration: Calibration, *, alpha: float = SMOOTHQUANT_ALPHA,
                       lm_head: bool = False, logits: str = "logits") -> dict[str, AwqScales]:
    """SmoothQuant's per-input-channel migration scales, one entry per activation tensor of the weight MatMuls
    (the lm_head's only if ``lm_head``): ``s[k] = amax_x[k]^alpha / amax_w[k]^(1 - alpha)`` over every weight that
    reads the tensor, so dividing the activation by ``s`` and multiplying the weights' rows by it moves activation
    outliers into the weights before both are quantized to int8 (W8A8). Applied like AWQ's scales
    (``apply_awq_scales``, same contract); the activation's per-tensor amax must then be calibrated again.
    ``error``/``error_rtn`` of the entries are NaN: no search is made."""
    if not 0 <= alpha <= 1:
        raise QdqError(f"smoothquant alpha {alpha}: must be in [0, 1]")
    found = [c for c in find_weight_matmuls(model, logits) if lm_head or not c.lm_head]
    inits = {t.name: t for t in model.graph.initializer}
    by_act: dict[str, list[WeightMatMul]] = {}
    for c in found:
        by_act.setdefault(c.activation, []).append(c)
    out: dict[str, AwqScales] = {}
    for act, users in by_act.items():
        if act not in calibration.channel_amax:
            raise QdqError(f"no calibration statistics for {act!r} (MatMul {users[0].node!r})")
        weights = tuple(dict.fromkeys(c.weight for c in users))
        w_amax = np.max([np.abs(numpy_helper.to_array(inits[n]).astype(np.float32)).max(axis=1) for n in weights],
                        axis=0)
        x_amax = calibration.channel_amax[act].astype(np.float64)
        s = np.power(np.maximum(x_amax, 1e-5), alpha) / np.power(np.maximum(w_amax, 1e-5), 1 - alpha)
        s = np.where(np.isfinite(s) & (s > 0), s, 1.0).astype(np.float32)
        out[act] = AwqScales(act, weights, s, alpha, float("nan"), float("nan"))
    return out


def apply_awq_scales(model: onnx.ModelProto, scales: Mapping[str, AwqScales], consume: bool = False,
                     fold: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` (``consume``: ``model`` itself) with each entry applied: the listed weights' rows
    multiplied by ``s``, and the activation ``a`` divided by ``s`` on its last axis, one of two ways:

    - folded (``fold``, where the graph allows it): ``a`` is the output of ``Mul(x, w)`` with ``w`` a float
      initializer broadcast along the last axis (``[K]``, ``[1, .., K]`` or one element: the final ``Mul`` of an
      exported RMSNorm/LayerNorm by its weight), possibly through float ``Cast`` nodes that only it reads, and
      every reader of ``a`` is one of the entry's MatMuls (no other node, subgraph or graph output). Then ``w``
      becomes ``w / s`` (in place when nothing else reads ``w``, else a new initializer for this ``Mul``) and no
      node is added;
    - otherwise: the MatMuls reading ``a`` are fed ``Mul(a, 1/s)`` instead (one Mul per activation; other readers
      of ``a`` are untouched).

    Both are equivalent to the original up to float rounding (``fold=False``: the ``Mul`` form everywhere); the
    fold saves an elementwise node and its pass over ``a``. A fold whose ``w / s`` would not be finite, or would
    round a nonzero weight to 0 in ``w``'s dtype, takes the ``Mul`` form. SmoothQuant's scales go through here
    too, so they fold the same way."""
    out = model if consume else copy.deepcopy(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    names = all_names(g)
    found = find_weight_matmuls(out)
    weight_users = {c.weight for c in found}
    graph = _Readers(g)
    inserts: dict[int, onnx.NodeProto] = {}
    replaced: set[str] = set()  # norm weights given a folded copy: dropped below once nothing reads them
    for act, e in scales.items():
        users = [c for c in found if c.activation == act and c.weight in e.weights]
        if not users:
            raise QdqError(f"no weight MatMul reads {act!r}")
        for wname in e.weights:
            if wname not in weight_users:
                raise QdqError(f"{wname!r} is not a weight MatMul initializer")
            t = inits[wname]
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array((w.astype(np.float32) * e.scales[:, None]).astype(w.dtype), wname))
        if fold and _fold_into_weight(g, graph, act, {c.index for c in users}, e.scales, inits, names, replaced):
            continue
        dtype = users[0].dtype
        inv = numpy_helper.from_array((1.0 / e.scales).astype(dtype), unique_name(f"{act}_awq_inv_scale", names))
        g.initializer.append(inv)
        scaled = unique_name(f"{act}_awq", names)
        first = min(c.index for c in users)
        inserts[first] = helper.make_node("Mul", [act, inv.name], [scaled], name=unique_name(f"{act}_awq_Mul", names))
        for c in users:
            g.node[c.index].input[0] = scaled
    rebuilt = []
    for i, node in enumerate(g.node):
        if i in inserts:
            rebuilt.append(inserts[i])
        rebuilt.append(node)
    del g.node[:]
    g.node.extend(rebuilt)
    drop_unused_initializers(g, replaced)
    return out


# Cast targets a fold may look through: float to float, linear up to rounding
_FLOAT_CASTS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


class _Readers:
    """Who reads each tensor of a graph: main-graph node indices (one per input slot), plus the names read inside
    subgraphs and the graph's outputs and inputs, which pin a tensor. Built once; a fold changes only
    initializer data and a ``Mul``'s weight input, which it records with ``moved``."""

    def __init__(self, g: onnx.GraphProto):
        self.nodes: dict[str, list[int]] = {}
        self.producer: dict[str, int] = {}
        self.pinned = {o.name for o in g.output} | {i.name for i in g.input}
        for i, n in enumerate(g.node):
            for x in n.input:
                if x:
                    self.nodes.setdefault(x, []).append(i)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    self.pinned |= referenced(sub)
            for y in n.output:
                self.producer[y] = i

    def only_read_by(self, name: str, readers: set[int]) -> bool:
        return name not in self.pinned and set(self.nodes.get(name, ())) <= readers

    def moved(self, name: str, node: int, to: str) -> None:
        self.nodes[name].remove(node)
        self.nodes.setdefault(to, []).append(node)


def _fold_into_weight(g: onnx.GraphProto, graph: _Readers, act: str, users: set[int], s: np.ndarray,
                      inits: dict[str, TensorProto], names: set[str], replaced: set[str]) -> bool:
    """Divide ``act`` by ``s`` on its last axis by dividing the weight of the ``Mul`` by a constant that produces
    it (see ``apply_awq_scales``); False, with nothing changed, where the graph has no such ``Mul``."""
    if not graph.only_read_by(act, users):
        return False
    x = act
    while True:  # up through float Casts that only the chain reads
        i = graph.producer.get(x)
        if i is None:
            return False
        node = g.node[i]
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type != "Cast":
            break
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if to not in _FLOAT_CASTS or not graph.only_read_by(node.input[0], {i}):
            return False
        x = node.input[0]
    if node.op_type != "Mul" or len(node.input) != 2:
        return False
    consts = [j for j, name in enumerate(node.input) if name in inits]
    if len(consts) != 1 or node.input[consts[0]] in graph.pinned:  # one constant factor, not overridable
        return False
    j = consts[0]
    t = inits[node.input[j]]
    if t.data_type not in FLOAT_TYPES:
        return False
    w = numpy_helper.to_array(t)
    k = s.shape[0]
    if w.ndim == 0:
        shape: tuple[int, ...] = (k,)
    elif w.shape[-1] in (1, k) and math.prod(w.shape[:-1]) == 1:
        shape = (*w.shape[:-1], k)
    else:
        return False
    folded = (np.broadcast_to(w.astype(np.float32), shape) / s.astype(np.float32)).astype(w.dtype)
    if not np.all(np.isfinite(folded)) or np.any((folded == 0) & (np.broadcast_to(w, shape) != 0)):
        return False
    if graph.only_read_by(t.name, {i}) and len(graph.nodes[t.name]) == 1:
        t.CopyFrom(numpy_helper.from_array(folded, t.name))
    else:  # shared with other readers: this Mul gets its own folded copy
        new = numpy_helper.from_array(folded, unique_name(f"{t.name}_awq", names))
        g.initializer.append(new)
        inits[new.name] = new
        graph.moved(t.name, i, new.name)
        replaced.add(t.name)
        node.input[j] = new.name
    return True
