"""ExecuTorch backend: one ``.pte`` program with the methods ExecuTorch's stock multimodal runner drives, lowered
to XNNPACK, and a runner over the ``executorch.runtime`` pybindings.

Methods (``extension/llm/runner/constants.h`` names): ``vision_encoder`` (pixel_values [1, 3, S, S] ->
image_embeds [1, image_tokens, H], projector fused), ``token_embedding`` (input_ids [1, T] -> [1, T, H]) and
``text_decoder`` (inputs_embeds [1, T, H], input_pos [T] -> logits [1, T, vocab]; the KV cache is mutable
buffers updated in place). Constant methods carry what the runner reads (``get_max_seq_len``, ``get_bos_id``,
``get_eos_ids``, ``use_kv_cache``, ...) and what a device app needs to preprocess an image without the
checkpoint (image size, mean/std, pad colour, the image placeholder id and token count).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm_export.backends import Backend
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.files import sha256
from mobilevlm_export.graphs.contracts import GraphContract
from mobilevlm_export.quiet import native_logs_shown, native_stderr_filtered

# ops that must run inside XNNPACK: a method where one of these stays on portable kernels fails the build
MATMUL_OPS = ("aten_linear", "aten_mm", "aten_addmm", "aten_bmm", "aten_matmul", "aten_convolution")


@dataclass
class MethodReport:
    method: str
    delegated_nodes: int
    portable_nodes: int
    delegated_subgraphs: int
    portable_ops: dict[str, int] = field(default_factory=dict)  # op -> count of nodes left on portable kernels


@dataclass
class ProgramInfo:
    file: str
    bytes: int
    methods: list[MethodReport]
    constant_methods: dict
    export_seconds: float
    lower_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _delegation(method: str, graph_module) -> MethodReport:
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    portable = {op: b.non_delegated for op, b in info.delegation_by_operator.items() if b.non_delegated}
    return MethodReport(method, info.num_delegated_nodes, info.num_non_delegated_nodes,
                        info.num_delegated_subgraphs, dict(sorted(portable.items())))


def _check_matmuls(report: MethodReport) -> None:
    left = {op: n for op, n in report.portable_ops.items() if any(op.startswith(m) for m in MATMUL_OPS)}
    if left:
        raise CheckFailed(f"{report.method}: matmuls fell back to portable kernels ({left}); "
                          "XNNPACK did not take them")


def export_program(modules: dict, samples: dict[str, tuple], dynamic: dict[str, object], path: Path,
                   constant_methods: dict, mutable_buffers_init: bool, partitioners, progress=None) -> ProgramInfo:
    """Export ``modules`` (keyed by method name) with their sample inputs and dynamic shapes, lower them in one
    call with the target's ``partitioners(method)`` (a fresh list per method, in the order they take nodes, as
    ExecuTorch's ``partitioner_lib`` gives them) and write the program to ``path``.

    Consumes ``modules``: each is popped once exported, so this function holds no module reference of its own
    through lowering and serialization."""
    import torch
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass
    from executorch.exir.passes.init_mutable_pass import InitializedMutableBufferPass
    from executorch.exir.passes.sym_shape_eval_pass import ConstraintBasedSymShapeEvalPass

    advance = progress or (lambda: None)
    t0 = time.perf_counter()
    programs = {}
    with torch.no_grad():
        for method in list(modules):
            programs[method] = torch.export.export(modules.pop(method), samples[method],
                                                   dynamic_shapes=dynamic.get(method), strict=False)
            advance()
    names = list(programs)
    t1 = time.perf_counter()

    edge = to_edge_transform_and_lower(
        programs, partitioner={m: partitioners(m) for m in programs}, constant_methods=constant_methods,
        compile_config=EdgeCompileConfig(_check_ir_validity=False))
    del programs
    reports = [_delegation(m, edge.exported_program(m).graph_module) for m in names]
    for r in reports:
        _check_matmuls(r)
    advance()
    passes = [InitializedMutableBufferPass(["k_cache", "v_cache"])] if mutable_buffers_init else []
    et = edge.to_executorch(ExecutorchBackendConfig(
        extract_delegate_segments=True, passes=passes,
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False),
        sym_shape_eval_pass={m: ConstraintBasedSymShapeEvalPass() for m in names}))
    del edge
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        et.write_to_file(f)
    del et
    trust_written_program(path)
    _release_lowering_memory()
    advance()
    return ProgramInfo(path.name, path.stat().st_size, reports, constant_methods, round(t1 - t0, 2),
                       round(time.perf_counter() - t1, 2))


def _release_lowering_memory() -> None:
    """Free what lowering left behind. Two process-wide caches keep lowered graphs, their exported programs and
    so the weights alive after the program is written: ExecuTorch's ``exir.backend.utils.is_same_node`` (an
    unbounded ``lru_cache`` over graph nodes) and PyTorch's fake-tensor dispatch cache (its keys hold the lowered
    modules); the graphs are cyclic, hence the collection. Measured on a 1 GB fp32 program: RSS after export
    2473 -> 2150 MB. Other holders inside ExecuTorch (a shape environment's cache, the XNNPACK partitioner's
    rejection loggers) keep about 0.6 of the weights' size alive until the process ends."""
    import gc

    from executorch.exir.backend.utils import is_same_node
    from torch._subclasses.fake_tensor import FakeTensorMode

    is_same_node.cache_clear()
    FakeTensorMode.cache_clear()
    gc.collect()


