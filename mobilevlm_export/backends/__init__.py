"""Backends behind one interface: each exports a ``Graph`` to an artifact and loads an artifact as a ``Runner``.

A runner is ``run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]`` over the names of its graph's
contract; the runtime loop and the verifier know nothing else about a backend.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mobilevlm_export.graphs.contracts import GraphContract


class Runner(Protocol):
    contract: GraphContract

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
