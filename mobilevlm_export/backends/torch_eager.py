"""The torch backend: runs a split graph's module eagerly (the reference side of graph-level comparisons)."""

from __future__ import annotations

import numpy as np
import torch

from mobilevlm_export.graphs.split import Graph


class TorchRunner:
    def __init__(self, graph: Graph) -> None:
        self.contract = graph.contract
        self.module = graph.module

    @torch.inference_mode()
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.contract.inputs]
        out = self.module(*args)
        out = out if isinstance(out, tuple) else (out,)
        return {t.name: o.numpy() for t, o in zip(self.contract.outputs, out, strict=True)}
