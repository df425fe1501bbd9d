"""Rewrite an ONNX graph's weight MatMuls to Q/DQ form, the form TensorRT's weight-only and W8A8 paths consume.

Schemes (all symmetric: zero point 0, as TensorRT requires; scales in the weight's float dtype, fp32 or fp16):

- ``int4``: weight-only, blocked along the input dimension K (``block_size`` 32, 64 or 128). Standard form:
  opset-21 ``DequantizeLinear(w_int4, scale[K/B, N], axis=0, block_size=B)`` feeding the MatMul, no zero point
  stored, INT4 packed two per byte. ``form="trt"`` writes the same node in domain ``trt`` with the model's main
  opset at 20, as NVIDIA ModelOpt's torch exporter does for parsers below opset 21 (TensorRT 10.3 parses opsets
  9 to 20; its ONNX parser picks importers by op type, not domain, so ``trt::DequantizeLinear`` reaches the same
  DequantizeLinear importer, which infers the blocking from the scale's shape). ``convert_dq_form`` converts
  either form to the other.
- ``int8``: weight-only, per output channel: ``DequantizeLinear(w_int8, scale[N], zero_point=int8 0, axis=1)``.
  No Orin recipe uses it (TensorRT's weight-only quantization is INT4 only; its int8 is W8A8): it is the
  weight half of ``w8a8``, and runs on ONNX Runtime.
- ``w8a8``: ``int8`` weights plus a per-tensor ``QuantizeLinear``/``DequantizeLinear`` pair (int8, zero point 0)
  on the MatMul's activation input, its scale ``amax / 127`` from the caller's calibration (``calibrate``).

The exporter (``torch.onnx.export(dynamo=True)``) writes ``nn.Linear`` as ``MatMul(x, W)`` with ``W`` an
initializer of shape ``[K, N]`` (the torch weight transposed at export time, no Transpose node and no Gemm), so a
"weight MatMul" here is a MatMul whose second input is a rank-2 fp32/fp16 initializer that is not also a graph
input. The lm_head is the weight MatMul whose output reaches the ``logits`` graph output through shape/elementwise
ops only; it is left in float unless ``lm_head`` names a scheme for it.

Every function takes and returns ``onnx.ModelProto`` values and never mutates its argument. Only onnx and numpy
are needed (onnxruntime for ``calibrate``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.errors import UserError

SCHEMES = ("int4", "int8", "w8a8")
BLOCK_SIZES = (32, 64, 128)
FORMS = ("standard", "trt")
TRT_DOMAIN = "trt"
TRT_OPSET = 20  # the highest standard-domain opset TensorRT 10.0-10.3 parse (onnx-tensorrt docs/operators.md)
STANDARD_OPSET = 21  # the first opset whose DequantizeLinear has block_size and INT4 inputs
INT4_MIN_IR = 10  # INT4 tensors need IR version 10 (onnx 1.16)
FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}
# ops a logits tensor may pass through after the lm_head MatMul (bias, cast to fp32, reshape, scaling)
_LOGITS_PASS_THROUGH = {"Add", "Cast", "Reshape", "Identity", "Mul", "Div", "Squeeze", "Unsqueeze", "Flatten"}
# opset-21 changes to these ops were type additions only, except GroupNormalization's (scale/bias per group ->
# per channel), so a graph that uses it cannot be relabelled opset 20
_OPSET21_SEMANTIC_CHANGES = {"GroupNormalization"}


class QdqError(UserError):
    """The graph or the request cannot be quantized as asked (the message names the node/initializer)."""


@dataclass(frozen=True)
class WeightMatMul:
    """A MatMul whose weight (input 1) is a rank-2 float initializer ``[k, n]``."""

    node: str  # node name ("#<index>" when the node has none)
    index: int  # position in graph.node
    activation: str  # input 0
    weight: str  # the initializer
    k: int
    n: int
    dtype: str  # "float32" | "float16"
    lm_head: bool


@dataclass(frozen=True)
class QuantizedWeight:
    node: str
    weight: str
    scheme: str
    k: int
    n: int
    bytes_before: int  # the float initializer
    bytes_after: int  # quantized data + scales (+ zero points); shared weights are counted at their first node


@dataclass(frozen=True)
class QdqReport:
    """What ``quantize_weights`` did. ``bytes_*``: all initializers of the main graph, raw (packed) sizes."""

    form: str
    block_size: int | None
    counts: dict[str, int]  # scheme -> MatMul nodes rewritten
    weights: tuple[QuantizedWeight, ...]
    kept: tuple[tuple[str, str], ...]  # (node, why) for weight MatMuls left in float
    activation_qdq: tuple[str, ...]  # activation tensors given a Q/DQ pair (w8a8)
    bytes_before: int
    bytes_after: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QdqResult:
    model: onnx.ModelProto
    report: QdqReport


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


# ----------------------------------------------------------------------------------------------------------------
# selection


def find_weight_matmuls(model: onnx.ModelProto, logits: str = "logits") -> list[WeightMatMul]:
    """Every MatMul of the main graph whose input 1 is a rank-2 fp32/fp16 initializer (not a graph input), in
    graph order. ``lm_head`` marks the ones whose output reaches the graph output ``logits`` through
    pass-through ops only (Add, Cast, Reshape, Mul, ...)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    graph_inputs = {i.name for i in g.input}
    heads = _lm_head_nodes(g, logits)
    found = []
    for i, node in enumerate(g.node):
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        w = inits.get(node.input[1])
        if w is None or node.input[1] in graph_inputs or len(w.dims) != 2 or w.data_type not in FLOAT_TYPES:
            continue
        found.append(WeightMatMul(_node_id(node, i), i, node.input[0], w.name, int(w.dims[0]), int(w.dims[1]),
                                  np.dtype(FLOAT_TYPES[w.data_type]).name, i in heads))
    return found


