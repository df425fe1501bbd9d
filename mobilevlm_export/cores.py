"""The CPU cores this process may use: one count behind ``--threads``' bound and the runtimes' default threads."""

from __future__ import annotations

import os

ONNX_MAX_DEFAULT_THREADS = 4  # ONNX Runtime's intra-op threads when none are asked for (more rarely helps these
# small graphs); ExecuTorch keeps its threadpool's own size, TensorRT runs on the GPU


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the OS has one (a container's cpuset, ``taskset``),
    else the logical core count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def onnx_default_threads() -> int:
    """ONNX Runtime's intra-op threads when ``--threads`` is not given: the usable cores, at most
    ``ONNX_MAX_DEFAULT_THREADS``."""
    return min(usable_cores(), ONNX_MAX_DEFAULT_THREADS)
