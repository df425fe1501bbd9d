"""The two forms of a Q/DQ graph's blocked (int4) weights, and the TensorRT one written beside a verified graph.

- ``standard``: opset-21 ``DequantizeLinear(w_int4, scale[K/B, N], axis=0, block_size=B)``, what ONNX Runtime
  runs (and TensorRT's parsers from opset 21 on).
- ``trt``: the same node in domain ``trt`` with the model's main opset at 20, as NVIDIA ModelOpt's torch exporter
  writes for parsers below opset 21 (TensorRT 10.3 parses opsets 9 to 20; its ONNX parser picks importers by op
  type, not domain, so ``trt::DequantizeLinear`` reaches the same DequantizeLinear importer, which infers the
  blocking from the scale's shape).

``convert_dq_form`` converts either form to the other; ``write_trt_form`` writes the ``trt`` form of a graph and
checks it converts back to that graph. The functions need onnx; the constants import without it (``targets.orin``,
which the torch-free artifact side imports, reads ``STANDARD_OPSET``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from mobilevlm_export.backends.onnx import opset_version, save_model, set_opset_version
from mobilevlm_export.errors import CheckFailed, UserError

if TYPE_CHECKING:
    import onnx

FORMS = ("standard", "trt")
TRT_DOMAIN = "trt"
TRT_OPSET = 20  # the highest standard-domain opset TensorRT 10.0-10.3 parse (onnx-tensorrt docs/operators.md)
STANDARD_OPSET = 21  # the first opset whose DequantizeLinear has block_size and INT4 inputs
# opset-21 changes to these ops were type additions only, except GroupNormalization's (scale/bias per group ->
# per channel), so a graph that uses it cannot be relabelled opset 20
_OPSET21_SEMANTIC_CHANGES = {"GroupNormalization"}


class DqFormError(UserError):
    """The graph cannot be converted to the requested form (the message says why)."""


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
    from onnx import helper

    if to not in FORMS:
        raise DqFormError(f"to={to!r}: expected one of {FORMS}")
    out = model if consume else copy.deepcopy(model)
    nodes = list(_all_nodes(out.graph))
    opset = opset_version(out)
    if to == "trt" and opset > STANDARD_OPSET:
        raise DqFormError(f"main opset {opset}: only 21 -> {trt_opset} is a plain relabel; re-export at opset 21")
    if to == "standard" and opset < TRT_OPSET:
        raise DqFormError(f"main opset {opset}: blocked DequantizeLinear needs opset 21, and relabelling from below "
                          "20 would change other ops; re-export at opset 21")
    target = min(opset, trt_opset) if to == "trt" else max(opset, STANDARD_OPSET)
    bad = sorted({n.op_type for n in nodes if n.domain in ("", "ai.onnx")} & _OPSET21_SEMANTIC_CHANGES)
    if target != opset and bad:
        raise DqFormError(f"cannot relabel opset {opset} -> {target}: {bad} changed meaning at opset 21")
    q21 = [n.name for n in nodes if n.op_type == "QuantizeLinear" and n.domain in ("", "ai.onnx")
           and any(a.name in ("block_size", "output_dtype") for a in n.attribute)]
    if to == "trt" and target < STANDARD_OPSET and q21:
        raise DqFormError(f"QuantizeLinear {q21[:3]} use opset-21 attributes (block_size/output_dtype)")
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
    set_opset_version(out, "", target)
    return out


def write_trt_form(model: onnx.ModelProto, path: Path) -> None:
    """Write ``model`` (a standard-form graph) to ``path`` with its blocked DQ in the ``trt`` domain at opset 20;
    ``CheckFailed`` unless that form converts back to ``model`` (it must differ in nothing else)."""
    trt_model = convert_dq_form(model, "trt")
    back = convert_dq_form(trt_model, "standard")
    # nodes and opsets (initializers are not touched by the conversion; whole models may exceed 2 GB to serialize)
    if [n.SerializeToString() for n in back.graph.node] != [n.SerializeToString() for n in model.graph.node] or \
            list(back.opset_import) != list(model.opset_import):
        raise CheckFailed(f"{path.name}: the trt-domain form does not convert back to the verified graph")
    del back
    save_model(trt_model, path)


def _blocked(node: onnx.NodeProto) -> bool:
    return any(a.name == "block_size" and a.i > 0 for a in node.attribute)


def _all_nodes(g: onnx.GraphProto):
    from onnx import AttributeProto

    for n in g.node:
        yield n
        for a in n.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                yield from _all_nodes(sub)
