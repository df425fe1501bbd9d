"""Which MatMuls of an exported graph are weight MatMuls, and which of them is the lm_head.

The exporter (``torch.onnx.export(dynamo=True)``) writes ``nn.Linear`` as ``MatMul(x, W)`` with ``W`` an
initializer of shape ``[K, N]`` (the torch weight transposed at export time, no Transpose node and no Gemm), so a
"weight MatMul" here is a MatMul whose second input is a rank-2 fp32/fp16 initializer that is not also a graph
input. The lm_head is the weight MatMul whose output reaches the ``logits`` graph output through shape/elementwise
ops only; the rewrites leave it in float unless asked otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from mobilevlm_export.quantize.graph import FLOAT_TYPES

# ops a logits tensor may pass through after the lm_head MatMul (bias, cast to fp32, reshape, scaling)
_LOGITS_PASS_THROUGH = {"Add", "Cast", "Reshape", "Identity", "Mul", "Div", "Squeeze", "Unsqueeze", "Flatten"}


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


def lm_head_weights(model: onnx.ModelProto, logits: str = "logits") -> set[str]:
    """The initializers of the lm_head's weight MatMuls (``find_weight_matmuls``)."""
    return {c.weight for c in find_weight_matmuls(model, logits) if c.lm_head}


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
