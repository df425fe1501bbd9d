"""What the Q/DQ rewrites share about an ONNX graph: their error, the float initializer types they rewrite, and
name bookkeeping (fresh names, which tensors are read, dropping initializers nothing reads any more).

Only onnx and numpy are needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from mobilevlm_export.errors import UserError

FLOAT_TYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16}


class QdqError(UserError):
    """The graph or the request cannot be quantized as asked (the message names the node/initializer)."""


def all_names(g: onnx.GraphProto) -> set[str]:
    """Every name the main graph uses: initializers, inputs, outputs, value infos, node inputs/outputs/names."""
    names = {t.name for t in g.initializer} | {v.name for v in (*g.input, *g.output, *g.value_info)}
    for n in g.node:
        names.update(n.input)
        names.update(n.output)
        names.add(n.name)
    return names


def unique_name(name: str, names: set[str]) -> str:
    """``name``, or ``name_1``, ``name_2``... the first not in ``names``; added to ``names``."""
    out, i = name, 1
    while out in names:
        out, i = f"{name}_{i}", i + 1
    names.add(out)
    return out


def referenced(g: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``g`` or of its subgraphs reads."""
    used: set[str] = set()
    for n in g.node:
        used.update(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                used |= referenced(sub)
    return used


def drop_unused_initializers(g: onnx.GraphProto, names: set[str]) -> None:
    """Remove the initializers named in ``names`` that no node (or subgraph) reads and no graph output is."""
    keep = referenced(g) | {o.name for o in g.output}
    drop = [t for t in g.initializer if t.name in names and t.name not in keep]
    for t in drop:
        g.initializer.remove(t)
