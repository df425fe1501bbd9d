"""A test double of TensorRT's Python API (10.x) and cuda-python's runtime, for testing the runner's logic where
TensorRT cannot be installed. It is NOT TensorRT and is never reported as such: it lives in tests only, and its
"engine" is ONNX Runtime running the bundle's standard-form ONNX graph.

What it enforces, from TensorRT's documented contract (``IExecutionContext``, ``ICudaEngine``, TensorRT 10.3):

- ``set_input_shape(name, shape)`` returns False for a name that is not an input, a rank that differs, or a shape
  outside the selected optimization profile's [min, max]; ``get_tensor_shape`` of an output is known only once
  every input shape is set.
- ``set_optimization_profile_async(index, stream)`` returns False for an index out of range; after a switch the
  input shapes must be set again (the double forgets them).
- ``set_tensor_address`` returns False for an unknown name; ``execute_async_v3`` returns False unless every I/O
  tensor has an address and every input a shape; the double also fails a test (``AssertionError``) when a bound
  address plus the tensor's bytes is not inside one device allocation (on a GPU that is memory corruption).
- ``get_tensor_profile_shape`` is for inputs only.

cuda-python's ``cudaMalloc`` / ``cudaFree`` / ``cudaMemcpyAsync`` are counted (``CudaDouble.mallocs``, ``frees``,
``copies``: (kind, device pointer, bytes)), so a test can assert what a decode step allocates and copies. Device
memory is host memory here, kept apart from the caller's host arrays by the allocation table.
"""

from __future__ import annotations

import ctypes
import json
from enum import IntEnum
from pathlib import Path
from types import SimpleNamespace

import numpy as np

DTYPES = {"float32": "FLOAT", "float16": "HALF", "int32": "INT32", "int64": "INT64"}


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3
    INT64 = 8


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32, DataType.INT64: np.int64}


class CudaDouble:
    """cuda-python's ``runtime`` module, as far as the runner uses it."""

    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)

    def __init__(self, driver: int = 12060, devices: int = 1) -> None:
        self.driver, self.devices = driver, devices
        self.memory: dict[int, np.ndarray] = {}  # device pointer -> its bytes
        self.mallocs = self.frees = 0
        self.copies: list[tuple[str, int, int]] = []

    def cudaDriverGetVersion(self):  # noqa: N802 - cuda-python's names
        return (0, self.driver)

    def cudaGetDeviceCount(self):  # noqa: N802
        return (0 if self.devices else 100, self.devices)

    def cudaStreamCreate(self):  # noqa: N802
        return (0, 1)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (0,)

    def cudaMalloc(self, n: int):  # noqa: N802
        buf = np.zeros(n, np.uint8)
        self.memory[buf.ctypes.data] = buf
        self.mallocs += 1
        return (0, buf.ctypes.data)

    def cudaFree(self, ptr: int):  # noqa: N802
        if ptr not in self.memory:
            return (1,)  # cudaErrorInvalidValue
        del self.memory[ptr]
        self.frees += 1
        return (0,)

    def device_range(self, ptr: int, nbytes: int) -> np.ndarray:
        """The device bytes [ptr, ptr + nbytes), which must lie inside one allocation."""
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + buf.nbytes:
                return buf[ptr - base:ptr - base + nbytes]
        raise AssertionError(f"{nbytes} bytes at device address {ptr:#x} are outside every allocation")

    def cudaMemcpyAsync(self, dst: int, src: int, n: int, kind: int, stream):  # noqa: N802
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.device_range(dst, n)
            self.copies.append(("h2d", dst, n))
        elif kind == self.cudaMemcpyKind.cudaMemcpyDeviceToHost:
            self.device_range(src, n)
            self.copies.append(("d2h", src, n))
        else:
            return (21,)  # cudaErrorInvalidMemcpyDirection
        ctypes.memmove(dst, src, n)
        return (0,)


