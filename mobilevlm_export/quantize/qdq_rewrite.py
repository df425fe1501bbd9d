"""Rewrite an ONNX graph's weight MatMuls to Q/DQ form, the form TensorRT's weight-only and W8A8 paths consume.

Schemes (all symmetric: zero point 0, as TensorRT requires; scales in the weight's float dtype, fp32 or fp16;
``quantize.scales`` has the math):

- ``int4``: weight-only, blocked along the input dimension K (``block_size`` 32, 64 or 128). Standard form:
  opset-21 ``DequantizeLinear(w_int4, scale[K/B, N], axis=0, block_size=B)`` feeding the MatMul, no zero point
  stored, INT4 packed two per byte. ``form="trt"`` writes the same node in domain ``trt`` with the model's main
  opset at 20 (``backends.tensorrt_qdq``, which converts either form to the other).
- ``int8``: weight-only, per output channel: ``DequantizeLinear(w_int8, scale[N], zero_point=int8 0, axis=1)``.
  No Orin recipe uses it (TensorRT's weight-only quantization is INT4 only; its int8 is W8A8): it is the
  weight half of ``w8a8``, and runs on ONNX Runtime.
- ``w8a8``: ``int8`` weights plus a per-tensor ``QuantizeLinear``/``DequantizeLinear`` pair (int8, zero point 0)
  on the MatMul's activation input, its scale ``amax / 127`` from the caller's calibration
  (``quantize.calibrate``).

Which MatMuls are weight MatMuls, and which is the lm_head: ``quantize.select``. ``quantize_weights`` takes and
returns ``onnx.ModelProto`` values and never mutates its argument (unless asked to: ``consume``). Only onnx and
numpy are needed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.backends.onnx import initializer_bytes, opset_version, tensor_bytes
from mobilevlm_export.backends.tensorrt_qdq import FORMS, TRT_OPSET, convert_dq_form
from mobilevlm_export.quantize.graph import QdqError, all_names, drop_unused_initializers, unique_name
from mobilevlm_export.quantize.scales import int4_tensor, quantize_int4_blocked, quantize_int8_per_channel
from mobilevlm_export.quantize.select import WeightMatMul, find_weight_matmuls

SCHEMES = ("int4", "int8", "w8a8")
BLOCK_SIZES = (32, 64, 128)
INT4_MIN_IR = 10  # INT4 tensors need IR version 10 (onnx 1.16)

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


@dataclass(frozen=True)
class QdqResult:
    model: onnx.ModelProto
    report: QdqReport


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
    if int4 and form == "standard" and opset_version(out) < TRT_OPSET:
        raise QdqError(f"the model's opset {opset_version(out)} has no blocked DequantizeLinear: export at opset 21, "
                       "or use form='trt'")

    inits = {t.name: t for t in g.initializer}
    names = all_names(g)
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
    drop_unused_initializers(g, set(dq_out))
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
    base = unique_name(f"{c.weight}_{'int4' if scheme == 'int4' else 'int8'}", names)
    out_name = unique_name(f"{c.weight}_dq", names)
    if scheme == "int4":
        q, scale = quantize_int4_blocked(w, block_size)
        q_t = int4_tensor(q, base)
        s_t = numpy_helper.from_array(scale, unique_name(f"{c.weight}_scale", names))
        node = helper.make_node("DequantizeLinear", [q_t.name, s_t.name], [out_name],
                                name=unique_name(f"{c.weight}_DequantizeLinear", names), axis=0, block_size=block_size)
        return [node], [q_t, s_t], out_name
    q, scale = quantize_int8_per_channel(w, axis=1)
    q_t = numpy_helper.from_array(q, base)
    s_t = numpy_helper.from_array(scale, unique_name(f"{c.weight}_scale", names))
    z_t = numpy_helper.from_array(np.zeros(scale.shape, np.int8), unique_name(f"{c.weight}_zero_point", names))
    node = helper.make_node("DequantizeLinear", [q_t.name, s_t.name, z_t.name], [out_name],
                            name=unique_name(f"{c.weight}_DequantizeLinear", names), axis=1)
    return [node], [q_t, s_t, z_t], out_name


def _activation_qdq(c: WeightMatMul, amax: float, names: set[str]):
    a = c.activation
    scale = numpy_helper.from_array(np.asarray(amax / 127.0, dtype=c.dtype), unique_name(f"{a}_act_scale", names))
    zp = numpy_helper.from_array(np.asarray(0, np.int8), unique_name(f"{a}_act_zero_point", names))
    q_out, dq_out = unique_name(f"{a}_q", names), unique_name(f"{a}_qdq", names)
    q = helper.make_node("QuantizeLinear", [a, scale.name, zp.name], [q_out], name=unique_name(f"{a}_QuantizeLinear",
                                                                                          names))
    dq = helper.make_node("DequantizeLinear", [q_out, scale.name, zp.name], [dq_out],
                          name=unique_name(f"{a}_act_DequantizeLinear", names))
    return [q, dq], [scale, zp], dq_out
