"""ONNX backend: export a split graph with ``torch.onnx.export(dynamo=True)``, run it with ONNX Runtime.

Export names every input/output and symbolic dim after the graph's contract, checks that no dynamic dim was
specialized, and keeps an ``onnxsim``-simplified graph only when ONNX Runtime gives the same outputs for it.
The runner side (``OnnxRunner``) needs numpy and onnxruntime only; torch is imported by export alone.
"""

from __future__ import annotations

import copy
import inspect
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilevlm_export.backends import Backend
from mobilevlm_export.graphs.contracts import SAMPLE_SIZES, GraphContract

OPSET = 21
ALIGN = 64  # bytes: the alignment of the host buffers the IO-bound session allocates
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's limit is 2 GiB; leave room for the graph itself
# shape sets the simplified graph is checked on: prefill (past = 0), decode (seq = 1), batch 1 and 2
CHECK_SIZES = [SAMPLE_SIZES, {**SAMPLE_SIZES, "batch": 1, "past": 0, "seq": 7},
               {**SAMPLE_SIZES, "batch": 1, "seq": 1, "past": 9}]


def needs_external_data(weight_bytes: int) -> bool:
    """Whether a graph holding ``weight_bytes`` of weights is written with external data (``.onnx.data``): they come
    near protobuf's 2 GB limit for one serialized message. The one test of it, for export, save and calibration."""
    return weight_bytes > EXTERNAL_DATA_BYTES


@dataclass
class ExportInfo:
    file: str
    external_data: str | None
    simplified: bool
    simplify_note: str
    export_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def export_graph(graph, path: Path, simplify: bool = True) -> ExportInfo:
    """Write ``graph`` (a ``graphs.split.Graph``) to ``path`` (an ``.onnx`` file, plus ``.onnx.data`` when the
    weights need it, ``needs_external_data``)."""
    import time

    import torch

    t0 = time.perf_counter()
    c = graph.contract
    feeds = graph.sample_inputs()
    tensors = [torch.from_numpy(feeds[t.name]) for t in c.inputs]
    fixed = _fixed_arity(graph.module)
    args = tuple(tensors)  # flat; dynamic_shapes groups the *varargs (the KV cache) as one entry
    auto = torch.export.Dim.AUTO
    shapes = [{i: auto for i, d in enumerate(t.dims) if isinstance(d, str)} for t in c.inputs]
    dynamic = tuple(shapes[:fixed]) + ((tuple(shapes[fixed:]),) if len(shapes) > fixed else ())
    weight_bytes = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    external = needs_external_data(weight_bytes)
    program = torch.onnx.export(
        graph.module, args, dynamo=True, opset_version=OPSET, optimize=True, verbose=False,
        input_names=[t.name for t in c.inputs], output_names=[t.name for t in c.outputs],
        dynamic_shapes=dynamic,
    )
    model = program.model_proto
    del program
    _drop_rewriter_state()
    drop_source_locations(model)
    _name_dims(model, c)
    note = "not requested"
    simplified = False
    if simplify and not external:
        model, simplified, note = _simplify_if_equal(model, c)
    save_model(model, path, external)
    data_name = None
    if external:
        data_name = path.name + ".data"
        note = "skipped: weights exceed 2 GB (external data)"
    return ExportInfo(path.name, data_name, simplified, note, round(time.perf_counter() - t0, 3))


# node metadata torch.onnx records from the Python stack that made each node: the build machine's file paths and
# line numbers, which would make a graph's bytes depend on where and from which revision of the code it was built
SOURCE_LOCATION_KEYS = frozenset({"pkg.torch.onnx.stack_trace"})


def drop_source_locations(model) -> None:
    """Remove ``SOURCE_LOCATION_KEYS`` metadata from every node of ``model`` (its functions' and subgraphs'
    too), in place: the same computation exported from another checkout is the same file."""
    def clean(nodes) -> None:
        for node in nodes:
            kept = [p for p in node.metadata_props if p.key not in SOURCE_LOCATION_KEYS]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
            for attr in node.attribute:
                if attr.g.node:
                    clean(attr.g.node)
                for g in attr.graphs:
                    clean(g.node)

    clean(model.graph.node)
    for fn in model.functions:
        clean(fn.node)