class _Engine:
    def __init__(self, spec: dict, root: Path, cuda: CudaDouble, log: list) -> None:
        import onnxruntime as ort

        self.spec, self.cuda, self.log = spec, cuda, log
        self.contract = spec["contract"]
        self.inputs = {t["name"]: t for t in self.contract["inputs"]}
        self.outputs = {t["name"]: t for t in self.contract["outputs"]}
        self.profiles = spec["profiles"]  # [{"name", "shapes": {input: {"min", "opt", "max"}}}]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
        self.session = ort.InferenceSession(str(root / spec["onnx"]), opts, providers=["CPUExecutionProvider"])

    @property
    def num_io_tensors(self) -> int:
        return len(self.inputs) + len(self.outputs)

    def get_tensor_name(self, i: int) -> str:
        return [*self.inputs, *self.outputs][i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT if name in self.outputs else \
            TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        t = self.inputs.get(name) or self.outputs[name]
        return DataType[DTYPES[t["dtype"]]]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        """The engine's shape of an I/O tensor: -1 for each dynamic dim (``ICudaEngine.get_tensor_shape``)."""
        t = self.inputs.get(name) or self.outputs[name]
        return tuple(-1 if isinstance(d, str) else d for d in t["dims"])

    @property
    def num_optimization_profiles(self) -> int:
        return len(self.profiles)

    def get_tensor_profile_shape(self, name: str, profile: int):
        if name not in self.inputs:
            raise RuntimeError(f"{name} is not an input tensor")
        s = self.profiles[profile]["shapes"][name]
        return [tuple(s["min"]), tuple(s["opt"]), tuple(s["max"])]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine: _Engine) -> None:
        self.engine = engine
        self.profile = 0
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions = 0
        self.profile_switches = 0

    def set_optimization_profile_async(self, index: int, stream) -> bool:
        if not 0 <= index < self.engine.num_optimization_profiles:
            return False
        if index != self.profile:
            self.profile_switches += 1
        self.profile = index
        self.shapes = {}  # shapes are re-specified for the new profile
        return True

    def set_input_shape(self, name: str, shape) -> bool:
        if name not in self.engine.inputs:
            return False
        lo, _, hi = self.engine.get_tensor_profile_shape(name, self.profile)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
            return False
        self.shapes[name] = shape
        return True

    def _sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, t in self.engine.inputs.items():
            for d, n in zip(t["dims"], self.shapes[name], strict=True):
                if isinstance(d, str) and "+" not in d:
                    sizes[d] = n
        return sizes

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.engine.inputs:
            return self.shapes.get(name, tuple(-1 if isinstance(d, str) else d
                                               for d in self.engine.inputs[name]["dims"]))
        if set(self.shapes) != set(self.engine.inputs):  # unknown until every input shape is set
            return tuple(-1 for _ in self.engine.outputs[name]["dims"])
        sizes = self._sizes()
        return tuple(d if isinstance(d, int) else sum(sizes[s] for s in d.split("+"))
                     for d in self.engine.outputs[name]["dims"])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self.engine.inputs and name not in self.engine.outputs:
            return False
        self.addresses[name] = int(ptr)
        return True

    def _view(self, name: str, shape) -> np.ndarray:
        dtype = np.dtype(_NP[self.engine.get_tensor_dtype(name)])
        n = int(np.prod(shape)) * dtype.itemsize
        return self.engine.cuda.device_range(self.addresses[name], n).view(dtype).reshape(shape)

    def execute_async_v3(self, stream) -> bool:
        e = self.engine
        if set(self.shapes) != set(e.inputs) or set(self.addresses) != set(e.inputs) | set(e.outputs):
            return False
        feeds = {n: self._view(n, s).copy() for n, s in self.shapes.items()}
        names = list(e.outputs)
        for name, value in zip(names, e.session.run(names, feeds), strict=True):
            want = self.get_tensor_shape(name)
            assert tuple(value.shape) == want, (name, value.shape, want)
            self._view(name, want)[...] = value
        self.executions += 1
        e.log.append((self.profile, {n: s for n, s in self.shapes.items()}))
        return True


class TensorRTDouble:
    """The ``tensorrt`` module, as far as the runner uses it. ``engines``: every engine deserialized (its
    ``log`` of (profile, input shapes) per execution and its contexts)."""

    DataType = DataType
    TensorIOMode = TensorIOMode

    class Logger:
        WARNING = 2

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    def __init__(self, cuda: CudaDouble, root: Path) -> None:
        self.cuda, self.root = cuda, Path(root)
        self.contexts: list[_Context] = []
        self.log: list = []
        double = self

        class Runtime:
            def __init__(self, logger) -> None:
                pass

            def deserialize_cuda_engine(self, data: bytes):
                try:
                    spec = json.loads(data)
                except ValueError:
                    return None  # not an engine this "TensorRT" built
                engine = _Engine(spec, double.root, double.cuda, double.log)
                make = engine.create_execution_context

                def create():
                    ctx = make()
                    double.contexts.append(ctx)
                    return ctx

                engine.create_execution_context = create
                return engine

        self.Runtime = Runtime

    @staticmethod
    def nptype(dtype: DataType):
        return _NP[dtype]


def write_engines(bundle: Path) -> dict[str, Path]:
    """The double's "engines" for an orin bundle: per planned engine, a JSON file at the plan's engine path naming
    the standard-form ONNX graph (``graphs/<graph>.onnx``, which ONNX Runtime runs), the plan's profiles and the
    graph's contract. Returns graph -> engine path."""
    plan = json.loads((bundle / "build_plan.json").read_text())
    out = {}
    for e in plan["engines"]:
        path = bundle / e["engine"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"onnx": f"graphs/{e['graph']}.onnx", "profiles": e["profiles"],
                                    "contract": e["contract"]}))
        out[e["graph"]] = path
    return out
