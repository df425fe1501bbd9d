"""TensorRT on the device: what is needed to run engines here (``tensorrt_available``), and ``TensorRTRunner``, one
engine run through TensorRT's Python API (10.x: tensor-name API, ``execute_async_v3``) with ``cuda-python`` for
device memory.

Device buffers are allocated once per tensor at the largest shape any of the engine's optimization profiles takes
and reused on every call: no per-call ``cudaMalloc``/``cudaFree``. As ``runtime.sessions.DecoderBindings`` the
runner binds buffers the session owns (the KV cache in ping-pong buffers on the GPU) and only the new positions'
embeddings go up and the last position's logits come down. Every ``set_input_shape``,
``set_tensor_address`` and profile switch is checked; a refusal names the tensor, the shape and the profiles'
ranges.

``tensorrt`` and ``cuda-python`` are imported when a runner is made (``trt`` / ``cudart`` may be passed in
instead: the tests' double of their API), so this module imports without them. Nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilevlm_export.backends import Backend
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.graphs.contracts import GraphContract

# JetPack 6.x ships CUDA 12.6; cuda-python's major version must not be newer than the driver's CUDA major
CUDA_PYTHON_HINT = ("the package's jetpack6 extra pins cuda-python 12.6.x (JetPack 6, CUDA 12.6), jetpack7 13.0.x "
                    "(JetPack 7): pip install 'cuda-python>=12.6,<12.7'")


def import_tensorrt():
    """``tensorrt`` or ``UserError`` saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError(f"tensorrt is not importable ({exc}); on a Jetson it comes with JetPack "
                        "(python3-libnvinfer; make the venv with --system-site-packages), elsewhere from NVIDIA's "
                        "index (pip install tensorrt)") from None
    return trt


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime`` from 12.6 on, ``cuda.cudart`` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _cuda_python_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("cuda-python", "cuda-bindings"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def tensorrt_available() -> str | None:
    """None when TensorRT, cuda-python and a CUDA device are usable here, else why not (one line)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "tensorrt is not importable (on a Jetson: JetPack's python3-libnvinfer, venv --system-site-packages)"
    try:
        cudart = import_cudart()
    except ImportError:
        return f"cuda-python is not importable ({CUDA_PYTHON_HINT})"
    return cuda_problem(cudart, _cuda_python_version())


def cuda_problem(cudart, cuda_python: str | None) -> str | None:
    """Why ``cudart`` cannot run engines here (cuda-python newer than the driver, no device), or None."""
    err, driver = cudart.cudaDriverGetVersion()
    if int(err) != 0 or not driver:
        return "no CUDA driver (cudaDriverGetVersion failed)"
    driver_major = int(driver) // 1000
    major = int(cuda_python.split(".")[0]) if cuda_python else None
    if major is not None and major > driver_major:
        return (f"cuda-python {cuda_python} needs a CUDA {major} driver; this driver is CUDA "
                f"{driver_major}.{int(driver) % 1000 // 10} ({CUDA_PYTHON_HINT})")
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return f"no CUDA device (cudaGetDeviceCount: {err})"
    return None


def _check(result, what: str):
    """cuda-python returns (error, *values): raise on an error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise CheckFailed(f"{what}: CUDA error {err}")
    return values[0] if len(values) == 1 else (values or None)


class TensorRTRunner:
    """One engine: ``run(feeds)`` (a ``backends.Runner``) and the ``DecoderBindings`` of a ``BoundKVSession``.
    Each call selects the first optimization profile whose ranges take every input's shape (the decoder's
    prefill profile for a prompt, its decode profile for one token over a cache)."""

    backend = Backend.TENSORRT

    def __init__(self, engine_path: Path, contract: GraphContract, trt=None, cudart=None) -> None:
        self._trt = trt or import_tensorrt()
        self._cudart = cudart or import_cudart()
        self.contract = contract
        self.path = Path(engine_path)
        self._logger = self._trt.Logger(self._trt.Logger.WARNING)
        self._runtime = self._trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise UserError(f"{engine_path}: TensorRT cannot load this engine (built by another TensorRT version or "
                            "for another GPU? rebuild it with `mvlm-export trt-build`)")
        names = {self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)}
        want = {t.name for t in (*contract.inputs, *contract.outputs)}
        if names != want:
            raise UserError(f"{engine_path}: the engine's tensors {sorted(names ^ want)[:4]} differ from the graph's "
                            "contract in manifest.json (an engine of another graph or build?)")
        self._check_io(contract)
        self._context = self._engine.create_execution_context()
        self._stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._profiles = self._engine.num_optimization_profiles
        self._profile = -1
        self._dtypes = {n: np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._owned: dict[int, int] = {}  # device pointer -> bytes, every buffer this runner allocated
        self._io: dict[str, int] = {}     # run(): tensor name -> its buffer (allocated on first use, at max shape)

    def threads_used(self) -> None:
        return None  # (the GPU)

    def _check_io(self, contract: GraphContract) -> None:
        """``UserError`` naming the engine, the tensor and both specs when a tensor's dtype, rank or static dims
        (``get_tensor_dtype`` / ``get_tensor_shape``, -1 for a dynamic dim) differ from ``contract``'s."""
        from mobilevlm_export.graphs.contracts import FoundSpec, contract_mismatch, io_mismatch

        engine, trt = self._engine, self._trt
        found: dict[bool, list[FoundSpec]] = {True: [], False: []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = engine.get_tensor_dtype(name)
            try:
                dtype_name = np.dtype(trt.nptype(dtype)).name
            except TypeError:  # a TensorRT type numpy has no name for (bfloat16, fp8, int4)
                dtype_name = str(dtype)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            found[is_input].append(FoundSpec(name, dtype_name, tuple(int(d) for d in engine.get_tensor_shape(name))))
        why = io_mismatch(contract, found[True], found[False])
        if why:
            raise UserError(contract_mismatch(self.path, contract, why, "engine"))

    # -- profiles ------------------------------------------------------------------------------------------------
    def _ranges(self, name: str, profile: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lo, _, hi = self._engine.get_tensor_profile_shape(name, profile)
        return tuple(lo), tuple(hi)

    def _fits(self, shapes: dict[str, tuple[int, ...]], profile: int) -> bool:
        for name, shape in shapes.items():
            lo, hi = self._ranges(name, profile)
            if len(lo) != len(shape) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return False
        return True

    def _describe(self, shapes: dict[str, tuple[int, ...]]) -> str:
        name = next((n for n in shapes if n.startswith("past_key_values")), next(iter(shapes)))
        embeds = "inputs_embeds" if "inputs_embeds" in shapes else name
        parts = []
        for p in range(self._profiles):
            ranges = {n: self._ranges(n, p) for n in dict.fromkeys((embeds, name))}
            parts.append(f"profile {p}: " + ", ".join(f"{n} {list(lo)}..{list(hi)}" for n, (lo, hi) in ranges.items()))
        got = ", ".join(f"{n} {list(shapes[n])}" for n in dict.fromkeys((embeds, name)))
        return f"{got}; {'; '.join(parts)}"

    def _select(self, shapes: dict[str, tuple[int, ...]]) -> None:
        profile = next((p for p in range(self._profiles) if self._fits(shapes, p)), None)
        if profile is None:
            raise CheckFailed(f"{self.path.name}: no optimization profile of the engine takes these shapes "
                              f"({self._describe(shapes)})")
        if profile != self._profile:
            if not self._context.set_optimization_profile_async(profile, self._stream):
                raise CheckFailed(f"{self.path.name}: TensorRT refused optimization profile {profile}")
            self._profile = profile

    # -- DecoderBindings -----------------------------------------------------------------------------------------
    def allocate(self, nbytes: int) -> int:
        n = max(int(nbytes), 1)
        ptr = int(_check(self._cudart.cudaMalloc(n), f"cudaMalloc({n})"))
        self._owned[ptr] = n
        return ptr

    def upload(self, buf: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._bounds(buf, 0, array.nbytes, "upload")
        if array.nbytes:
            _check(self._cudart.cudaMemcpyAsync(buf, array.ctypes.data, array.nbytes,
                                                self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream),
                   "cudaMemcpyAsync host->device")
            # the host array must outlive the copy: wait for it (the inputs of one call are small)
            _check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def download(self, buf: int, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        self._bounds(buf, offset, out.nbytes, "download")
        if out.nbytes:
            _check(self._cudart.cudaMemcpyAsync(out.ctypes.data, buf + offset, out.nbytes,
                                                self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream),
                   "cudaMemcpyAsync device->host")
        _check(self._cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def _bounds(self, buf: int, offset: int, nbytes: int, what: str) -> None:
        size = self._owned.get(buf)
        if size is not None and offset + nbytes > size:
            raise CheckFailed(f"{self.path.name}: {what} of {nbytes} bytes at offset {offset} overruns a buffer of "
                              f"{size}")

    def execute(self, inputs: dict, outputs: dict) -> None:
        ctx = self._context
        self._select({name: tuple(shape) for name, (_, shape) in inputs.items()})
        for name, (buf, shape) in inputs.items():
            self._bounds(buf, 0, int(np.prod(shape)) * self._dtypes[name].itemsize, f"input {name}")
            if not ctx.set_input_shape(name, tuple(shape)):
                raise CheckFailed(f"{self.path.name}: TensorRT refused input shape {list(shape)} for {name} in "
                                  f"profile {self._profile} ({self._describe({name: tuple(shape)})})")
            if not ctx.set_tensor_address(name, buf):
                raise CheckFailed(f"{self.path.name}: TensorRT refused the address of input {name}")
        for name, (buf, shape) in outputs.items():
            got = tuple(ctx.get_tensor_shape(name))
            if got != tuple(shape):
                raise CheckFailed(f"{self.path.name}: output {name} has shape {list(got)} for these inputs, "
                                  f"expected {list(shape)}")
            self._bounds(buf, 0, int(np.prod(shape)) * self._dtypes[name].itemsize, f"output {name}")
            if not ctx.set_tensor_address(name, buf):
                raise CheckFailed(f"{self.path.name}: TensorRT refused the address of output {name}")
        if not ctx.execute_async_v3(self._stream):
            raise CheckFailed(f"{self.path.name}: TensorRT execution failed (see its log above)")

    # -- Runner ------------------------------------------------------------------------------------------------
    def _io_buffer(self, name: str) -> int:
        """``run()``'s buffer for tensor ``name``, allocated once at the largest shape any profile gives it."""
        if name not in self._io:
            if any(t.name == name for t in self.contract.inputs):
                shapes = [self._ranges(name, p)[1] for p in range(self._profiles)]
            else:  # an output: its shape at every profile's max inputs
                shapes = [self._output_max(name, p) for p in range(self._profiles)]
            self._io[name] = self.allocate(max(int(np.prod(s)) for s in shapes) * self._dtypes[name].itemsize)
        return self._io[name]

    def _output_max(self, name: str, profile: int) -> tuple[int, ...]:
        self._select({t.name: self._ranges(t.name, profile)[1] for t in self.contract.inputs})
        for t in self.contract.inputs:
            self._context.set_input_shape(t.name, self._ranges(t.name, profile)[1])
        return tuple(self._context.get_tensor_shape(name))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = {t.name: np.ascontiguousarray(feeds[t.name], dtype=self._dtypes[t.name]) for t in self.contract.inputs}
        for t in (*self.contract.inputs, *self.contract.outputs):
            self._io_buffer(t.name)
        self._select({n: a.shape for n, a in arrays.items()})
        for name, a in arrays.items():
            if not self._context.set_input_shape(name, a.shape):
                raise CheckFailed(f"{self.path.name}: TensorRT refused input shape {list(a.shape)} for {name}")
        shapes = {t.name: tuple(self._context.get_tensor_shape(t.name)) for t in self.contract.outputs}
        for name, a in arrays.items():
            self.upload(self._io[name], a)
        self.execute({n: (self._io[n], a.shape) for n, a in arrays.items()},
                     {n: (self._io[n], s) for n, s in shapes.items()})
        return {n: self.download(self._io[n], 0, s, self._dtypes[n]) for n, s in shapes.items()}

    def close(self) -> None:
        for ptr in list(getattr(self, "_owned", {})):
            self._cudart.cudaFree(ptr)
        self._owned = {}

    def __del__(self) -> None:
        self.close()
