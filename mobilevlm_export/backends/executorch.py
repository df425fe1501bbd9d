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
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.graphs.contracts import GraphContract

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
                   constant_methods: dict, mutable_buffers_init: bool, progress=None) -> ProgramInfo:
    """Export ``modules`` (keyed by method name) with their sample inputs and dynamic shapes, lower them to
    XNNPACK in one call (dynamic-quant linears first, then everything else) and write the program to ``path``.

    Consumes ``modules``: each is popped once exported, so this function holds no module reference of its own
    through lowering and serialization."""
    import torch
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
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

    def partitioners():
        return [XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT, per_op_mode=True),
                XnnpackPartitioner()]

    edge = to_edge_transform_and_lower(
        programs, partitioner={m: partitioners() for m in programs}, constant_methods=constant_methods,
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


def set_threads(threads: int | None) -> None:
    """Size the runtime's CPU threadpool (XNNPACK and the LLM custom ops, process-wide) to ``threads`` when it
    differs; None leaves it. Only while no program is loaded: XNNPACK delegates keep the pool they were initialized
    with, and resizing it under them crashed the process (seen with 1 thread), so a different size while a
    ``LoadedProgram`` is alive is a ``UserError``."""
    if threads:
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count,
            _unsafe_reset_threadpool,
        )

        current = _threadpool_get_thread_count()
        if current == int(threads):
            return
        if LoadedProgram.live:
            raise UserError(f"--threads {threads}: this process already runs an ExecuTorch program on {current} "
                            "threads; the threadpool is sized before a program loads, not under it")
        _unsafe_reset_threadpool(int(threads))


# lines the runtime's native code writes to stderr about the host's CPU description (cpuinfo cannot read /sys in
# some containers; ExecuTorch's threadpool logs its core-count probe, e.g. "[cpuinfo_utils.cpp:109] Failed to open
# midr file ..."); they say nothing about the user's input or results
NATIVE_NOISE = ("Error in cpuinfo:", "Warning in cpuinfo:", "[cpuinfo_utils.cpp:")


@contextmanager
def native_stderr_filtered(drop: tuple[str, ...] = NATIVE_NOISE):
    """Capture what native code writes to file descriptor 2 meanwhile, and pass on every line but ``drop``'s."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not line.startswith(drop):
                    sys.stderr.write(line)
            sys.stderr.flush()


def load_program(path: Path, threads: int | None = None):
    """Load a ``.pte`` (the caller shares it between the runners of its methods: the decoder's cache lives in its
    loaded method), the threadpool sized to ``threads`` first (``set_threads``). Not cached: a file rebuilt at the
    same path loads anew."""
    with native_stderr_filtered():
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels for the runtime)
        import executorch.kernels.quantized  # noqa: F401  (quantized_decomposed.* kernels: quantized embeddings)
        from executorch.runtime import Runtime, Verification

    try:
        with native_stderr_filtered():  # (sizing the pool starts it, and it describes the CPU)
            set_threads(threads)
            return LoadedProgram(Runtime.get().load_program(Path(path), verification=Verification.Minimal))
    except (RuntimeError, ValueError) as exc:
        from mobilevlm_export.errors import UserError

        raise UserError(f"{path}: not a loadable ExecuTorch program ({exc})") from None


class ExecuTorchRunner:
    """Runs one method of a loaded program (``load_program``, which sized the threadpool): feeds in contract order,
    outputs named after the contract."""

    backend = "executorch"

    def __init__(self, program: LoadedProgram, path: Path, contract: GraphContract, method: str) -> None:
        self.contract = contract
        self.program = program  # alive while its method runs
        self.method_name = method
        self._started = False
        try:
            with native_stderr_filtered():  # (XNNPACK describes the CPU when its delegate starts)
                self.method = program.load_method(method)
        except RuntimeError as exc:
            raise UserError(f"{path}: cannot load method '{method}' ({exc})") from None

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