def _node_id(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"#{index}"


def _lm_head_nodes(g: onnx.GraphProto, logits: str) -> set[int]:
    if logits not in {o.name for o in g.output}:
        return set()
    producer = {out: i for i, n in enumerate(g.node) for out in n.output}
    heads: set[int] = set()
    stack, seen = [logits], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        i = producer[name]
        node = g.node[i]
        if node.op_type == "MatMul":
            heads.add(i)
        elif node.op_type in _LOGITS_PASS_THROUGH:
            stack.extend(x for x in node.input if x)
    return heads


# ----------------------------------------------------------------------------------------------------------------
# quantization math (numpy)


def quantize_int4_blocked(w: np.ndarray, block_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 of ``w [K, N]`` in blocks of ``block_size`` rows: ``(q int8 in [-8, 7] [K, N],
    scale [K/B, N] in w's dtype)`` with ``w ~= q * repeat(scale, B, axis=0)``. Scales are ``amax / 7`` rounded to
    w's dtype first (q is computed with the rounded scale); an all-zero block gets scale 1."""
    k, n = w.shape
    if k % block_size:
        raise QdqError(f"block size {block_size} does not divide K={k}")
    blocks = w.astype(np.float32).reshape(k // block_size, block_size, n)
    scale = _scale(np.abs(blocks).max(axis=1) / 7.0, w.dtype)  # [K/B, N]
    q = np.clip(np.rint(blocks / scale.astype(np.float32)[:, None, :]), -8, 7).astype(np.int8)
    return q.reshape(k, n), scale


def quantize_int8_per_channel(w: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 of ``w`` per slice along ``axis`` (the output channel, 1 for a ``[K, N]`` MatMul weight):
    ``(q int8 in [-127, 127], scale [w.shape[axis]] in w's dtype)``."""
    other = tuple(a for a in range(w.ndim) if a != axis)
    scale = _scale(np.abs(w.astype(np.float32)).max(axis=other) / 127.0, w.dtype)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w.astype(np.float32) / scale.astype(np.float32).reshape(shape)), -127, 127)
    return q.astype(np.int8), scale


def dequantize_int4_blocked(q: np.ndarray, scale: np.ndarray, block_size: int) -> np.ndarray:
    """fp32 ``q * scale`` with each scale row repeated over its block of ``block_size`` rows."""
    return q.astype(np.float32) * np.repeat(scale.astype(np.float32), block_size, axis=0)


def _scale(raw: np.ndarray, dtype) -> np.ndarray:
    # TensorRT's Q/DQ importer requires every scale > 0: an all-zero block/channel gets scale 1 (its values
    # quantize to 0 whatever the scale), and an fp16 scale that underflows gets the smallest subnormal
    s = np.where(raw > 0, raw, 1.0).astype(dtype)
    return np.where(s > 0, s, np.finfo(dtype).smallest_subnormal).astype(dtype)


# ----------------------------------------------------------------------------------------------------------------
# the rewrite


def quantize_weights(model: onnx.ModelProto, scheme: str, *, block_size: int = 128, lm_head: str | None = None,
                     act_amax: Mapping[str, float] | None = None,
                     select: Callable[[WeightMatMul], bool] | None = None, form: str = "standard",
                     logits: str = "logits", consume: bool = False) -> QdqResult:
    """Rewrite the weight MatMuls of ``model`` (a copy; ``consume``: ``model`` itself, which the caller then drops:
    a full-size graph is never held twice) to Q/DQ form.

    ``scheme``: ``int4`` | ``int8`` | ``w8a8`` for every selected weight MatMul but the lm_head.
    ``block_size``: int4 block along K (32, 64 or 128; default 128); it must divide K of every int4 weight, and
    N must be even (TensorRT packs INT4 along the last dim), else ``QdqError`` names the node, initializer and K.
    ``lm_head``: ``None`` (default) keeps the lm_head float; a scheme name quantizes it with that scheme.
    ``act_amax``: activation tensor name -> amax, required for every w8a8 MatMul's input 0 (``calibrate``).
    ``select``: optional filter over ``find_weight_matmuls``' entries; those it rejects stay float.
    ``form``: ``standard`` (opset-21 blocked DQ; the main opset must be 20 or more, 20 is relabelled 21) or ``trt``
    (``trt::DequantizeLinear``, main opset 21 relabelled 20; see ``convert_dq_form``).
    Returns the new model and a ``QdqReport``. A weight shared by several MatMuls gets one DQ node (all selected
    users must agree on the scheme); the float initializer is dropped once nothing references it."""
    _check_scheme(scheme, "scheme")
    if lm_head is not None:
        _check_scheme(lm_head, "lm_head")
    if block_size not in BLOCK_SIZES:
        raise QdqError(f"block_size {block_size}: expected one of {BLOCK_SIZES}")
    if form not in FORMS:
        raise QdqError(f"form {form!r}: expected one of {FORMS}")
    out = model if consume else copy.deepcopy(model)
    g = out.graph
    bytes_before = initializer_bytes(g)
    candidates = find_weight_matmuls(out, logits)
    plan: dict[int, tuple[WeightMatMul, str]] = {}
    kept: list[tuple[str, str]] = []
    for c in candidates:
        s = lm_head if c.lm_head else scheme
        if c.lm_head and lm_head is None:
            kept.append((c.node, "lm_head (lm_head=None)"))
        elif select is not None and not select(c):
            kept.append((c.node, "rejected by select"))
        else:
            plan[c.index] = (c, s)
    _check_plan(plan.values(), block_size, act_amax)
    int4 = any(x == "int4" for _, x in plan.values())
    if int4 and form == "standard" and _opset(out) < TRT_OPSET:
        raise QdqError(f"the model's opset {_opset(out)} has no blocked DequantizeLinear: export at opset 21, or "
                       "use form='trt'")

    inits = {t.name: t for t in g.initializer}
    names = _all_names(g)
    new_inits: list[TensorProto] = []
    weight_nodes: list[onnx.NodeProto] = []
    dq_out: dict[str, str] = {}  # weight initializer -> its DQ output
    done: list[QuantizedWeight] = []
    for c, s in plan.values():
        if c.weight not in dq_out:
            w = numpy_helper.to_array(inits[c.weight])
            nodes, tensors, out_name = _weight_dq(c, s, w, block_size, names)
            weight_nodes += nodes
            new_inits += tensors
            dq_out[c.weight] = out_name
            after = sum(tensor_bytes(t) for t in tensors)
            done.append(QuantizedWeight(c.node, c.weight, s, c.k, c.n, w.nbytes, after))
        else:
            done.append(QuantizedWeight(c.node, c.weight, s, c.k, c.n, 0, 0))
        g.node[c.index].input[1] = dq_out[c.weight]

    # activation Q/DQ pairs (w8a8), one per activation tensor, right before its first quantized consumer
    act_nodes: dict[int, list[onnx.NodeProto]] = {}
    act_out: dict[str, str] = {}
    for c, s in sorted(plan.values(), key=lambda p: p[0].index):
        if s != "w8a8":
            continue
        if c.activation not in act_out:
            assert act_amax is not None  # _check_plan saw to it
            nodes, tensors, out_name = _activation_qdq(c, float(act_amax[c.activation]), names)
            act_nodes[c.index] = nodes
            new_inits += tensors
            act_out[c.activation] = out_name
        g.node[c.index].input[0] = act_out[c.activation]

    rebuilt = list(weight_nodes)
    for i, node in enumerate(g.node):
        rebuilt += act_nodes.get(i, [])
        rebuilt.append(node)
    del g.node[:]
    g.node.extend(rebuilt)
    g.initializer.extend(new_inits)
    _drop_unused_initializers(g, set(dq_out))
    if int4:
        out.ir_version = max(out.ir_version, INT4_MIN_IR)
    if int4 or form == "trt":
        out = convert_dq_form(out, form, consume=True)
    counts = {s: sum(1 for _, x in plan.values() if x == s) for s in SCHEMES}
    report = QdqReport(form, block_size if int4 else None,
                       {s: n for s, n in counts.items() if n}, tuple(done), tuple(kept), tuple(act_out),
                       bytes_before, initializer_bytes(out.graph))
    return QdqResult(out, report)


def _check_scheme(s: str, what: str) -> None:
    if s not in SCHEMES:
        raise QdqError(f"{what} {s!r}: expected one of {SCHEMES}")


def _check_plan(plan: Iterable[tuple[WeightMatMul, str]], block_size: int, act_amax) -> None:
    by_weight: dict[str, set[str]] = {}
    missing = []
    for c, s in plan:
        by_weight.setdefault(c.weight, set()).add("int8" if s == "w8a8" else s)
        if s == "int4":
            if c.k % block_size:
                raise QdqError(f"int4 block size {block_size} does not divide K={c.k} of initializer {c.weight!r} "
                               f"(MatMul {c.node!r}); use a block size that divides K or another scheme")
            if c.n % 2:
                raise QdqError(f"int4 weight {c.weight!r} (MatMul {c.node!r}) has an odd output width N={c.n}; "
                               "TensorRT packs INT4 along the last dim and rejects odd ones")
        if s == "w8a8" and (act_amax is None or c.activation not in act_amax):
            missing.append(f"{c.activation} (MatMul {c.node})")
        elif s == "w8a8" and not (math.isfinite(act_amax[c.activation]) and act_amax[c.activation] > 0):
            raise QdqError(f"amax of {c.activation!r} (MatMul {c.node!r}) is {act_amax[c.activation]}: "
                           "expected a finite value > 0")
    if missing:
        raise QdqError(f"w8a8 needs an activation amax for {len(missing)} tensors: {', '.join(missing[:8])}"
                       + (" ..." if len(missing) > 8 else ""))
    for w, schemes in by_weight.items():
        if len(schemes) > 1:
            raise QdqError(f"initializer {w!r} is shared by MatMuls quantized as {sorted(schemes)}; "
                           "one weight takes one scheme")


def _weight_dq(c: WeightMatMul, scheme: str, w: np.ndarray, block_size: int, names: set[str]):
    base = _unique(f"{c.weight}_{'int4' if scheme == 'int4' else 'int8'}", names)
    out_name = _unique(f"{c.weight}_dq", names)
    if scheme == "int4":
        q, scale = quantize_int4_blocked(w, block_size)
        q_t = int4_tensor(q, base)
        s_t = numpy_helper.from_array(scale, _unique(f"{c.weight}_scale", names))
        node = helper.make_node("DequantizeLinear", [q_t.name, s_t.name], [out_name],
                                name=_unique(f"{c.weight}_DequantizeLinear", names), axis=0, block_size=block_size)
        return [node], [q_t, s_t], out_name
    q, scale = quantize_int8_per_channel(w, axis=1)
    q_t = numpy_helper.from_array(q, base)
    s_t = numpy_helper.from_array(scale, _unique(f"{c.weight}_scale", names))
    z_t = numpy_helper.from_array(np.zeros(scale.shape, np.int8), _unique(f"{c.weight}_zero_point", names))
    node = helper.make_node("DequantizeLinear", [q_t.name, s_t.name, z_t.name], [out_name],
                            name=_unique(f"{c.weight}_DequantizeLinear", names), axis=1)
    return [node], [q_t, s_t, z_t], out_name


def _activation_qdq(c: WeightMatMul, amax: float, names: set[str]):
    a = c.activation
    scale = numpy_helper.from_array(np.asarray(amax / 127.0, dtype=c.dtype), _unique(f"{a}_act_scale", names))
    zp = numpy_helper.from_array(np.asarray(0, np.int8), _unique(f"{a}_act_zero_point", names))
    q_out, dq_out = _unique(f"{a}_q", names), _unique(f"{a}_qdq", names)
    q = helper.make_node("QuantizeLinear", [a, scale.name, zp.name], [q_out], name=_unique(f"{a}_QuantizeLinear",
                                                                                          names))
    dq = helper.make_node("DequantizeLinear", [q_out, scale.name, zp.name], [dq_out],
                          name=_unique(f"{a}_act_DequantizeLinear", names))
    return [q, dq], [scale, zp], dq_out


def int4_tensor(q: np.ndarray, name: str) -> TensorProto:
    """An INT4 initializer from int8 values in [-8, 7], packed two per byte (element 2i in the low nibble)."""
    if q.size and (q.min() < -8 or q.max() > 7):
        raise QdqError(f"{name}: int4 values must lie in [-8, 7]")
    u = (q.astype(np.int8).ravel() & 0x0F).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.INT4
    t.dims.extend(q.shape)
    t.raw_data = (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()
    return t


def int4_values(t: TensorProto) -> np.ndarray:
    """The int8 values of an INT4 initializer (inverse of ``int4_tensor``)."""
    return numpy_helper.to_array(t).astype(np.int8)


def _all_names(g: onnx.GraphProto) -> set[str]:
    names = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
    for n in g.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names


def _unique(name: str, names: set[str]) -> str:
    out, i = name, 1
    while out in names:
        out, i = f"{name}_{i}", i + 1
    names.add(out)
    return out


def _referenced(g: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``g`` or of its subgraphs reads."""
    used: set[str] = set()
    for n in g.node:
        used.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= _referenced(sub)
    return used


def _drop_unused_initializers(g: onnx.GraphProto, names: set[str]) -> None:
    keep = _referenced(g) | {o.name for o in g.output}
    drop = [t for t in g.initializer if t.name in names and t.name not in keep]
    for t in drop:
        g.initializer.remove(t)


def tensor_bytes(t: TensorProto) -> int:
    """Stored bytes of an initializer (external data by its recorded length, else from its dims; int4 packed two
    per byte)."""
    if t.data_location == TensorProto.EXTERNAL:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        if length is not None:
            return length
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (math.prod(t.dims) + 1) // 2
    return math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def initializer_bytes(g: onnx.GraphProto) -> int:
    return sum(tensor_bytes(t) for t in g.initializer)


def _opset(model: onnx.ModelProto, domain: str = "") -> int:
    return next((o.version for o in model.opset_import if o.domain in ((domain, "ai.onnx") if not domain
                                                                          else (domain,))), 0)


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for o in model.opset_import:
        if o.domain == domain or (not domain and o.domain == "ai.onnx"):
            o.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


# ----------------------------------------------------------------------------------------------------------------
# standard <-> trt form


def convert_dq_form(model: onnx.ModelProto, to: str, *, trt_opset: int = TRT_OPSET,
                    consume: bool = False) -> onnx.ModelProto:
    """The same graph with its blocked ``DequantizeLinear`` nodes (those with a ``block_size`` attribute) in the
    other form; nothing else changes but node domains and opset imports: same initializers, same attributes.
    A copy, or ``model`` itself converted with ``consume``.

    ``to="trt"``: those nodes move to domain ``trt`` (opset import ``trt`` 1 added) and a main opset above
    ``trt_opset`` (20) is relabelled ``trt_opset``. Per-axis/per-tensor Q/DQ stay in the standard domain (opset
    13+ has them).
    ``to="standard"``: ``trt::DequantizeLinear`` nodes move to the standard domain, a main opset of 20 is
    relabelled 21 and the ``trt`` import is dropped when nothing else uses it; below 20 is an error.
    Relabelling 21 <-> 20 changes no op's meaning because opset 21 only widened op types, except for
    GroupNormalization: a graph with one cannot be relabelled."""
    if to not in FORMS:
        raise QdqError(f"to={to!r}: expected one of {FORMS}")
    out = model if consume else copy.deepcopy(model)
    nodes = list(_all_nodes(out.graph))
    opset = _opset(out)
    if to == "trt" and opset > STANDARD_OPSET:
        raise QdqError(f"main opset {opset}: only 21 -> {trt_opset} is a plain relabel; re-export at opset 21")
    if to == "standard" and opset < TRT_OPSET:
        raise QdqError(f"main opset {opset}: blocked DequantizeLinear needs opset 21, and relabelling from below "
                       "20 would change other ops; re-export at opset 21")
    target = min(opset, trt_opset) if to == "trt" else max(opset, STANDARD_OPSET)
    bad = sorted({n.op_type for n in nodes if n.domain in ("", "ai.onnx")} & _OPSET21_SEMANTIC_CHANGES)
    if target != opset and bad:
        raise QdqError(f"cannot relabel opset {opset} -> {target}: {bad} changed meaning at opset 21")
    q21 = [n.name for n in nodes if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")
           and any(a.name in ("block_size", "output_dtype") for a in n.attribute)]
    if to == "trt" and target < STANDARD_OPSET and q21:
        raise QdqError(f"QuantizeLinear {q21[:3]} use opset-21 attributes (block_size/output_dtype)")
    if to == "trt":
        for n in nodes:
            if n.op_type == "DequantizeLinear" and n.domain in ("", "ai.onnx") and _blocked(n):
                n.domain = TRT_DOMAIN
        if any(n.domain == TRT_DOMAIN for n in nodes) and not any(o.domain == TRT_DOMAIN for o in out.opset_import):
            out.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
    else:
        for n in nodes:
            if n.op_type == "DequantizeLinear" and n.domain == TRT_DOMAIN:
                n.ClearField("domain")  # as make_node leaves it: unset, not "" (proto2 keeps the difference)
        if not any(n.domain == TRT_DOMAIN for n in nodes):
            keep = [o for o in out.opset_import if o.domain != TRT_DOMAIN]
            del out.opset_import[:]
            out.opset_import.extend(keep)
    _set_opset(out, "", target)
    return out


def _blocked(node: onnx.NodeProto) -> bool:
    return any(a.name == "block_size" and a.i > 0 for a in node.attribute)


def _all_nodes(g: onnx.GraphProto):
    for n in g.node:
        yield n
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_nodes(sub)


# ----------------------------------------------------------------------------------------------------------------
# calibration


def ort_session(model: onnx.ModelProto | Path, threads: int | None = None, calibration: bool = False):
    """A CPU ONNX Runtime session over ``model`` (in memory, or an ``.onnx`` path; ``backends.onnx``'s session:
    exact int4 Q/DQ MatMuls). ``calibration``: the session of a calibration pass (``backends.onnx._session``'s):
    graph optimizations off (constant folding would store fp32 copies of fp16 weights) and no CPU memory arena;
    and ``model`` is a copy the caller drops, so one over 2 GB gives its weights to the temporary file instead of
    being copied again."""
    from mobilevlm_export.backends.onnx import _session, needs_external_data, save_model

    if isinstance(model, Path):
        return _session(str(model), threads, calibration=calibration)
    if not needs_external_data(initializer_bytes(model.graph)):
        return _session(model.SerializeToString(), threads, calibration=calibration)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # over protobuf's 2 GB: through a file with external data
        path = save_model(model if calibration else copy.deepcopy(model), Path(tmp) / "model.onnx", external=True)
        return _session(str(path), threads, calibration=calibration)


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


# ----------------------------------------------------------------------------------------------------------------
# AWQ-style scale search


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
    for i in range(grid):
        alpha = i / grid
        s = mean ** alpha
        s = s / math.sqrt(float(s.max() * s.min()))
        q, scale = quantize_int4_blocked(w * s[:, None], block_size)
        w_hat = dequantize_int4_blocked(q, scale, block_size) / s[:, None]
        err = float(np.mean((ref - x @ w_hat) ** 2))
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
    names = _all_names(g)
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
        inv = numpy_helper.from_array((1.0 / e.scales).astype(dtype), _unique(f"{act}_awq_inv_scale", names))
        g.initializer.append(inv)
        scaled = _unique(f"{act}_awq", names)
        first = min(c.index for c in users)
        inserts[first] = helper.make_node("Mul", [act, inv.name], [scaled], name=_unique(f"{act}_awq_Mul", names))
        for c in users:
            g.node[c.index].input[0] = scaled
    rebuilt = []
    for i, node in enumerate(g.node):
        if i in inserts:
            rebuilt.append(inserts[i])
        rebuilt.append(node)
    del g.node[:]
    g.node.extend(rebuilt)
    _drop_unused_initializers(g, replaced)
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
                    self.pinned |= _referenced(sub)
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
        new = numpy_helper.from_array(folded, _unique(f"{t.name}_awq", names))
        g.initializer.append(new)
        inits[new.name] = new
        graph.moved(t.name, i, new.name)
        replaced.add(t.name)
        node.input[j] = new.name
    return True