class LoadedProgram:
    """A loaded ``.pte``. While one is alive its XNNPACK delegates hold the runtime's threadpool, which must then
    keep its size (``set_threads``)."""

    live = 0

    def __init__(self, program) -> None:
        self.program = program
        LoadedProgram.live += 1

    def load_method(self, name: str):
        return self.program.load_method(name)

    def metadata(self, name: str):
        """The method's ``MethodMeta`` (its inputs' and outputs' dtypes and sizes), without loading it."""
        return self.program.metadata(name)

    def __del__(self) -> None:
        LoadedProgram.live -= 1


# The environment of a process that runs programs and no PyTorch model. ExecuTorch runs its kernels on its own
# threadpool (``set_threads``), but in a Python process the LLM custom ops' fp32 products (``llama.custom_sdpa``'s
# q.k and p.v) call the BLAS that PyTorch's library exports: MKL on an OpenMP team as wide as the host, whose threads
# then contend with that pool. Measured at 1.7B width, 4 layers, 2 threads (ETDump): custom_sdpa 500-850 us a layer
# at 104-136 cached positions, 150-220 us with one OpenMP thread. ExecuTorch's C++ runners carry no PyTorch.
RUNTIME_PROCESS_ENV = {"OMP_NUM_THREADS": "1"}


def prepare_runtime_process() -> None:
    """Give this process ``RUNTIME_PROCESS_ENV``, each variable where the user set none, if PyTorch has not been
    loaded yet (its OpenMP reads the environment once, when it loads). For processes that run built programs and no
    PyTorch model: the CLI's ``run``, ``bench`` and ``verify``."""
    if "torch" not in sys.modules:
        for key, value in RUNTIME_PROCESS_ENV.items():
            os.environ.setdefault(key, value)


def openmp_contention(threads_of_pytorch: int | None) -> str | None:
    """A note when ExecuTorch programs ran in a process whose PyTorch has an OpenMP team of more than one thread
    (``threads_of_pytorch``; None: PyTorch not loaded), as in a build's own process."""
    if not threads_of_pytorch or threads_of_pytorch <= 1:
        return None
    return (f"this process's PyTorch has {threads_of_pytorch} OpenMP threads, with which the LLM custom ops' "
            "products contend (a build's own measurement): `mvlm-export bench DIR` measures without them")


def threadpool_size() -> int:
    """The threads of the runtime's CPU threadpool (process-wide: every method of every program runs on it)."""
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

    return int(_threadpool_get_thread_count())


def set_threads(threads: int | None) -> None:
    """Size the runtime's CPU threadpool (XNNPACK and the LLM custom ops, process-wide) to ``threads`` when it
    differs; None leaves it. Only while no program is loaded: XNNPACK delegates keep the pool they were initialized
    with, and resizing it under them crashed the process (seen with 1 thread), so a different size while a
    ``LoadedProgram`` is alive is a ``UserError``."""
    if threads:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

        current = threadpool_size()
        if current == int(threads):
            return
        if LoadedProgram.live:
            raise UserError(f"--threads {threads}: this process already runs an ExecuTorch program on {current} "
                            "threads; the threadpool is sized before a program loads, not under it")
        _unsafe_reset_threadpool(int(threads))


def _import_runtime():
    """ExecuTorch's runtime with the kernels the programs use (their import logs nothing the user needs)."""
    with native_stderr_filtered():
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels for the runtime)
        import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed.* kernels: quantized embeddings)
        from executorch.runtime import Runtime, Verification
    return Runtime, Verification


