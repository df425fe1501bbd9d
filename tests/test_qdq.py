"""Weight MatMuls -> Q/DQ (int4 blocked, int8 per channel, w8a8), calibration, the trt-domain form, AWQ scales:
on hand-made graphs and on the demo checkpoint's exported decoder, run with ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mobilevlm_export.backends.onnx import ort_session
from mobilevlm_export.backends.tensorrt_qdq import DqFormError, convert_dq_form
from mobilevlm_export.quantize.calibrate import calibrate
from mobilevlm_export.quantize.graph import QdqError
from mobilevlm_export.quantize.prescale import AwqScales, apply_awq_scales, awq_scales, awq_search, smoothquant_scales
from mobilevlm_export.quantize.qdq_rewrite import QdqResult, quantize_weights
from mobilevlm_export.quantize.scales import dequantize_int4_blocked, int4_blocked_roundtrip, quantize_int4_blocked
from mobilevlm_export.quantize.select import find_weight_matmuls

# ------------------------------------------------------------------------------------------------------------------
# hand-made graphs


def _mlp(k: int = 256, h: int = 128, v: int = 64, dtype=np.float32, seed: int = 0) -> onnx.ModelProto:
    """x [b, k] -> MatMul(up [k, h]) -> Relu -> MatMul(down [h, k]) -> + x -> MatMul(head [k, v]) = logits,
    plus an activation-activation MatMul (x @ x^T, no weight) that must be left alone."""
    rng = np.random.default_rng(seed)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = {n: (rng.standard_normal(s) / np.sqrt(s[0])).astype(dtype)
         for n, s in {"up": (k, h), "down": (h, k), "head": (k, v)}.items()}
    nodes = [
        helper.make_node("MatMul", ["x", "up"], ["u"], name="mm_up"),
        helper.make_node("Relu", ["u"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "down"], ["d"], name="mm_down"),
        helper.make_node("Add", ["d", "x"], ["res"], name="residual"),
        helper.make_node("MatMul", ["res", "head"], ["logits"], name="mm_head"),
        helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[1, 0]),
        helper.make_node("MatMul", ["x", "xt"], ["gram"], name="mm_gram"),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", elem, ["batch", k])],
                              [helper.make_tensor_value_info("logits", elem, ["batch", v]),
                               helper.make_tensor_value_info("gram", elem, ["batch", "batch"])],
                              [numpy_helper.from_array(a, n) for n, a in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _np_mlp(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    x = x.astype(np.float64)
    r = np.maximum(x @ w["up"].astype(np.float64), 0)
    return (r @ w["down"].astype(np.float64) + x) @ w["head"].astype(np.float64)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference over max abs value: for "equal up to float rounding"."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _nrel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative Frobenius error: for "close to the float model" (int4 RTN costs ~10 % per layer on Gaussians)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _dequantized(result: QdqResult) -> dict[str, np.ndarray]:
    """Float weights a rewritten model computes with: each weight's DQ evaluated in numpy."""
    inits = {t.name: t for t in result.model.graph.initializer}
    out = {}
    for n in result.model.graph.node:
        if n.op_type != "DequantizeLinear" or n.input[0] not in inits:
            continue
        weight = n.output[0].removesuffix("_dq")
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        block = next((a.i for a in n.attribute if a.name == "block_size"), 0)
        if block:
            q = numpy_helper.to_array(inits[n.input[0]]).astype(np.int8)  # onnx unpacks the INT4 nibbles
            out[weight] = dequantize_int4_blocked(q, scale, block)
        else:
            out[weight] = numpy_helper.to_array(inits[n.input[0]]).astype(np.float32) * scale[None, :]
    return out


X = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)


def test_find_weight_matmuls_and_lm_head():
    found = find_weight_matmuls(_mlp())
    assert [(c.node, c.weight, c.k, c.n, c.lm_head) for c in found] == [
        ("mm_up", "up", 256, 128, False), ("mm_down", "down", 128, 256, False), ("mm_head", "head", 256, 64, True)]
    assert not any(c.lm_head for c in find_weight_matmuls(_mlp(), logits="gram"))


