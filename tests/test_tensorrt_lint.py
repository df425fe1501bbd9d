"""TensorRT ONNX-parser lint: the shipped operator tables, each check on hand-made graphs, and the demo
checkpoint's exported decoder in fp32, int4 (standard and trt-domain form), int8 and w8a8."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.backends import tensorrt_lint as tl
from mobilevlm_export.backends.tensorrt_qdq import convert_dq_form
from mobilevlm_export.quantize.qdq_rewrite import quantize_weights
from mobilevlm_export.quantize.scales import int4_tensor
from mobilevlm_export.quantize.select import find_weight_matmuls

F, I4, I8 = TensorProto.FLOAT, TensorProto.INT4, TensorProto.INT8


def _model(nodes, inputs, outputs, inits=(), opset: int = 20, extra_opsets=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    m.ir_version = 10
    return m


def _vi(name, elem=F, shape=("b", 128)):
    return helper.make_tensor_value_info(name, elem, list(shape))


def _int4_weight_model(block: int = 32, k: int = 128, n: int = 64, zp: np.ndarray | None = None,
                       scale_shape=None) -> onnx.ModelProto:
    q = np.random.default_rng(0).integers(-8, 8, (k, n)).astype(np.int8)
    scale = np.full(scale_shape or (k // block, n), 0.01, np.float32)
    inits = [int4_tensor(q, "w_q"), numpy_helper.from_array(scale, "w_scale")]
    dq_in = ["w_q", "w_scale"]
    if zp is not None:
        inits.append(int4_tensor(zp, "w_zp"))
        dq_in.append("w_zp")
    nodes = [helper.make_node("DequantizeLinear", dq_in, ["w"], name="dq_w", axis=0, block_size=block),
             helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    return _model(nodes, [_vi("x", shape=("b", k))], [_vi("y", shape=("b", n))], inits, opset=21)


def _checks(findings) -> set[tuple[str, str]]:
    return {(f.check, f.node) for f in findings}


# ------------------------------------------------------------------------------------------------------------------
# the tables


def test_tables_load_and_cite_their_source():
    versions = tl.available_versions()
    assert versions[0] == "10.3" and "10.15" in versions
    for v in versions:
        raw = json.loads(resources.files("mobilevlm_export.backends").joinpath("tensorrt_ops", f"{v}.json")
                         .read_text())
        assert raw["trt_version"] == v and "onnx-tensorrt" in raw["source"] and "operators.md" in raw["source"]
        t = tl.load_table(v)
        assert t.opset_min == 9 and {"MatMul", "DequantizeLinear", "QuantizeLinear", "Softmax"} <= set(t.ops)
        assert all(isinstance(e["supported"], bool) for e in t.ops.values())
        assert "INT4" in t.ops["DequantizeLinear"]["types"] and t.trt_ops["DequantizeLinear"]["supported"]
        assert {"DOUBLE"} == t.cast_down and {"INT8", "INT4", "FP8"} <= t.quantized_only
    t103, t1015 = tl.load_table("10.3"), tl.load_table("10.15")
    assert t103.opset_max == 20 and t1015.opset_max == 24
    assert "RMSNormalization" not in t103.ops and t1015.ops["RMSNormalization"]["supported"]
    assert not t103.ops["STFT"]["supported"] and t1015.ops["STFT"]["supported"]
    assert "FP4" not in t103.types and "FP4" in t1015.types
    assert tl.load_table("10.3.0.30") is t103
    with pytest.raises(ValueError, match="available"):
        tl.load_table("8.6")


# ------------------------------------------------------------------------------------------------------------------
# hand-made graphs, one check at a time


def test_clean_graph_passes():
    w = numpy_helper.from_array(np.ones((128, 64), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Relu", ["y"], ["z"])]
    m = _model(nodes, [_vi("x")], [_vi("z", shape=("b", 64))], [w])
    assert tl.lint(m, "g", "10.3") == [] and tl.lint(m, "g", "10.15") == []


def test_int4_weight_standard_and_trt_forms():
    std = _int4_weight_model()
    assert tl.lint(std, "g", "10.15") == []
    assert [(f.check, f.node, f.op_type) for f in tl.lint(std, "g", "10.3")] == [("opset", "", "")]
    trt = convert_dq_form(std, "trt")
    assert tl.lint(trt, "g", "10.3") == []
    # an all-zero INT4 zero point is fine
    assert tl.lint(_int4_weight_model(zp=np.zeros((4, 64), np.int8)), "g", "10.15") == []


def test_unsupported_ops_are_named():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("FancyAttention", ["a"], ["b"], name="custom_attn", domain="com.example"),
             helper.make_node("Unique", ["b"], ["c"], name="uniq"),
             helper.make_node("RMSNormalization", ["c", "s"], ["d"], name="rms"),
             helper.make_node("TRT_Magic", ["d"], ["e"], name="magic", domain="trt")]
    m = _model(nodes, [_vi("x")], [_vi("e")], [numpy_helper.from_array(np.ones(128, np.float32), "s")],
               extra_opsets=[helper.make_opsetid("com.example", 1), helper.make_opsetid("trt", 1)])
    found = tl.lint(m, "decoder", "10.3")
    ops = {f.node: f for f in found if f.check == "op"}
    assert set(ops) == {"custom_attn", "uniq", "rms", "magic"}
    assert ops["custom_attn"].op_type == "com.example::FancyAttention" and "custom-domain" in ops["custom_attn"].reason
    assert "marked unsupported" in ops["uniq"].reason and "not in TensorRT 10.3" in ops["rms"].reason
    assert all(f.graph == "decoder" for f in found)
    assert "decoder: custom_attn [com.example::FancyAttention]:" in str(ops["custom_attn"])
    # RMSNormalization exists from 10.15 on
    assert "rms" not in {f.node for f in tl.lint(m, "decoder", "10.15") if f.check == "op"}


def test_model_local_function_is_not_a_custom_op():
    fn = helper.make_function("local", "Twice", ["x"], ["y"], [helper.make_node("Add", ["x", "x"], ["y"])],
                              [helper.make_opsetid("", 20)])
    m = _model([helper.make_node("Twice", ["x"], ["y"], name="call", domain="local")], [_vi("x")], [_vi("y")],
               extra_opsets=[helper.make_opsetid("local", 1)])
    m.functions.append(fn)
    assert tl.lint(m, "g", "10.3") == []


def test_float64_tensor():
    nodes = [helper.make_node("Cast", ["x"], ["x64"], name="to_double", to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["x64"], ["y"], name="back", to=F)]
    found = tl.lint(_model(nodes, [_vi("x")], [_vi("y")]), "g", "10.3")
    dtype = [f for f in found if f.check == "dtype"]
    assert [(f.node, f.tensor) for f in dtype] == [("to_double", "x64")] and "DOUBLE" in dtype[0].reason
    assert ("op_dtype", "to_double") in _checks(found)  # Cast to DOUBLE is outside Cast's types
    assert ("dtype", "") not in _checks(found)
    ins = tl.lint(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], [_vi("x", TensorProto.DOUBLE)],
                         [_vi("y", TensorProto.DOUBLE)]), "g", "10.3")
    assert {(f.check, f.tensor) for f in ins} >= {("dtype", "x"), ("dtype", "y"), ("op_dtype", "x")}


@pytest.mark.parametrize("elem", [TensorProto.STRING, TensorProto.UINT64, TensorProto.COMPLEX64,
                                  TensorProto.FLOAT8E5M2])
def test_types_tensorrt_cannot_take(elem):
    m = _model([helper.make_node("Identity", ["x"], ["y"], name="id")], [_vi("x", elem)], [_vi("y", elem)])
    found = [f for f in tl.lint(m, "g", "10.3") if f.check == "dtype"]
    assert {f.tensor for f in found} == {"x", "y"} and all(f.node == "id" for f in found)
    assert tl.type_name(elem) in found[0].reason


def test_nonzero_zero_point():
    zp = np.zeros((4, 64), np.int8)
    zp[1, 3] = 2
    found = tl.lint(_int4_weight_model(zp=zp), "g", "10.15")
    assert _checks(found) == {("zero_point", "dq_w")}
    assert found[0].op_type == "DequantizeLinear" and found[0].tensor == "w_zp"
    # int8 activation Q/DQ with a non-zero zero point, and one that is not a constant
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zin"], ["y"], name="dq")]
    m = _model(nodes, [_vi("x"), helper.make_tensor_value_info("zin", I8, [])], [_vi("y")],
               [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(3), "z")])
    found = tl.lint(m, "g", "10.3")
    assert {("zero_point", "q"), ("zero_point", "dq")} <= _checks(found)


def test_int4_as_activation():
    # QuantizeLinear to INT4 makes an INT4 activation
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q4"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq4")]
    m = _model(nodes, [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.float32(0.1), "s"),
                                               int4_tensor(np.zeros((), np.int8), "z")], opset=21)
    found = tl.lint(m, "g", "10.15")
    assert [(f.check, f.node, f.tensor) for f in found if f.check == "int4"] == [("int4", "q4", "q")]
    # an INT4 graph input, and an INT4 initializer read by something other than DequantizeLinear
    ins = tl.lint(_model([helper.make_node("DequantizeLinear", ["x4", "s"], ["y"], name="dq")],
                         [_vi("x4", I4, ("b", 64))], [_vi("y", F, ("b", 64))],
                         [numpy_helper.from_array(np.float32(0.1), "s")], opset=21), "g", "10.15")
    assert [(f.check, f.tensor) for f in ins] == [("int4", "x4")] and "graph input" in ins[0].reason
    w4 = int4_tensor(np.zeros((8, 8), np.int8), "w4")
    cast = _model([helper.make_node("Cast", ["w4"], ["wf"], name="cast", to=F),
                   helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")],
                  [_vi("x", F, ("b", 8))], [_vi("y", F, ("b", 8))], [w4], opset=21)
    assert ("int4", "cast") in _checks(tl.lint(cast, "g", "10.15"))


def test_block_size_must_divide_the_blocked_dim():
    bad = _int4_weight_model(block=48, scale_shape=(3, 64))  # 128 / 48 is not whole
    found = tl.lint(bad, "g", "10.15")
    assert _checks(found) == {("block", "dq_w")} and "does not divide dim 0 (= 128)" in found[0].reason
    wrong_scale = tl.lint(_int4_weight_model(block=32, scale_shape=(2, 64)), "g", "10.15")
    assert [(f.check, f.tensor) for f in wrong_scale] == [("block", "w_scale")]


def test_scale_must_be_positive_and_int4_last_dim_even():
    m = _int4_weight_model(n=63, k=64)
    found = tl.lint(m, "g", "10.15")
    assert ("int4", "dq_w") in _checks(found) and "odd last dim" in found[0].reason
    neg = _int4_weight_model()
    neg.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros((4, 64), np.float32), "w_scale"))
    assert _checks(tl.lint(neg, "g", "10.15")) == {("scale", "dq_w")}


def test_constant_inputs_and_op_types():
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")]
    m = _model(nodes, [_vi("x"), helper.make_tensor_value_info("axes", TensorProto.INT64, [1])], [_vi("y")],
               opset=18)
    assert _checks(tl.lint(m, "g", "10.3")) == {("constant_input", "mean")}
    ok = _model(nodes, [_vi("x")], [_vi("y")], [numpy_helper.from_array(np.array([-1], np.int64), "axes")],
                opset=18)
    assert tl.lint(ok, "g", "10.3") == []
    ints = _model([helper.make_node("MatMul", ["a", "b"], ["c"], name="imm")],
                  [_vi("a", TensorProto.INT32, (2, 2)), _vi("b", TensorProto.INT32, (2, 2))],
                  [_vi("c", TensorProto.INT32, (2, 2))])
    assert _checks(tl.lint(ints, "g", "10.3")) == {("op_dtype", "imm")}


# ------------------------------------------------------------------------------------------------------------------
# the demo checkpoint's decoder


@pytest.fixture(scope="module")
def decoder_path(demo_build_onnx):
    """The demo checkpoint's decoder graph file, exported through the CLI (conftest's export, shared by the
    session; read-only)."""
    return demo_build_onnx / "graphs" / "decoder.onnx"


def _relabel(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    next(o for o in m.opset_import if o.domain == "").version = opset
    return m


def test_decoder_fp32(decoder_path):
    model = onnx.load(str(decoder_path))
    found = tl.lint_file(decoder_path, "10.3")
    assert found == tl.lint(model, "decoder", "10.3")
    # the op set, types and constants all pass; only the exporter's opset 21 is above 10.3's 20
    assert [(f.graph, f.check) for f in found] == [("decoder", "opset")] and "opset 21" in found[0].reason
    assert tl.lint(_relabel(model, 20), "decoder", "10.3") == []
    assert tl.lint(model, "decoder", "10.15") == []


def test_decoder_quantized(decoder_path):
    model = onnx.load(str(decoder_path))
    int4 = quantize_weights(model, "int4", lm_head="int4").model
    assert [f.check for f in tl.lint(int4, "decoder", "10.3")] == ["opset"]
    assert tl.lint(int4, "decoder", "10.15") == []
    assert tl.lint(convert_dq_form(int4, "trt"), "decoder", "10.3") == []
    int8 = quantize_weights(model, "int8", lm_head="int8", form="trt").model  # per-channel DQ: opset 20 has it
    assert tl.lint(int8, "decoder", "10.3") == []
    amax = {c.activation: 4.0 for c in find_weight_matmuls(model)}
    w8a8 = quantize_weights(model, "w8a8", act_amax=amax, form="trt").model
    assert tl.lint(w8a8, "decoder", "10.3") == []


def test_decoder_with_a_bad_node_is_named(decoder_path):
    model = onnx.load(str(decoder_path))
    producer = model.graph.node[-1]
    bad = helper.make_node("Mystery", [producer.output[0]], ["mystery_out"], name="mystery", domain="com.example")
    model.graph.node.append(bad)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    found = tl.lint(_relabel(model, 20), "decoder", "10.3")
    assert [(f.graph, f.node, f.op_type, f.check) for f in found] == [
        ("decoder", "mystery", "com.example::Mystery", "op")]