def _drop_rewriter_state() -> None:
    """Let the exported graph go. onnxscript's rewrite rules (module-level objects the exporter's optimizer runs)
    keep the last graph they matched (``SimplePatternMatcher._graph``, ``_current_node``, ``_match`` in onnxscript
    0.7), and that graph's initializers wrap the module's weights: after a full-size decoder's export they held
    its 2.8 GB of fp16 weights until the process ended. Each match sets these again before using them."""
    import gc

    try:
        from onnxscript.rewriter._matcher import SimplePatternMatcher
    except ImportError:  # another onnxscript layout: nothing known to drop
        return
    for obj in gc.get_objects():
        if issubclass(type(obj), SimplePatternMatcher):  # (not isinstance: some objects warn when asked __class__)
            for attr in ("_graph", "_current_node", "_match", "_tracer"):
                if attr in vars(obj):
                    setattr(obj, attr, None)


def _fixed_arity(module) -> int:
    params = inspect.signature(module.forward).parameters.values()
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _name_dims(model, c: GraphContract) -> None:
    """Give graph I/O the contract's dim symbols; fail if export fixed a dim the contract says is dynamic."""
    specs = {t.name: t for t in (*c.inputs, *c.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = specs[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.dims):
            raise RuntimeError(f"{c.name}: {value.name} has rank {len(dims)}, contract says {len(spec.dims)}")
        for d, want in zip(dims, spec.dims, strict=True):
            if isinstance(want, str):
                if d.HasField("dim_value"):
                    raise RuntimeError(f"{c.name}: dim '{want}' of {value.name} was specialized to {d.dim_value}")
                d.dim_param = want
            elif d.HasField("dim_param") or d.dim_value != want:
                raise RuntimeError(f"{c.name}: {value.name} dim is {d.dim_param or d.dim_value}, contract {want}")
    del model.graph.value_info[:]  # exporter-internal symbols (s0, s1, ...) would contradict the names above


def _simplify_if_equal(model, c: GraphContract):
    """onnxsim's graph when ONNX Runtime gives the same outputs on every check shape; the original otherwise."""
    try:
        import onnxsim
    except ImportError:
        return model, False, "skipped: onnxsim is not installed"
    try:
        simple, ok = onnxsim.simplify(model)
    except Exception as exc:  # noqa: BLE001 - onnxsim failing is a reason to keep the original
        return model, False, f"kept original: onnxsim failed ({type(exc).__name__})"
    if not ok:
        return model, False, "kept original: onnxsim's own check failed"

    a, b = cpu_session(model.SerializeToString()), cpu_session(simple.SerializeToString())
    worst = 0.0
    for sizes in CHECK_SIZES:
        feeds = c.sample_inputs(sizes)
        for x, y in zip(a.run(None, feeds), b.run(None, feeds), strict=True):
            if x.shape != y.shape:
                return model, False, f"kept original: onnxsim changed an output shape {x.shape} -> {y.shape}"
            worst = max(worst, float(np.max(np.abs(x.astype(np.float64) - y), initial=0.0)))
    if worst > 1e-6:
        return model, False, f"kept original: onnxsim changed outputs (max abs diff {worst:.3g})"
    n0, n1 = len(model.graph.node), len(simple.graph.node)
    return simple, True, f"simplified {n0} -> {n1} nodes, outputs equal (max abs diff {worst:.3g})"


def cpu_session(model_bytes_or_path, threads: int | None = None, calibration: bool = False):
    """A CPU session; ``threads`` (intra-op) is the session's own setting (default:
    ``cores.onnx_default_threads``). ``calibration`` (a calibration pass over an fp16 graph) turns graph
    optimizations off, since folding would store fp32 copies of its weights, and the CPU memory arena too: ONNX
    Runtime's CPU kernels run fp16 MatMuls through fp32 casts of the weights, and the arena kept growing by those
    casts' size on every run (measured: +1 GB per run over 512 MB of fp16 weights; flat without the arena)."""
    import onnxruntime as ort

    from mobilevlm_export.cores import onnx_default_threads

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or onnx_default_threads()
    opts.inter_op_num_threads = 1
    # nodes that depend on weights only (the fp32 casts of fp16 weights on CPU, the DequantizeLinear of Q/DQ
    # weights) otherwise all run first, and every converted weight is alive at once: a full-size fp16 decoder's run
    # peaked at 5.8 GB over its 2.6 GB of weights in the default order, 3.2 GB in priority order
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    opts.log_severity_level = 3
    # exact int4 Q/DQ matmuls (ORT otherwise fuses them into MatMulNBits with int8 activations)
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
    if calibration:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(model_bytes_or_path, sess_options=opts, providers=["CPUExecutionProvider"])


def save_model(model, path: Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path``, its weights to ``path.data`` when ``external`` (None: when they come near
    protobuf's 2 GB limit). The external-data write moves the weights out of ``model``: pass a copy to keep it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if external is None:
        external = needs_external_data(initializer_bytes(model.graph))
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path



def ort_session(model, threads: int | None = None, calibration: bool = False):
    """A CPU ONNX Runtime session over ``model`` (an ``onnx.ModelProto`` in memory, or an ``.onnx`` path;
    ``cpu_session``'s options: exact int4 Q/DQ MatMuls). ``calibration``: the session of a calibration pass
    (``cpu_session``'s): graph optimizations off (constant folding would store fp32 copies of fp16 weights) and no
    CPU memory arena; and ``model`` is a copy the caller drops, so one over 2 GB gives its weights to the temporary
    file instead of being copied again."""
    if isinstance(model, Path):
        return cpu_session(str(model), threads, calibration=calibration)
    if not needs_external_data(initializer_bytes(model.graph)):
        return cpu_session(model.SerializeToString(), threads, calibration=calibration)
    with tempfile.TemporaryDirectory() as tmp:  # over protobuf's 2 GB: through a file with external data
        path = save_model(model if calibration else copy.deepcopy(model), Path(tmp) / "model.onnx", external=True)
        return cpu_session(str(path), threads, calibration=calibration)


def tensor_bytes(t) -> int:
    """Stored bytes of an initializer (an ``onnx.TensorProto``: external data by its recorded length, else from
    its dims; int4 packed two per byte)."""
    from onnx import TensorProto, helper

    if t.data_location == TensorProto.EXTERNAL:
        length = next((int(e.value) for e in t.external_data if e.key == "length"), None)
        if length is not None:
            return length
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
        return (math.prod(t.dims) + 1) // 2
    return math.prod(t.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def initializer_bytes(g) -> int:
    """Stored bytes of every initializer of the graph ``g`` (``tensor_bytes``)."""
    return sum(tensor_bytes(t) for t in g.initializer)


def opset_version(model, domain: str = "") -> int:
    """The version ``model`` imports of ``domain`` (``""``: the main domain, also spelled ``ai.onnx``); 0 if
    none."""
    return next((o.version for o in model.opset_import if o.domain in ((domain, "ai.onnx") if not domain
                                                                          else (domain,))), 0)


def set_opset_version(model, domain: str, version: int) -> None:
    """Set (or add) ``model``'s import of ``domain`` (``""``: the main domain) to ``version``."""
    from onnx import helper

    for o in model.opset_import:
        if o.domain == domain or (not domain and o.domain == "ai.onnx"):
            o.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))

# ONNX Runtime's type strings (``NodeArg.type``) -> numpy dtype names (the contracts' dtypes)
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16", "tensor(int8)": "int8",
              "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def check_graph_io(session, path: Path, contract: GraphContract) -> None:
    """``UserError`` naming ``path``, the tensor and both specs when the graph ``session`` loaded takes or gives other
    tensors than ``contract`` (``graphs.contracts.io_mismatch``): a file of another graph or build, re-signed into
    this one, is refused before it runs instead of failing inside ONNX Runtime."""
    from mobilevlm_export.errors import UserError
    from mobilevlm_export.graphs.contracts import FoundSpec, contract_mismatch, io_mismatch

    def found(args) -> list[FoundSpec]:
        return [FoundSpec(a.name, ORT_DTYPES.get(a.type, a.type),
                          tuple(d if isinstance(d, int) else d or None for d in (a.shape or ())))
                for a in args]

    why = io_mismatch(contract, found(session.get_inputs()), found(session.get_outputs()))
    if why:
        raise UserError(contract_mismatch(path, contract, why))


class OnnxRunner:
    """An ONNX Runtime session over one graph file, fed and read by contract names. Also the ``DecoderBindings``
    of ``runtime.sessions.BoundKVSession`` (ONNX Runtime's IO binding over host buffers the session allocates
    once): outputs are written straight into the buffer the next call reads, nothing is copied between calls."""

    backend = Backend.ONNXRUNTIME

    def __init__(self, path: Path, contract: GraphContract, threads: int | None = None) -> None:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        from mobilevlm_export.errors import UserError

        self.contract = contract
        self._threads = threads
        load_errors = (ort_errors.Fail, ort_errors.InvalidArgument, ort_errors.InvalidGraph,
                       ort_errors.InvalidProtobuf, ort_errors.NoSuchFile, ort_errors.NotImplemented, RuntimeError)
        from mobilevlm_export.quiet import native_stderr_filtered

        try:
            with native_stderr_filtered():  # ONNX Runtime's own error log repeats what the one line below says
                self.session = cpu_session(str(path), threads)
        except load_errors as exc:  # not a model, a graph it cannot run, missing weights
            raise UserError(f"{path}: ONNX Runtime cannot load it ({' '.join(str(exc).split())[:200]})") from None
        check_graph_io(self.session, path, contract)
        self._outputs = [t.name for t in contract.outputs]
        self._dtypes = {t.name: np.dtype(t.dtype) for t in (*contract.inputs, *contract.outputs)}
        self._buffers: dict[int, np.ndarray] = {}  # address -> the host buffer there
        self._binding = None

    def threads_used(self) -> int:
        from mobilevlm_export.cores import onnx_default_threads

        return self._threads or onnx_default_threads()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype) for t in self.contract.inputs}
        return dict(zip(self._outputs, self.session.run(self._outputs, inputs), strict=True))

    # -- DecoderBindings -------------------------------------------------------------------------------------
    def allocate(self, nbytes: int) -> int:
        """A host buffer of ``nbytes`` at a 64-byte boundary (ONNX Runtime's own allocator's alignment)."""
        raw = np.empty(max(nbytes, 1) + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        buf = raw[start:start + max(nbytes, 1)]
        self._buffers[buf.ctypes.data] = buf
        return buf.ctypes.data

    def _view(self, buf: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raw = self._buffers[buf]
        n = self._fits(buf, offset, shape, dtype)
        return raw[offset:offset + n].view(dtype).reshape(shape)

    def _fits(self, buf: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> int:
        """The bytes of a ``shape`` tensor at ``offset``; ``ValueError`` unless it lies inside buffer ``buf``."""
        n = math.prod(shape) * dtype.itemsize
        if offset + n > self._buffers[buf].nbytes:
            raise ValueError(f"{n} bytes at offset {offset} overrun a buffer of {self._buffers[buf].nbytes}")
        return n

    def upload(self, buf: int, array: np.ndarray) -> None:
        self._view(buf, 0, array.shape, array.dtype)[...] = array

    def download(self, buf: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return self._view(buf, offset, shape, np.dtype(dtype)).copy()

    def execute(self, inputs: dict, outputs: dict) -> None:
        if self._binding is None:
            self._binding = self.session.io_binding()
        io = self._binding
        for name, (buf, shape) in inputs.items():
            dtype = self._dtypes[name]
            self._fits(buf, 0, shape, dtype)
            io.bind_input(name, "cpu", 0, dtype, shape, buf)
        for name, (buf, shape) in outputs.items():
            dtype = self._dtypes[name]
            self._fits(buf, 0, shape, dtype)
            io.bind_output(name, "cpu", 0, dtype, shape, buf)
        self.session.run_with_iobinding(io)
