"""Backends behind one interface: each exports a ``Graph`` to an artifact and loads an artifact as a ``Runner``.

A runner is ``run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` over the names of its graph's
contract; the runtime loop and the verifier know nothing else about a backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mobilevlm_export.graphs.contracts import GraphContract
from mobilevlm_export.schema import StrEnum


class Backend(StrEnum):
    """The runtime a runner computes on: its name in a manifest, in ``--json`` and for ``--backend``."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    EXECUTORCH = "executorch"
    PYTORCH = "pytorch"  # the eager reference (the benchmark suite's peer)


class Runner(Protocol):
    contract: GraphContract
    backend: Backend

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def threads_used(self) -> int | None:
        """The CPU threads its runtime computes on (the count asked for, or the runtime's own default); None
        where it computes off the CPU (TensorRT: the GPU)."""