@pytest.mark.parametrize("block", [32, 64, 128])
def test_int4_blocked_runs_and_equals_numpy_dequantized(block):
    model = _mlp()
    res = quantize_weights(model, "int4", block_size=block, lm_head="int4")
    onnx.checker.check_model(res.model, full_check=True)
    assert res.report.counts == {"int4": 3} and res.report.block_size == block
    inits = {t.name: t for t in res.model.graph.initializer}
    assert {"up", "down", "head"}.isdisjoint(inits)  # float weights gone
    dqs = [n for n in res.model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 3
    for n in dqs:
        attrs = {a.name: a.i for a in n.attribute}
        assert attrs == {"axis": 0, "block_size": block} and n.domain == "" and len(n.input) == 2  # no zero point
        q, s = inits[n.input[0]], inits[n.input[1]]
        assert q.data_type == TensorProto.INT4 and s.data_type == TensorProto.FLOAT
        assert list(s.dims) == [q.dims[0] // block, q.dims[1]]
        assert len(q.raw_data) == q.dims[0] * q.dims[1] // 2
    assert [n.input[1] for n in res.model.graph.node if n.name == "mm_gram"] == ["xt"]

    got = ort_session(res.model).run(["logits"], {"x": X})[0]
    assert _rel(got, _np_mlp(X, _dequantized(res))) < 1e-5
    assert _nrel(got, _np_mlp(X, _weights(model))) < 0.25
    w = res.report.weights[0]
    assert (w.bytes_before, w.bytes_after) == (256 * 128 * 4, 256 * 128 // 2 + 256 // block * 128 * 4)
    assert res.report.bytes_after < res.report.bytes_before / 6


def test_int4_fp16_graph_keeps_fp16_scales():
    model = _mlp(dtype=np.float16)
    res = quantize_weights(model, "int4", block_size=64)
    scales = [t for t in res.model.graph.initializer if t.name.endswith("_scale")]
    assert scales and all(t.data_type == TensorProto.FLOAT16 for t in scales)
    assert res.report.counts == {"int4": 2} and [k[0] for k in res.report.kept] == ["mm_head"]
    got = ort_session(res.model).run(["logits"], {"x": X.astype(np.float16)})[0]
    want = _np_mlp(X.astype(np.float16), {**_weights(model), **_dequantized(res)})
    assert got.dtype == np.float16 and _rel(got, want) < 5e-3  # fp16 arithmetic in ORT


def test_one_external_data_threshold_for_save_and_calibration(tmp_path, monkeypatch):
    """save_model and the calibration session decide "over protobuf's limit?" with one function
    (backends.onnx.needs_external_data): with the threshold lowered, both take the external-data path, and the
    session's outputs are unchanged."""
    from mobilevlm_export.backends import onnx as onnx_backend

    model = _mlp()
    x = {"x": np.random.default_rng(1).standard_normal((2, 256)).astype(np.float32)}
    small = ort_session(model).run(["logits"], x)[0]
    onnx_backend.save_model(model, tmp_path / "small.onnx")
    assert not (tmp_path / "small.onnx.data").exists()
    assert onnx_backend.needs_external_data(onnx_backend.EXTERNAL_DATA_BYTES + 1)
    assert not onnx_backend.needs_external_data(onnx_backend.EXTERNAL_DATA_BYTES)

    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_BYTES", 1024)
    onnx_backend.save_model(_mlp(), tmp_path / "large.onnx")
    assert (tmp_path / "large.onnx.data").is_file()
    saved = []
    real = onnx_backend.save_model
    monkeypatch.setattr(onnx_backend, "save_model", lambda m, path, external=None: saved.append(path) or real(
        m, path, external))
    large = ort_session(model).run(["logits"], x)[0]
    assert saved and np.array_equal(small, large)

def test_calibration_session_turns_optimizations_and_arena_off():
    """ort_session(calibration=True): graph optimizations and the CPU memory arena off (the calibration pass over an
    fp16 graph); the default session keeps both; the outputs agree."""
    import onnxruntime as ort

    x = {"x": np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)}
    plain, calib = ort_session(_mlp()), ort_session(_mlp(), calibration=True)
    off = calib.get_session_options()
    assert off.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL and not off.enable_cpu_mem_arena
    on = plain.get_session_options()
    assert on.graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL and on.enable_cpu_mem_arena
    assert _rel(calib.run(["logits"], x)[0], plain.run(["logits"], x)[0]) < 1e-5

def test_int4_block_size_must_divide_k():
    with pytest.raises(QdqError, match=r"does not divide K=96 of initializer 'up' \(MatMul 'mm_up'\)"):
        quantize_weights(_mlp(k=96), "int4", block_size=64)
    with pytest.raises(QdqError, match="block_size 48"):
        quantize_weights(_mlp(), "int4", block_size=48)
    with pytest.raises(QdqError, match="odd output width N=63"):
        quantize_weights(_mlp(v=63), "int4", lm_head="int4")
    ok = quantize_weights(_mlp(k=96), "int4", block_size=32)  # 32 divides 96
    assert ok.report.counts == {"int4": 2}


def test_int8_per_channel_and_lm_head_choice():
    model = _mlp()
    res = quantize_weights(model, "int4", lm_head="int8")
    assert res.report.counts == {"int4": 2, "int8": 1} and res.report.kept == ()
    head_dq = next(n for n in res.model.graph.node if n.output[0] == "head_dq")
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert {a.name: a.i for a in head_dq.attribute} == {"axis": 1}
    assert inits[head_dq.input[0]].dtype == np.int8 and inits[head_dq.input[1]].shape == (64,)
    assert not inits[head_dq.input[2]].any() and inits[head_dq.input[2]].dtype == np.int8
    assert np.abs(inits[head_dq.input[0]]).max() == 127

    res8 = quantize_weights(model, "int8", select=lambda c: c.node != "mm_down")
    assert res8.report.counts == {"int8": 1}
    assert dict(res8.report.kept) == {"mm_down": "rejected by select", "mm_head": "lm_head (lm_head=None)"}
    got = ort_session(res8.model).run(["logits"], {"x": X})[0]
    assert _rel(got, _np_mlp(X, {**_weights(model), **_dequantized(res8)})) < 1e-5
    assert _nrel(got, _np_mlp(X, _weights(model))) < 0.02


def test_calibrate_and_w8a8():
    model = _mlp()
    feeds = [{"x": np.random.default_rng(i).standard_normal((4, 256)).astype(np.float32)} for i in range(3)]
    cal = calibrate(model, feeds)
    assert set(cal.amax) == {"x", "r", "res"}
    xs = np.concatenate([f["x"] for f in feeds])
    r = np.maximum(xs @ _weights(model)["up"], 0)
    assert cal.amax["x"] == pytest.approx(np.abs(xs).max()) and cal.amax["r"] == pytest.approx(r.max(), rel=1e-5)
    np.testing.assert_allclose(cal.channel_mean["x"], np.abs(xs).mean(0), rtol=1e-5)
    assert cal.samples["x"].shape == (12, 256)

    with pytest.raises(QdqError, match=r"needs an activation amax .*r \(MatMul mm_down\)"):
        quantize_weights(model, "w8a8", act_amax={"x": 1.0})
    res = quantize_weights(model, "w8a8", act_amax=cal.amax, lm_head="w8a8")
    assert res.report.counts == {"w8a8": 3} and res.report.activation_qdq == ("x", "r", "res")
    onnx.checker.check_model(res.model, full_check=True)
    q = next(n for n in res.model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    inits = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    assert inits[q.input[1]] == pytest.approx(cal.amax["x"] / 127) and inits[q.input[2]].dtype == np.int8
    # only the quantized MatMul reads the Q/DQ'd tensor: the residual Add and the gram MatMul keep x
    readers = {n.name: list(n.input) for n in res.model.graph.node}
    assert readers["residual"][1] == "x" and readers["mm_gram"] == ["x", "xt"] and readers["mm_up"][0] == "x_qdq"
    got = ort_session(res.model).run(["logits"], {"x": X})[0]
    assert _nrel(got, _np_mlp(X, _weights(model))) < 0.05


def test_trt_form_differs_only_in_domain_and_opset():
    std = quantize_weights(_mlp(), "int4", lm_head="int8").model
    trt = convert_dq_form(std, "trt")
    _assert_same_but_form(std, trt)
    assert quantize_weights(_mlp(), "int4", lm_head="int8", form="trt").model == trt
    back = convert_dq_form(trt, "standard")
    assert back.SerializeToString() == std.SerializeToString()
    with pytest.raises(DqFormError, match="main opset 17"):
        convert_dq_form(_with_opset(trt, 17), "standard")


def _with_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    next(o for o in m.opset_import if o.domain == "").version = version
    return m


def _assert_same_but_form(std: onnx.ModelProto, trt: onnx.ModelProto) -> None:
    assert {(o.domain, o.version) for o in std.opset_import} == {("", 21)}
    assert {(o.domain, o.version) for o in trt.opset_import} == {("", 20), ("trt", 1)}
    assert [t.SerializeToString() for t in std.graph.initializer] == [
        t.SerializeToString() for t in trt.graph.initializer]
    assert len(std.graph.node) == len(trt.graph.node)
    moved = 0
    for a, b in zip(std.graph.node, trt.graph.node, strict=True):
        blocked = any(x.name == "block_size" for x in a.attribute)
        assert (a.op_type, list(a.input), list(a.output), a.name) == (b.op_type, list(b.input), list(b.output), b.name)
        assert [x.SerializeToString() for x in a.attribute] == [x.SerializeToString() for x in b.attribute]
        assert b.domain == ("trt" if blocked else a.domain)
        moved += blocked
    assert moved and std.graph.input == trt.graph.input and std.graph.output == trt.graph.output


def test_shared_weight_gets_one_dq():
    model = _mlp()
    extra = helper.make_node("MatMul", ["res", "head"], ["logits2"], name="mm_head2")
    model.graph.node.append(extra)
    model.graph.output.append(helper.make_tensor_value_info("logits2", TensorProto.FLOAT, ["batch", 64]))
    res = quantize_weights(model, "int8", select=lambda c: c.weight == "head", lm_head="int8")
    readers = [n.input[1] for n in res.model.graph.node if n.name in ("mm_head", "mm_head2")]
    assert readers == ["head_dq", "head_dq"] and res.report.counts == {"int8": 2}
    assert sum(n.op_type == "DequantizeLinear" for n in res.model.graph.node) == 1
    assert "head" not in {t.name for t in res.model.graph.initializer}
    # a float reader left unquantized keeps the float initializer alive
    partial = quantize_weights(model, "int8", select=lambda c: c.node == "mm_head", lm_head="int8")
    assert "head" in {t.name for t in partial.model.graph.initializer}
    with pytest.raises(QdqError, match="shared by MatMuls quantized as"):
        quantize_weights(model, "int4", select=lambda c: c.weight == "head", lm_head="int8",
                             logits="logits2")


def test_awq_search_never_worse_than_rtn():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 96)).astype(np.float32)
    x = rng.standard_normal((64, 128)).astype(np.float32) * np.exp(rng.standard_normal(128) * 1.5)  # outlier chans
    s, alpha, err, rtn = awq_search(w, x, block_size=32)
    assert s.shape == (128,) and np.all(s > 0) and err <= rtn and alpha > 0 and err < 0.8 * rtn


def test_awq_search_blockwise_is_the_whole_weight_search():
    """The search computes diag(1/s) Q(diag(s) W) one int4 block of rows at a time: the same errors, alpha and
    scales, bit for bit, as whole-weight passes (how it was written before)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    x = (rng.standard_normal((16, 96)) * np.exp(rng.standard_normal(96))).astype(np.float32)
    mean = np.maximum(np.abs(x).mean(axis=0), 1e-8)
    ref = x @ w
    scaled, w_hat, diff = np.empty_like(w), np.empty_like(w), np.empty_like(ref)
    errors = []
    for i in range(20):
        s = mean ** (i / 20)
        s = s / math.sqrt(float(s.max() * s.min()))
        np.multiply(w, s[:, None], out=scaled)
        int4_blocked_roundtrip(scaled, 32, out=w_hat)
        np.divide(w_hat, s[:, None], out=w_hat)
        np.matmul(x, w_hat, out=diff)
        np.subtract(ref, diff, out=diff)
        np.square(diff, out=diff)
        errors.append((float(np.mean(diff)), s.astype(np.float32), i / 20))
    best = min(errors, key=lambda e: e[0])  # (the first of equal errors, as the search keeps)
    s, alpha, err, rtn = awq_search(w, x, block_size=32)
    assert (err, alpha, rtn) == (best[0], best[2], errors[0][0])
    assert np.array_equal(s, best[1])


# ------------------------------------------------------------------------------------------------------------------
# AWQ / SmoothQuant pre-scales folded into the producing norm's weight

K = 64
XN = np.random.default_rng(3).standard_normal((5, K)).astype(np.float32) * np.linspace(0.2, 4.0, K, dtype=np.float32)


def _normed(dtype=np.float32, *, cast_after: bool = False, weight_reader: str | None = None,
            h_output: bool = False, weight_input: bool = False, norm_before_o: bool = False) -> onnx.ModelProto:
    """x [b, K] -> RMSNorm as the exporter writes it (Cast to fp32, Pow, ReduceMean, Add eps, Sqrt, Reciprocal,
    Mul; Cast to the model dtype; ``Mul(ln_w, .)``) = h -> q/k/v MatMuls -> m = Mul(Add(q, k), v), a product of
    activations (as silu(gate) * up) -> o MatMul = logits.

    ``cast_after``: the weight Mul in fp32 with an fp32 weight, then the Cast to ``dtype`` (h is the Cast's output).
    ``weight_reader``: ``"side"``: ln_w is also read by ``Mul(ln_w, x)`` = graph output ``side``; ``"norm"``: a
    second norm with the same ln_w sits between m and the o MatMul. ``h_output``: h is also a graph output.
    ``weight_input``: ln_w is also a graph input (a default the caller may override). ``norm_before_o``: the o
    MatMul reads a norm of m (its own weight ln2_w) instead of m."""
    rng = np.random.default_rng(0)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    wdtype = np.float32 if cast_after else dtype
    w = {n: (rng.standard_normal((K, K)) / np.sqrt(K)).astype(dtype) for n in ("wq", "wk", "wv", "wo")}
    w["ln_w"] = rng.uniform(0.5, 1.5, K).astype(wdtype)
    w["ln2_w"] = rng.uniform(0.5, 1.5, K).astype(wdtype)
    consts = [numpy_helper.from_array(np.asarray(2.0, np.float32), "two"),
              numpy_helper.from_array(np.asarray(1e-6, np.float32), "eps"),
              numpy_helper.from_array(np.asarray([-1], np.int64), "axes")]

    def norm(x: str, weight: str, out: str) -> list[onnx.NodeProto]:
        p = f"{out}_"
        last = [helper.make_node("Mul", [weight, p + "n32"], [p + "h32"]),
                helper.make_node("Cast", [p + "h32"], [out], to=elem)] if cast_after else [
                helper.make_node("Cast", [p + "n32"], [p + "n"], to=elem),
                helper.make_node("Mul", [weight, p + "n"], [out])]
        return [helper.make_node("Cast", [x], [p + "x32"], to=TensorProto.FLOAT),
                helper.make_node("Pow", [p + "x32", "two"], [p + "sq"]),
                helper.make_node("ReduceMean", [p + "sq", "axes"], [p + "ms"], keepdims=1),
                helper.make_node("Add", [p + "ms", "eps"], [p + "mse"]),
                helper.make_node("Sqrt", [p + "mse"], [p + "rms"]),
                helper.make_node("Reciprocal", [p + "rms"], [p + "inv"]),
                helper.make_node("Mul", [p + "x32", p + "inv"], [p + "n32"]), *last]

    o_in = "m2" if weight_reader == "norm" or norm_before_o else "m"
    nodes = [*norm("x", "ln_w", "h"),
             helper.make_node("MatMul", ["h", "wq"], ["q"], name="mm_q"),
             helper.make_node("MatMul", ["h", "wk"], ["k"], name="mm_k"),
             helper.make_node("MatMul", ["h", "wv"], ["v"], name="mm_v"),
             helper.make_node("Add", ["q", "k"], ["qk"]),
             helper.make_node("Mul", ["qk", "v"], ["m"]),
             *(norm("m", "ln_w" if weight_reader == "norm" else "ln2_w", "m2") if o_in == "m2" else []),
             helper.make_node("MatMul", [o_in, "wo"], ["logits"], name="mm_o")]
    outputs = [helper.make_tensor_value_info("logits", elem, ["batch", K])]
    if weight_reader == "side":
        nodes.append(helper.make_node("Mul", ["ln_w", "x"], ["side"]))
        outputs.append(helper.make_tensor_value_info("side", elem, ["batch", K]))
    if h_output:
        outputs.append(helper.make_tensor_value_info("h", elem, ["batch", K]))
    inputs = [helper.make_tensor_value_info("x", elem, ["batch", K])]
    if weight_input:
        inputs.append(helper.make_tensor_value_info("ln_w", helper.np_dtype_to_tensor_dtype(np.dtype(wdtype)), [K]))
    inits = [numpy_helper.from_array(a, n) for n, a in w.items() if n != "ln2_w" or o_in == "m2" and
             weight_reader != "norm"]
    graph = helper.make_graph(nodes, "normed", inputs, outputs, inits + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _prescales(model: onnx.ModelProto, seed: int = 5) -> dict[str, AwqScales]:
    """Random positive scales (a spread like AWQ's, 0.25..4) for every activation of the weight MatMuls."""
    rng = np.random.default_rng(seed)
    out = {}
    for c in find_weight_matmuls(model):
        e = out.get(c.activation)
        weights = (*e.weights, c.weight) if e else (c.weight,)
        s = e.scales if e else np.exp(rng.uniform(-1.4, 1.4, c.k)).astype(np.float32)
        out[c.activation] = AwqScales(c.activation, weights, s, 0.5, 0.0, 0.0)
    return out


def _ops(model: onnx.ModelProto, op: str = "Mul") -> int:
    return sum(n.op_type == op for n in model.graph.node)


def _run(model: onnx.ModelProto, outputs=("logits",), dtype=np.float32) -> list[np.ndarray]:
    return ort_session(model).run(list(outputs), {"x": XN.astype(dtype)})


FP16_ROUNDING = 4e-3  # relative: a few fp16 ulps (2^-11) through a norm and two MatMul layers


@pytest.mark.parametrize("dtype,cast_after", [(np.float32, False), (np.float16, False), (np.float16, True)])
def test_awq_prescales_fold_into_norm_weight(dtype, cast_after):
    """The norm-fed q/k/v take their 1/s in ln_w (no node added); the o MatMul, fed by a product of activations,
    gets the Mul. Same outputs as the Mul form and as the unscaled graph, up to the dtype's rounding."""
    model = _normed(dtype, cast_after=cast_after)
    before = model.SerializeToString()
    scales = _prescales(model)
    assert set(scales) == {"h", "m"} and scales["h"].weights == ("wq", "wk", "wv")
    folded = apply_awq_scales(model, scales)
    muls = apply_awq_scales(model, scales, fold=False)
    assert model.SerializeToString() == before  # the argument is not touched
    assert (_ops(muls), _ops(folded)) == (_ops(model) + 2, _ops(model) + 1)  # exactly one Mul fewer
    onnx.checker.check_model(folded, full_check=True)

    w, wf = _weights(model), _weights(folded)
    s = scales["h"].scales
    assert wf["ln_w"].dtype == w["ln_w"].dtype
    np.testing.assert_array_equal(wf["ln_w"], (w["ln_w"].astype(np.float32) / s).astype(w["ln_w"].dtype))
    for name in ("wq", "wk", "wv"):  # the weights' half is the same in both forms
        np.testing.assert_array_equal(wf[name], _weights(muls)[name])
        np.testing.assert_array_equal(wf[name], (w[name].astype(np.float32) * s[:, None]).astype(dtype))
    readers = {n.name: list(n.input) for n in folded.graph.node if n.name.startswith("mm_")}
    assert [readers[f"mm_{x}"][0] for x in "qkv"] == ["h"] * 3 and readers["mm_o"][0] == "m_awq"
    assert not any(t.name.startswith("h_awq") for t in folded.graph.initializer)

    tol = 1e-5 if dtype == np.float32 else FP16_ROUNDING
    got, via_mul, ref = (_run(m, dtype=dtype)[0] for m in (folded, muls, model))
    assert _rel(got, via_mul) < tol and _rel(got, ref) < tol and _rel(via_mul, ref) < tol


def test_awq_fold_shared_norm_weight():
    """A norm weight read elsewhere too stays as it is for its other readers: the folded norm gets its own copy;
    of two norms sharing one weight, both folded with different scales, the first gets a copy and the second,
    then its only reader, the original."""
    model = _normed(weight_reader="side")
    scales = _prescales(model)
    folded = apply_awq_scales(model, scales)
    w, wf = _weights(model), _weights(folded)
    np.testing.assert_array_equal(wf["ln_w"], w["ln_w"])
    np.testing.assert_array_equal(wf["ln_w_awq"], w["ln_w"] / scales["h"].scales)
    norm_mul = next(n for n in folded.graph.node if n.output[0] == "h")
    side = next(n for n in folded.graph.node if n.output[0] == "side")
    assert "ln_w_awq" in norm_mul.input and side.input[0] == "ln_w"
    assert _ops(folded) == _ops(model) + 1  # m's Mul only
    got, via_mul, ref = (_run(m, ("logits", "side")) for m in (folded, apply_awq_scales(model, scales,
                                                                                              fold=False), model))
    assert _rel(got[0], via_mul[0]) < 1e-5 and _rel(got[0], ref[0]) < 1e-5
    np.testing.assert_array_equal(got[1], ref[1])

    two = _normed(weight_reader="norm")  # ln_w read by the norm of x and the norm of m, both in front of MatMuls
    scales = _prescales(two)
    assert set(scales) == {"h", "m2"}
    folded = apply_awq_scales(two, scales)
    assert _ops(folded) == _ops(two)  # no Mul added at all
    w, wf = _weights(two), _weights(folded)
    assert len(wf) == len(w) + 1
    by_out = {n.output[0]: n for n in folded.graph.node}
    copies = {out: next(i for i in by_out[out].input if i in wf) for out in ("h", "m2")}
    assert copies == {"h": "ln_w_awq", "m2": "ln_w"}
    for out, act in (("h", "h"), ("m2", "m2")):
        np.testing.assert_array_equal(wf[copies[out]], w["ln_w"] / scales[act].scales)
    via_mul = apply_awq_scales(two, scales, fold=False)
    assert _ops(via_mul) == _ops(two) + 2
    assert _rel(_run(folded)[0], _run(via_mul)[0]) < 1e-5 and _rel(_run(folded)[0], _run(two)[0]) < 1e-5


@pytest.mark.parametrize("case", ["h_output", "weight_input", "other_reader", "cast_other_reader"])
def test_awq_prescale_stays_a_mul_where_it_cannot_fold(case):
    """h read by something other than the scaled MatMuls (a graph output, another node), a norm weight that is a
    graph input (overridable), or an fp32 norm output that a node other than the Cast reads: the Mul form, the
    norm weight untouched."""
    model = _normed(h_output=case == "h_output", weight_input=case == "weight_input",
                    cast_after=case == "cast_other_reader")
    if case == "other_reader":
        model.graph.node.append(helper.make_node("Relu", ["h"], ["h_relu"]))
        model.graph.output.append(helper.make_tensor_value_info("h_relu", TensorProto.FLOAT, ["batch", K]))
    if case == "cast_other_reader":  # the fp32 output of the weight Mul is also read before its Cast
        model.graph.node.append(helper.make_node("Relu", ["h_h32"], ["h32_relu"]))
        model.graph.output.append(helper.make_tensor_value_info("h32_relu", TensorProto.FLOAT, ["batch", K]))
    scales = _prescales(model)
    folded = apply_awq_scales(model, scales)
    assert _ops(folded) == _ops(model) + 2  # h's and m's
    np.testing.assert_array_equal(_weights(folded)["ln_w"], _weights(model)["ln_w"])
    assert [n.input[0] for n in folded.graph.node if n.name in ("mm_q", "mm_k", "mm_v")] == ["h_awq"] * 3
    outputs = [o.name for o in model.graph.output]
    got, ref = _run(folded, outputs), _run(model, outputs)
    assert _rel(got[0], ref[0]) < 1e-5
    for a, b in zip(got[1:], ref[1:], strict=True):  # the other readers see the unscaled tensors
        np.testing.assert_array_equal(a, b)


def test_awq_prescale_folds_into_the_o_norm_only_with_a_constant_weight():
    """m (a product of two activations) never folds; a norm put in front of the o MatMul makes it fold there too."""
    model = _normed(norm_before_o=True)
    scales = _prescales(model)
    assert set(scales) == {"h", "m2"}
    folded = apply_awq_scales(model, scales)
    assert _ops(folded) == _ops(model)
    np.testing.assert_array_equal(_weights(folded)["ln2_w"], _weights(model)["ln2_w"] / scales["m2"].scales)
    assert _rel(_run(folded)[0], _run(model)[0]) < 1e-5


# ------------------------------------------------------------------------------------------------------------------
# the demo checkpoint's decoder

SIZES = {"batch": 1, "seq": 6, "past": 3}


@pytest.fixture(scope="module")
def decoder(demo_build_onnx) -> onnx.ModelProto:
    """The demo checkpoint's decoder graph, exported through the CLI (conftest's export, shared by the session)."""
    return onnx.load(str(demo_build_onnx / "graphs" / "decoder.onnx"))


def _feeds(model: onnx.ModelProto, seed: int, sizes: dict[str, int] = SIZES) -> dict[str, np.ndarray]:
    """Random inputs for the decoder graph from its declared inputs (named dims: batch, seq, past, past+seq)."""
    rng = np.random.default_rng(seed)
    dims = {**sizes, "past+seq": sizes["past"] + sizes["seq"]}
    feeds = {}
    for v in model.graph.input:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dims[d.dim_param] for d in t.shape.dim]
        if v.name == "attention_mask":
            feeds[v.name] = np.ones(shape, np.int64)
        elif v.name == "position_ids":
            feeds[v.name] = np.broadcast_to(np.arange(sizes["past"], sizes["past"] + shape[-1]), shape).copy()
        else:
            feeds[v.name] = rng.standard_normal(shape).astype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    return feeds


def _with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in weights:
            t.CopyFrom(numpy_helper.from_array(weights[t.name].astype(np.float32), t.name))
    return out


def _logits(model: onnx.ModelProto, feeds) -> np.ndarray:
    return ort_session(model).run(["logits"], feeds)[0]


def test_decoder_linears_are_matmuls_with_kn_initializers(decoder):
    found = find_weight_matmuls(decoder)
    assert len(found) >= 8 and sum(c.lm_head for c in found) == 1
    assert not any(n.op_type == "Gemm" for n in decoder.graph.node)
    head = next(c for c in found if c.lm_head)
    assert decoder.graph.node[head.index].output[0] == "logits" and head.n == 512  # [K=hidden, N=vocab]


def test_decoder_int4(decoder):
    feeds = _feeds(decoder, 0)
    ref = _logits(decoder, feeds)
    res = quantize_weights(decoder, "int4", lm_head="int4")
    assert res.report.counts == {"int4": len(find_weight_matmuls(decoder))}
    got = _logits(res.model, feeds)
    # exactly the fp32 graph with the dequantized weights (ORT with qdq_matmulnbits_accuracy_level "0")
    assert _rel(got, _logits(_with_weights(decoder, _dequantized(res)), feeds)) < 1e-5
    assert _nrel(got, ref) < 0.15  # lm_head int4 too
    body = quantize_weights(decoder, "int4")  # lm_head kept fp32 (default)
    assert _nrel(_logits(body.model, feeds), ref) < 0.06
    assert (_logits(body.model, feeds).argmax(-1) == ref.argmax(-1)).mean() >= 0.8
    assert body.report.bytes_after < body.report.bytes_before
    _assert_same_but_form(res.model, convert_dq_form(res.model, "trt"))


def test_decoder_int8_and_w8a8(decoder):
    feeds = _feeds(decoder, 0)
    ref = _logits(decoder, feeds)
    int8 = quantize_weights(decoder, "int8", lm_head="int8")
    assert _nrel(_logits(int8.model, feeds), ref) < 0.02
    cal = calibrate(decoder, [_feeds(decoder, s, {"batch": 1, "seq": 8, "past": 0}) for s in range(1, 5)])
    w8a8 = quantize_weights(decoder, "w8a8", act_amax=cal.amax)
    assert w8a8.report.counts == {"w8a8": len(find_weight_matmuls(decoder)) - 1}
    assert len(w8a8.report.activation_qdq) == len({c.activation for c in find_weight_matmuls(decoder)}) - 1
    assert _nrel(_logits(w8a8.model, feeds), ref) < 0.06


def test_decoder_awq_scales(decoder):
    cal = calibrate(decoder, [_feeds(decoder, s, {"batch": 1, "seq": 8, "past": 0}) for s in range(1, 5)])
    scales = awq_scales(decoder, cal, grid=10)
    assert set(scales) == {c.activation for c in find_weight_matmuls(decoder) if not c.lm_head}
    k = {c.activation: c.k for c in find_weight_matmuls(decoder)}
    assert all(e.error <= e.error_rtn and e.scales.shape == (k[a],) for a, e in scales.items())
    assert sum(e.error for e in scales.values()) < sum(e.error_rtn for e in scales.values())
    scaled = apply_awq_scales(decoder, scales)
    feeds = _feeds(decoder, 0)
    assert _rel(_logits(scaled, feeds), _logits(decoder, feeds)) < 1e-4  # equivalent before quantization
    res = quantize_weights(scaled, "int4")
    assert res.report.counts == {"int4": len(find_weight_matmuls(decoder)) - 1}
    assert _nrel(_logits(res.model, feeds), _logits(decoder, feeds)) < 0.1


def test_decoder_awq_prescales_fold_into_the_norms(decoder):
    """On the exported decoder (pre-scales on every weight MatMul, lm_head included, as orin-int4 applies them):
    each layer's input and post-attention norms and the final norm take their activation's 1/s in their weight;
    o_proj and down_proj keep a Mul each. Same logits as the Mul form."""
    cal = calibrate(decoder, [_feeds(decoder, s, {"batch": 1, "seq": 8, "past": 0}) for s in range(1, 3)])
    scales = awq_scales(decoder, cal, grid=5, lm_head=True)
    g = decoder.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    layers = sum(o.name.startswith("present.") and o.name.endswith(".key") for o in g.output)
    # input_norms.N.weight, post_norms.N.weight, norm.weight (the exporter keeps the parameters' names)
    norm_fed = {a for a in scales if producer[a].op_type == "Mul" and any(
        i in inits and "norm" in i and i.endswith(".weight") for i in producer[a].input)}
    assert layers >= 2 and len(scales) == 4 * layers + 1 and len(norm_fed) == 2 * layers + 1
    folded = apply_awq_scales(decoder, scales)
    muls = apply_awq_scales(decoder, scales, fold=False)
    assert _ops(muls) == _ops(decoder) + len(scales)
    assert _ops(folded) == _ops(muls) - len(norm_fed) == _ops(decoder) + 2 * layers
    awq_muls = [n for n in folded.graph.node if n.name.endswith("_awq_Mul")]
    assert {n.input[0] for n in awq_muls} == set(scales) - norm_fed
    feeds = _feeds(decoder, 0)
    ref = _logits(decoder, feeds)
    assert _rel(_logits(folded, feeds), _logits(muls, feeds)) < 1e-5 and _rel(_logits(folded, feeds), ref) < 1e-4


def test_decoder_smoothquant_w8a8(decoder):
    """SmoothQuant migration keeps the float graph equivalent and then quantizes to W8A8 with recalibrated ranges."""
    feeds_cal = [_feeds(decoder, s, {"batch": 1, "seq": 8, "past": 0}) for s in range(1, 5)]
    cal = calibrate(decoder, feeds_cal)
    scales = smoothquant_scales(decoder, cal)
    k = {c.activation: c.k for c in find_weight_matmuls(decoder)}
    assert set(scales) == {c.activation for c in find_weight_matmuls(decoder) if not c.lm_head}
    assert all(e.scales.shape == (k[a],) and np.all(e.scales > 0) for a, e in scales.items())
    smoothed = apply_awq_scales(decoder, scales)
    feeds = _feeds(decoder, 0)
    ref = _logits(decoder, feeds)
    assert _rel(_logits(smoothed, feeds), ref) < 1e-4  # equivalent before quantization
    res = quantize_weights(smoothed, "w8a8", act_amax=calibrate(smoothed, feeds_cal).amax)
    assert res.report.counts == {"w8a8": len(find_weight_matmuls(decoder)) - 1}
    assert _nrel(_logits(res.model, feeds), ref) < 0.06
    with pytest.raises(QdqError, match="alpha"):
        smoothquant_scales(decoder, cal, alpha=1.5)


def test_int4_roundtrip_in_place_is_quantize_then_dequantize_bit_for_bit():
    """AWQ's inner loop (``int4_blocked_roundtrip``) gives exactly what quantizing and dequantizing give: an
    all-zero block, tiny and large values, and a reused buffer."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((256, 96)) * rng.uniform(1e-6, 10, (256, 1))).astype(np.float32)
    w[128:, :5] = 0.0
    w[:128, 7] = 1e-30
    buf = np.full_like(w, np.nan)
    for block in (32, 128):
        q, scale = quantize_int4_blocked(w, block)
        want = dequantize_int4_blocked(q, scale, block)
        assert np.array_equal(int4_blocked_roundtrip(w, block), want)
        assert np.array_equal(int4_blocked_roundtrip(w, block, out=buf), want) and np.array_equal(buf, want)