def load_program(path: Path, threads: int | None = None):
    """Load a ``.pte`` (the caller shares it between the runners of its methods: the decoder's cache lives in its
    loaded method), the threadpool sized to ``threads`` first (``set_threads``), once a child process has loaded
    the same bytes and every method (``ProgramProbe``). Not cached: a file rebuilt at the same path loads anew."""
    path = Path(path)
    probe = ProgramProbe(path)  # (in a fresh process, it imports ExecuTorch while this one does too)
    try:
        Runtime, Verification = _import_runtime()
        probe.verdict()
    finally:
        probe.close()
    try:
        with native_stderr_filtered():  # (sizing the pool starts it, and it describes the CPU)
            set_threads(threads)
            return LoadedProgram(Runtime.get().load_program(path, verification=Verification.Minimal))
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a loadable ExecuTorch program ({exc})") from None


# A .pte's bytes are trusted by ExecuTorch's runtime: a flipped byte in a method's plan or an XNNPACK delegate's graph
# kills the process (SIGSEGV in method init, SIGABRT in XNNPACK's), and its flatbuffer verifier
# (Verification.InternalConsistency) sees the program's own tables only, not the delegates' blobs. So a program is
# first loaded, every method with it, in a child process; what killed the child is one line. Measured on the demo's
# snapdragon build (1 MB .pte), single-byte flips loaded and every method run once: of 50 (30 in the program's
# tables, 20 in the segments) under Minimal, 3 killed the process at method load (2 SIGSEGV, 1 SIGABRT), none at
# execution; under InternalConsistency the program-table ones were refused, the SIGABRT stayed, and of 65 more (60 in
# the segments) 2 more SIGABRT at method load, none at execution. The child costs 0.5 s of CPU (``_lean_loader``),
# while this process imports ExecuTorch through PyTorch.
PROBE_TIMEOUT_S = 600
PROBE_CODE = ("import sys; sys.path.append(sys.argv.pop(1)); "
              "from mobilevlm_export.backends.executorch import probe_main; probe_main()")
_verdicts: dict[str, str | None] = {}  # sha256 of a program's bytes -> None (they load) or why not, this process


class ProgramProbe:
    """``probe_main`` over ``path`` in a child process (the same Python), unless this process already knows the
    verdict on these bytes (their sha256). ``verdict()`` waits for it: ``UserError`` naming the file when the
    program does not load or kills the child (the signal and the method it was loading), else nothing."""

    def __init__(self, path: Path) -> None:
        import subprocess

        self.path = Path(path)
        try:
            self.key = sha256(self.path)
        except OSError as exc:
            raise UserError(f"{self.path}: cannot read it ({exc.strerror})") from None
        self.proc = None
        if self.key not in _verdicts:
            package_root = str(Path(__file__).resolve().parents[2])
            self.proc = subprocess.Popen([sys.executable, "-c", PROBE_CODE, package_root, str(self.path)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def verdict(self) -> None:
        import subprocess

        if self.key not in _verdicts and self.proc is not None:
            try:
                out, err = self.proc.communicate(timeout=PROBE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.close()
                raise UserError(f"{self.path}: ExecuTorch did not load it within {PROBE_TIMEOUT_S} s") from None
            if native_logs_shown():
                sys.stderr.write(err.decode(errors="replace"))
            _verdicts[self.key] = self._judge(self.proc.returncode, out.decode(errors="replace"), err)
        why = _verdicts[self.key]
        if why:
            raise UserError(f"{self.path}: {why}")

    def _judge(self, code: int, out: str, err: bytes) -> str | None:
        import json
        import signal

        said = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        last = said[-1] if said else {}
        if code == 0 and last.get("ok"):
            return None
        if code == 0 and "error" in last:
            return f"not a loadable ExecuTorch program ({last['error']})"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            where = last.get("loading", "the program")
            return (f"ExecuTorch crashed loading {where} ({name}): its bytes are not a valid program (corrupt or "
                    "edited after the build? rebuild it)")
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"the ExecuTorch load check of {self.path} failed (exit {code}: "
                           f"{lines[-1] if lines else 'no message'})")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.communicate()
            self.proc = None


def _lean_loader():
    """``load(path) -> (method names, load_method)`` over ExecuTorch's runtime extension and the kernel libraries the
    programs use, loaded as shared libraries without PyTorch's Python package: the same files ``executorch.runtime``
    and the kernels' modules load (``extension/pybindings/_C``, ``*custom_ops_aot_lib*``,
    ``*quantized_ops_aot_lib*``, found as those modules find them), at a twentieth of the cost (measured: 0.24 s of
    CPU, against 5.4 s importing them through ``import torch``)."""
    import ctypes
    import importlib.util

    root = Path(importlib.util.find_spec("executorch").submodule_search_locations[0])
    extension = next(root.glob("extension/pybindings/_C*.so"))
    spec = importlib.util.spec_from_file_location("executorch.extension.pybindings._C", extension)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for lib in (*root.glob("extension/llm/custom_ops/*custom_ops_aot_lib.*"),
                *root.glob("kernels/quantized/*quantized_ops_aot_lib.*")):
        ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)

    def load(path: Path):
        program = module._load_program(str(path), enable_etdump=False, debug_buffer_size=0, data_path=None,
                                       program_verification=module.Verification.InternalConsistency)
        return [program.get_method_name(i) for i in range(program.num_methods())], program.load_method

    return load


def _full_loader():
    """``_lean_loader``'s answer through ``executorch.runtime`` (where its files are not where it looks)."""
    runtime, verification = _import_runtime()

    def load(path: Path):
        program = runtime.get().load_program(path, verification=verification.InternalConsistency)
        return sorted(program.method_names), program.load_method

    return load


def probe_main() -> None:
    """The child of ``ProgramProbe`` (``sys.argv[1]``: a ``.pte``): load it with ExecuTorch's internal-consistency
    check, then every method, printing one JSON line before each (``{"loading": "method 'x'"}``, what a signal
    interrupted) and one at the end: ``{"ok": true}`` or ``{"error": "..."}``."""
    import json

    path = Path(sys.argv[1])
    try:
        load = _lean_loader()
    except (ImportError, OSError, StopIteration, AttributeError, TypeError):
        load = _full_loader()

    def say(**kw) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    try:
        say(loading="the program")
        names, load_method = load(path)
        for name in names:
            say(loading=f"method '{name}'")
            load_method(name)
    except (RuntimeError, ValueError) as exc:
        say(error=" ".join(str(exc).split()))
        return
    say(ok=True)


def trust_written_program(path: Path) -> None:
    """Record the program this process has just written (``export_program``) as loading: its bytes are
    ExecuTorch's serializer's, not an input's, and the build's own verify need not load them twice."""
    _verdicts[sha256(Path(path))] = None


# ExecuTorch's ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy dtype names
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 7: "float64",
                11: "bool", 15: "bfloat16"}


