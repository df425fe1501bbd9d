"""What keeps a full-size build's memory down, checked at small size: exported weights are released, calibration
reads a graph from its file with the same statistics as from memory, the Q/DQ rewrite can work in place."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.quantize.calibrate import calibrate
from mobilevlm_export.quantize.qdq_rewrite import quantize_weights


def test_exported_weights_are_released(tmp_path):
    """onnxscript's rewrite rules keep the last graph they matched, which wraps the module's weights: the export
    drops that state, so a released module's weights are freed."""
    import torch

    from mobilevlm_export.backends.onnx import export_graph
    from mobilevlm_export.graphs.contracts import DimRange, GraphContract, TensorSpec
    from mobilevlm_export.graphs.split import Graph

    module = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64)).eval()
    contract = GraphContract("mlp", (TensorSpec("x", "float32", ("batch", 64)),),
                             (TensorSpec("y", "float32", ("batch", 64)),), ranges={"batch": DimRange(1, 1, 4)})
    weight = weakref.ref(module[0].weight)
    export_graph(Graph(contract, module), tmp_path / "mlp.onnx", simplify=False)
    del module
    gc.collect()
    assert weight() is None


def _decoder_like(path) -> onnx.ModelProto:
    """Two fp16 weight MatMuls after a norm-like Mul, saved with external data (as a full-size decoder is)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((128, 256)) * 0.05).astype(np.float16), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((256, 128)) * 0.05).astype(np.float16), "w2")
    g = numpy_helper.from_array(np.ones(128, np.float16), "g")
    nodes = [helper.make_node("Mul", ["x", "g"], ["a"]), helper.make_node("MatMul", ["a", "w1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "d", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [None, 128])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [None, 128])],
                              [g, w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)
    return onnx.load(str(path))


@pytest.mark.parametrize("consume", [False, True])
def test_calibrate_from_file_equals_in_memory_and_rewrite_in_place(tmp_path, consume):
    path = tmp_path / "d.onnx"
    model = _decoder_like(path)
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((n, 128)).astype(np.float16)} for n in (5, 9)]
    a, b = calibrate(model, feeds), calibrate(path, feeds)
    assert a.amax == b.amax and a.amax and all(np.array_equal(a.samples[k], b.samples[k]) for k in a.samples)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx", "d.onnx.data"]  # the probe graph is gone
    want = quantize_weights(model, "int4", block_size=32, lm_head="int4").model
    result = quantize_weights(model, "int4", block_size=32, lm_head="int4", consume=consume)
    assert (result.model is model) == consume
    assert result.model.SerializeToString() == want.SerializeToString()
