"""Static checks of an ONNX graph against what a TensorRT release's ONNX parser accepts, without TensorRT.

The rules come from a data file per release, ``tensorrt_ops/<version>.json``: the operator table of onnx-tensorrt's
``docs/operators.md`` (supported ops, their main types, restrictions), the standard-domain opsets the table's
header names, and the ``trt``-domain ops the parser imports (it looks importers up by op type, not domain, so
``trt::DequantizeLinear`` reaches the standard DequantizeLinear importer). Each file's ``source`` says where it was
read and what was derived.

``lint`` returns ``Finding``s and raises nothing for a graph it dislikes: the caller decides whether to fail.
Checks (``Finding.check``):

- ``opset``: the main (``""``/``ai.onnx``) opset is outside the table's range (TensorRT 10.3: 9 to 20; 10.15: 9 to 24).
- ``op``: an op that is absent from the table or marked unsupported, an unknown ``trt``-domain op, or an op in
  any other domain that is not a model-local function (the parser would need a plugin of that name).
- ``op_dtype``: an op's main tensor (input 0; Where: input 1; Cast/CastLike: input and output; Constant,
  ConstantOfShape: output) has a type outside the op's "Supported Types" (types from ONNX shape inference).
- ``constant_input``: an input the table says must be an initializer (ReduceMean axes, Squeeze axes, ...) is not
  an initializer or a Constant node's output.
- ``dtype``: a graph input/output, initializer, Constant or value_info tensor (declared or inferred) of a type the
  release does not take: DOUBLE (the parser casts it to FP32 with clamping), UINT16/32/64, INT16, STRING,
  COMPLEX*, UINT4, FP8 other than E4M3FN, FP4 before 10.15 and the like; INT8/FP8 used outside Q/DQ; UINT8 as
  quantized data or zero point.
- ``int4``: an INT4 tensor that is not an initializer (or Constant) read only as input 0 of DequantizeLinear
  or as a zero point (an INT4 activation, graph input/output, QuantizeLinear to INT4, Cast to INT4), or an INT4
  weight with an odd last dim (TensorRT packs INT4 along it).
- ``zero_point``: a QuantizeLinear/DequantizeLinear zero point that is not a constant of all zeros.
- ``scale``: a constant Q/DQ scale that is not all > 0 (the parser rejects it).
- ``block``: a blocked DequantizeLinear whose ``block_size`` does not divide the blocked dim of its input, or
  whose scale shape does not match the input's with that dim divided by the block size.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

STANDARD_DOMAINS = ("", "ai.onnx")
TRT_DOMAIN = "trt"
QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "TRT_INT4QuantizeLinear", "TRT_INT4DequantizeLinear",
           "TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"}
DQ_OPS = {"DequantizeLinear", "TRT_INT4DequantizeLinear", "TRT_FP8DequantizeLinear"}
# the table's type abbreviations for ONNX element types; others are named as ONNX names them
_ABBREV = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
           TensorProto.FLOAT8E4M3FN: "FP8", TensorProto.FLOAT4E2M1: "FP4"}
# which tensor of a node the "Supported Types" column is about: (inputs, outputs) indices
_TYPED = {"Where": ((1,), ()), "Cast": ((0,), (0,)), "CastLike": ((0,), (0,)), "Constant": ((), (0,)),
          "ConstantOfShape": ((), (0,))}


@dataclass(frozen=True)
class Finding:
    """One reason TensorRT's parser would reject (or silently alter) the graph. ``node``/``op_type`` are empty
    for model-level findings (opset); ``tensor`` names the tensor at fault when there is one."""

    graph: str
    node: str
    op_type: str
    check: str
    reason: str
    tensor: str = ""

    def __str__(self) -> str:
        where = f"{self.node} [{self.op_type}]" if self.node or self.op_type else "model"
        return f"{self.graph}: {where}: {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OpTable:
    """One release's parser table (``tensorrt_ops/<trt_version>.json``)."""

    trt_version: str
    source: str
    opset_min: int
    opset_max: int
    types: frozenset[str]  # element types the release takes (table abbreviations)
    cast_down: frozenset[str]
    quantized_only: frozenset[str]
    ops: dict  # op -> {"supported", "types"?, "restrictions"?, "constant_inputs"?}
    trt_ops: dict  # domain "trt" op -> same


def available_versions() -> list[str]:
    """The TensorRT releases with a table, oldest first."""
    files = resources.files("mobilevlm_export.backends").joinpath("tensorrt_ops").iterdir()
    names = [f.name[:-5] for f in files if f.name.endswith(".json")]
    return sorted(names, key=lambda v: tuple(int(p) for p in v.split(".")))