def method_io(meta) -> tuple[list, list]:
    """A method's inputs and outputs as ``graphs.contracts.FoundSpec`` (no names: ExecuTorch passes tensors by
    position; sizes of a dynamic dim are its memory-planned upper bound). A non-tensor input or output is a
    ``FoundSpec`` of dtype "not a tensor" and no dims."""
    from mobilevlm_export.graphs.contracts import FoundSpec

    def spec(get, i: int) -> FoundSpec:
        try:
            t = get(i)
        except (IndexError, RuntimeError):  # an int, a list, None: the method takes or gives no tensor there
            return FoundSpec(None, "not a tensor", ())
        return FoundSpec(None, SCALAR_TYPES.get(t.dtype(), f"ScalarType {t.dtype()}"), tuple(t.sizes()))

    return ([spec(meta.input_tensor_meta, i) for i in range(meta.num_inputs())],
            [spec(meta.output_tensor_meta, i) for i in range(meta.num_outputs())])


def check_method_io(program: LoadedProgram, path: Path, contract: GraphContract, method: str) -> None:
    """``UserError`` naming the file, the method, the tensor and both specs when ``method`` of ``program`` takes or
    gives other tensors than ``contract`` (count, dtype, rank, static dims; a dynamic dim's upper bound at least the
    contract's range max): a program of another build re-signed into this one is refused before it runs."""
    from mobilevlm_export.graphs.contracts import contract_mismatch, io_mismatch

    try:
        meta = program.metadata(method)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"{path}: has no readable method '{method}' ({exc})") from None
    inputs, outputs = method_io(meta)
    why = io_mismatch(contract, inputs, outputs, upper_bounds=True)
    if why:
        raise UserError(contract_mismatch(f"{path} (method '{method}')", contract, why, "program"))


class ExecuTorchRunner:
    """Runs one method of a loaded program (``load_program``, which sized the threadpool): feeds in contract order,
    outputs named after the contract."""

    backend = Backend.EXECUTORCH

    def __init__(self, program: LoadedProgram, path: Path, contract: GraphContract, method: str) -> None:
        self.contract = contract
        self.program = program  # alive while its method runs
        self.method_name = method
        self._started = False
        check_method_io(program, path, contract, method)
        try:
            with native_stderr_filtered():  # (XNNPACK describes the CPU when its delegate starts)
                self.method = program.load_method(method)
        except RuntimeError as exc:
            raise UserError(f"{path}: cannot load method '{method}' ({exc})") from None

    def threads_used(self) -> int:
        return threadpool_size()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.contract.inputs]
        if self._started:
            outs = self.method.execute(args)
        else:  # the first run starts the kernels' own state (which may describe the CPU too)
            with native_stderr_filtered():
                outs = self.method.execute(args)
            self._started = True
        return {t.name: o.numpy().copy() for t, o in zip(self.contract.outputs, outs, strict=True)}