def load_table(trt_version: str) -> OpTable:
    """The table for ``trt_version`` (``"10.3"``; a longer version such as ``"10.3.0.30"`` matches its
    major.minor). ``ValueError`` names the available versions when there is none."""
    key = ".".join(str(trt_version).split(".")[:2])
    if key not in available_versions():
        raise ValueError(f"no TensorRT operator table for {trt_version!r}; available: {available_versions()}")
    return _load(key)


@cache
def _load(key: str) -> OpTable:
    text = resources.files("mobilevlm_export.backends").joinpath("tensorrt_ops", f"{key}.json").read_text()
    d = json.loads(text)
    t = d["types"]
    return OpTable(d["trt_version"], d["source"], d["opset"]["min"], d["opset"]["max"], frozenset(t["supported"]),
                   frozenset(t.get("cast_down", ())), frozenset(t.get("quantized_only", ())), d["ops"],
                   d.get("domains", {}).get(TRT_DOMAIN, {}))


def type_name(elem_type: int) -> str:
    """The table's name for an ONNX element type (FP32, FP16, INT4, ...; ONNX's own name for the others)."""
    return _ABBREV.get(elem_type) or TensorProto.DataType.Name(elem_type)


def lint_file(path: str | Path, trt_version: str = "10.3", graph_name: str | None = None) -> list[Finding]:
    """``lint`` of the ONNX file at ``path`` (``graph_name`` defaults to the file's stem). External weights are
    not loaded; the few small tensors whose values are checked (scales, zero points) are read on demand."""
    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    return lint(model, graph_name or path.stem, trt_version, base_dir=path.parent)


def lint(model: onnx.ModelProto, graph_name: str, trt_version: str = "10.3",
         base_dir: str | Path | None = None) -> list[Finding]:
    """Every ``Finding`` for ``model`` against TensorRT ``trt_version``'s ONNX parser (see the module doc), in
    graph order, without duplicates. ``base_dir``: where external data lives, for tensors stored outside the
    model (``lint_file`` sets it)."""
    return _Linter(model, graph_name, load_table(trt_version), base_dir).run()


class _Linter:
    def __init__(self, model: onnx.ModelProto, graph_name: str, table: OpTable, base_dir) -> None:
        self.model = model
        self.name = graph_name
        self.table = table
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.findings: list[Finding] = []
        self._seen: set[tuple] = set()
        self.functions = {(f.domain, f.name) for f in model.functions}

    def add(self, node: onnx.NodeProto | None, check: str, reason: str, tensor: str = "") -> None:
        nname = (node.name or f"<unnamed {node.op_type}>") if node is not None else ""
        op = node.op_type if node is not None else ""
        if node is not None and node.domain not in STANDARD_DOMAINS and op:
            op = f"{node.domain}::{op}"
        key = (nname, op, check, tensor, reason)
        if key not in self._seen:
            self._seen.add(key)
            self.findings.append(Finding(self.name, nname, op, check, reason, tensor))

    def run(self) -> list[Finding]:
        self._check_opset()
        self.types = self._infer_types()
        self._graph(self.model.graph, top=True)
        for f in self.model.functions:
            for n in f.node:
                self._node(n, {}, {})
        return self.findings

    # -- model level -------------------------------------------------------------------------------------------
    def _check_opset(self) -> None:
        t = self.table
        for o in self.model.opset_import:
            if o.domain in STANDARD_DOMAINS and not t.opset_min <= o.version <= t.opset_max:
                self.add(None, "opset", f"main opset {o.version} is outside the opsets TensorRT {t.trt_version}'s "
                                        f"parser takes ({t.opset_min} to {t.opset_max})")

    def _infer_types(self) -> dict[str, int]:
        types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - without inference the declared types are still checked
            inferred = self.model
        for g in (self.model.graph, inferred.graph):
            for v in (*g.input, *g.output, *g.value_info):
                if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                    types.setdefault(v.name, v.type.tensor_type.elem_type)
        self.inferred_value_info = [v for v in inferred.graph.value_info if v.type.HasField("tensor_type")]
        return types

    # -- graph level -------------------------------------------------------------------------------------------
    def _graph(self, g: onnx.GraphProto, top: bool = False, outer_consts: dict | None = None) -> None:
        consts: dict[str, TensorProto] = dict(outer_consts or {})
        consts.update({t.name: t for t in g.initializer})
        for n in g.node:
            if n.op_type == "Constant" and n.domain in STANDARD_DOMAINS:
                t = next((a.t for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                         None)
                if t is not None and n.output:
                    consts[n.output[0]] = t
        producers = {o: n for n in g.node for o in n.output if o}
        consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in g.node:
            for i, x in enumerate(n.input):
                if x:
                    consumers.setdefault(x, []).append((n, i))
        for t in g.initializer:
            self.types.setdefault(t.name, t.data_type)
        for name, t in consts.items():
            self.types.setdefault(name, t.data_type)

        # tensors of the graph: inputs, outputs, initializers, Constants, value_info (declared and inferred)
        io = {v.name for v in (*g.input, *g.output)}
        tensors: dict[str, int] = {}
        for v in (*g.input, *g.output, *g.value_info, *(self.inferred_value_info if top else [])):
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
                tensors.setdefault(v.name, v.type.tensor_type.elem_type)
        own = {x.name for x in g.initializer}
        for name, t in consts.items():
            if name in own or name in producers:  # this graph's constants (an outer scope checks its own)
                tensors.setdefault(name, t.data_type)
        for name, elem in tensors.items():
            self._tensor(name, elem, name in consts, name in io, producers, consumers)
        for n in g.node:
            self._node(n, consts, consumers)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    self._graph(sub, outer_consts=consts)

    def _tensor(self, name: str, elem: int, const: bool, io: bool, producers, consumers) -> None:
        t = self.table
        tn = type_name(elem)
        users = consumers.get(name, [])
        node = producers.get(name) or (users[0][0] if users else None)
        if tn == "INT4":
            if name in producers and _makes_int4(producers[name], self.types):
                return  # reported on the node
            ok = const and not io and users and all(_quantized_slot(n, i) for n, i in users)
            if not ok:
                where = "a graph input/output" if io else ("read by " + ", ".join(
                    f"{n.op_type} input {i}" for n, i in users[:3]) if users else "an activation")
                self.add(node, "int4", f"INT4 tensor {name!r} is {where}: TensorRT takes INT4 only as a weight "
                                       "(initializer) dequantized by DequantizeLinear", name)
            return
        if tn not in t.types:
            self.add(node, "dtype", f"tensor {name!r} is {tn}, a type TensorRT {t.trt_version} does not take", name)
        elif tn in t.cast_down:
            self.add(node, "dtype", f"tensor {name!r} is {tn}: TensorRT {t.trt_version} casts it down to FP32, "
                                    "clamping to +-FLT_MAX; use FP32", name)
        elif tn in t.quantized_only:
            # INT8/FP8: only as Q output / DQ input / zero point
            bad = [(n, i) for n, i in users if not _quantized_slot(n, i)]
            producer = producers.get(name)
            if io or bad or (producer is not None and producer.op_type not in QDQ_OPS and not const):
                why = "a graph input/output" if io else (f"read by {bad[0][0].op_type} input {bad[0][1]}" if bad
                                                         else f"produced by {producer.op_type}")
                self.add(node, "dtype", f"{tn} tensor {name!r} is {why}: TensorRT takes {tn} only through "
                                        "QuantizeLinear/DequantizeLinear", name)

    # -- node level --------------------------------------------------------------------------------------------
    def _node(self, n: onnx.NodeProto, consts: dict, consumers: dict) -> None:
        t = self.table
        if n.domain in STANDARD_DOMAINS:
            entry = t.ops.get(n.op_type)
            if entry is None:
                self.add(n, "op", f"{n.op_type} is not in TensorRT {t.trt_version}'s operator table: the parser "
                                  "has no importer for it and would look for a plugin")
            elif not entry.get("supported"):
                self.add(n, "op", f"{n.op_type} is marked unsupported in TensorRT {t.trt_version}'s operator table")
        elif n.domain == TRT_DOMAIN:
            entry = t.trt_ops.get(n.op_type)
            if entry is None:
                self.add(n, "op", f"trt::{n.op_type} has no importer in TensorRT {t.trt_version}'s parser")
        else:
            entry = None
            if (n.domain, n.op_type) not in self.functions:
                self.add(n, "op", f"{n.domain}::{n.op_type} is a custom-domain op: TensorRT {t.trt_version} has no "
                                  "importer for it (it would need a plugin of that name)")
        if entry:
            self._op_types(n, entry)
            for what, idx in entry.get("constant_inputs", {}).items():
                if len(n.input) > idx and n.input[idx] and n.input[idx] not in consts:
                    self.add(n, "constant_input", f"{n.op_type} input {idx} ({what}, {n.input[idx]!r}) must be an "
                                                  f"initializer for TensorRT {t.trt_version}", n.input[idx])
        if n.op_type in QDQ_OPS:
            self._qdq(n, consts)
        if _makes_int4(n, self.types):
            self.add(n, "int4", f"{n.op_type} produces an INT4 activation {n.output[0]!r}: TensorRT takes INT4 only "
                                "as a weight", n.output[0])

    def _op_types(self, n: onnx.NodeProto, entry: dict) -> None:
        allowed = entry.get("types")
        if not allowed:
            return
        ins, outs = _TYPED.get(n.op_type, ((0,), ()))
        names = [n.input[i] for i in ins if i < len(n.input)] + [n.output[i] for i in outs if i < len(n.output)]
        for x in names:
            elem = self.types.get(x) if x else None
            if elem and type_name(elem) not in allowed:
                self.add(n, "op_dtype", f"{n.op_type} on {type_name(elem)} ({x!r}): TensorRT {self.table.trt_version} "
                                        f"takes {', '.join(allowed)}", x)

    def _qdq(self, n: onnx.NodeProto, consts: dict) -> None:
        x = n.input[0] if n.input else ""
        scale = n.input[1] if len(n.input) > 1 else ""
        zp = n.input[2] if len(n.input) > 2 else ""
        is_dq = n.op_type in DQ_OPS
        if zp:
            if zp not in consts:
                self.add(n, "zero_point", f"zero point {zp!r} is not a constant: TensorRT needs it to be all zeros "
                                          "and checks that at parse time", zp)
            else:
                z = self._values(consts[zp])
                if z is not None and np.any(z.astype(np.float64) != 0):
                    self.add(n, "zero_point", f"zero point {zp!r} is not all zeros: TensorRT supports symmetric "
                                              "quantization only", zp)
            if self.types.get(zp) == TensorProto.UINT8 or (is_dq and self.types.get(x) == TensorProto.UINT8):
                self.add(n, "dtype", f"{n.op_type} with UINT8 data/zero point: TensorRT quantizes to INT8/INT4/FP8 "
                                     "only", zp)
        elif is_dq and self.types.get(x) == TensorProto.UINT8:
            self.add(n, "dtype", f"{n.op_type} of UINT8 {x!r}: TensorRT quantizes to INT8/INT4/FP8 only", x)
        if scale in consts:
            s = self._values(consts[scale])
            if s is not None and not np.all(s.astype(np.float64) > 0):
                self.add(n, "scale", f"scale {scale!r} has values <= 0: TensorRT requires every scale > 0", scale)
        if is_dq and x in consts:
            self._blocks(n, consts[x], consts.get(scale))

    def _blocks(self, n: onnx.NodeProto, x: TensorProto, scale: TensorProto | None) -> None:
        dims = list(x.dims)
        if x.data_type == TensorProto.INT4 and dims and dims[-1] % 2:
            self.add(n, "int4", f"INT4 weight {x.name!r} has an odd last dim ({dims[-1]}): TensorRT packs INT4 "
                                "along the last dim and rejects odd ones", x.name)
        block = next((a.i for a in n.attribute if a.name == "block_size"), 0)
        if not block or not dims:
            return
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        axis = axis + len(dims) if axis < 0 else axis
        if not 0 <= axis < len(dims):
            self.add(n, "block", f"axis {axis} is out of range for {x.name!r} of rank {len(dims)}", x.name)
            return
        if dims[axis] % block:
            self.add(n, "block", f"block size {block} does not divide dim {axis} (= {dims[axis]}) of {x.name!r}: "
                                 "TensorRT infers blocks from the scale's shape and needs whole blocks", x.name)
        if scale is not None:
            want = dims.copy()
            want[axis] = -(-dims[axis] // block)
            if list(scale.dims) != want:
                self.add(n, "block", f"scale {scale.name!r} has shape {list(scale.dims)}, expected {want} for "
                                     f"{x.name!r} {dims} in blocks of {block} along axis {axis}", scale.name)

    def _values(self, t: TensorProto) -> np.ndarray | None:
        if t.data_location == TensorProto.EXTERNAL:
            if self.base_dir is None:
                return None
            from onnx.external_data_helper import load_external_data_for_tensor

            t2 = TensorProto()
            t2.CopyFrom(t)
            load_external_data_for_tensor(t2, str(self.base_dir))
            t = t2
        try:
            return np.asarray(numpy_helper.to_array(t)).astype(np.float64)
        except (ValueError, TypeError):
            return None


def _makes_int4(n: onnx.NodeProto, types: dict[str, int]) -> bool:
    """Whether ``n`` computes an INT4 tensor at run time (QuantizeLinear to INT4, Cast to INT4)."""
    if n.op_type == "Cast":
        return any(a.name == "to" and a.i == TensorProto.INT4 for a in n.attribute)
    if n.op_type in ("QuantizeLinear", "TRT_INT4QuantizeLinear"):
        zp = n.input[2] if len(n.input) > 2 else ""
        out_dtype = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
        return (n.op_type == "TRT_INT4QuantizeLinear" or out_dtype == TensorProto.INT4
                or (bool(zp) and types.get(zp) == TensorProto.INT4))
    return False


def _quantized_slot(n: onnx.NodeProto, i: int) -> bool:
    """Whether input ``i`` of ``n`` takes a quantized tensor: DequantizeLinear's data, a Q/DQ zero point."""
    return (n.op_type in DQ_OPS and i == 0) or (n.op_type in QDQ_OPS and i == 2)
