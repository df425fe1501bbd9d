"""The TensorRT runner's logic over a test double of TensorRT's Python API (``trt_double``: NOT TensorRT; its
engines are ONNX Runtime on the bundle's graphs): profile choice, buffers allocated once and reused, the KV cache
kept on the device, every refusal one clear line; and the artifact side never falling back quietly from recorded
engines to ONNX Runtime. The tests against real TensorRT are in test_orin.py and run wherever it imports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from trt_double import CudaDouble, TensorRTDouble, write_engines
from typer.testing import CliRunner

from mobilevlm_export.backends.tensorrt_runtime import TensorRTRunner, cuda_problem
from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
from mobilevlm_export.cli import app
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.graphs.contracts import GraphContract, kv_names
from mobilevlm_export.runtime.artifacts import open_artifacts
from mobilevlm_export.runtime.golden_reader import load_golden

runner = CliRunner()
IMAGE = sorted((demo_checkpoint_dir().parent / "samples").glob("*.png"))[0]


@pytest.fixture(scope="module")
def bundle(demo_build_orin_fp16) -> Path:
    """`build --target orin --recipe orin-fp16 --no-bench` of the demo (conftest's, shared with test_orin; read-only:
    the cases copy it)."""
    return demo_build_orin_fp16


@pytest.fixture()
def double(bundle, tmp_path):
    """A copy of the bundle with the double's engines, and the double's runners over them."""
    root = shutil.copytree(bundle, tmp_path / "bundle")
    engines = write_engines(root)
    cuda = CudaDouble()
    trt = TensorRTDouble(cuda, root)
    art = open_artifacts(root, backend="onnxruntime")  # (the reference: engines on disk, not recorded)
    runners = {name: TensorRTRunner(engines[name], GraphContract.from_dict(g["contract"]), trt=trt, cudart=cuda)
               for name, g in art.manifest["graphs"].items()}
    return art, runners, trt, cuda


def _golden_request(art):
    arrays, e2e = load_golden(art.root)
    return e2e[0]["prompt_ids"], arrays["e2e/0/pixel_values"]


def test_answers_as_onnxruntime_with_the_cache_kept_on_the_device(double):
    art, runners, trt, cuda = double
    ids, pixels = _golden_request(art)
    params = SamplingParams(max_new_tokens=12)
    want, _ = art.generator(art.runners()).generate_ids(ids, pixels, params)  # ONNX Runtime, IO binding
    pipe = art.generator(runners)
    got, _ = pipe.generate_ids(ids, pixels, params)
    assert got == want

    # step by step: what each decode step allocates and copies
    session = pipe.decoder
    image = pipe.image_embeds(pixels[None])
    logits = pipe.prefill(ids, image)
    pipe.step(int(logits.argmax()))  # the first step: every buffer already exists (allocated at prefill)
    cache = {ptr for pair in session._cache.values() for ptr in pair}
    assert len(cache) == 2 * 2 * art.manifest["model"]["dims"]["layers"]  # key + value, ping + pong, per layer
    mallocs, frees, copies = cuda.mallocs, cuda.frees, len(cuda.copies)
    steps = 6
    for _ in range(steps):
        logits = pipe.step(int(logits.argmax()))
    assert (cuda.mallocs, cuda.frees) == (mallocs, frees), "a decode step allocated or freed device memory"
    step_copies = cuda.copies[copies:]
    assert not [c for c in step_copies if c[1] in cache], "a decode step copied the KV cache to or from the host"
    hidden, vocab = art.manifest["model"]["dims"]["hidden"], art.manifest["model"]["dims"]["vocab"]
    # per step: the new token's embedding goes up (embed_tokens' ids, the decoder's embeds and position), the last
    # position's logits come down (and embed_tokens' output, which the loop splices on the host)
    h2d = sorted(n for kind, _, n in step_copies if kind == "h2d")
    d2h = sorted(n for kind, _, n in step_copies if kind == "d2h")
    assert h2d == sorted([4, 4, hidden * 2] * steps), h2d  # int32 id, int32 position, fp16 embedding
    assert d2h == sorted([hidden * 2, vocab * 4] * steps), d2h  # fp16 embedding, fp32 logits row

    # the decoder's profiles: prefill (past 0) on profile 0, every step on profile 1
    decoder_log = [(p, shapes) for p, shapes in trt.log if "past_key_values.0.key" in shapes]
    assert decoder_log[-steps - 2][0] == 0 and decoder_log[-steps - 2][1]["past_key_values.0.key"][2] == 0
    assert all(p == 1 and shapes["inputs_embeds"][1] == 1 for p, shapes in decoder_log[-steps - 1:])
    past = [shapes["past_key_values.0.key"][2] for _, shapes in decoder_log[-steps - 1:]]
    assert past == list(range(past[0], past[0] + steps + 1))  # the cache grows by one position a step


def test_run_buffers_allocated_once(double):
    """``run`` (verify's per-graph path) allocates each tensor's buffer once, at the profiles' largest shape."""
    art, runners, _, cuda = double
    r = runners["embed_tokens"]
    a = r.run({"input_ids": np.array([[5, 6, 7]], np.int32)})["inputs_embeds"]
    n = cuda.mallocs
    b = r.run({"input_ids": np.array([[5, 6, 7, 8, 9]], np.int32)})["inputs_embeds"]
    assert cuda.mallocs == n and cuda.frees == 0
    np.testing.assert_array_equal(a[0], b[0, :3])


def test_prompt_longer_than_the_prefill_profile_is_refused_before_any_engine_runs(double):
    art, runners, trt, _ = double
    pipe = art.generator(runners)
    limit = art.manifest["recipe"]["tensorrt"]["max_prompt"]
    tokens = pipe.image_tokens
    ids, pixels = _golden_request(art)
    text = [i for i in ids if i >= 0]
    long_ids = [-200] + (text * (limit // len(text) + 2))[: limit - tokens + 10]  # limit + 10 positions with the image
    with pytest.raises(UserError, match=rf"exceed the {limit} positions .* raise tensorrt\.max_prompt"):
        pipe.generate_ids(long_ids, pixels, SamplingParams(max_new_tokens=4))
    assert not trt.log, "an engine ran before the refusal"


def test_run_refuses_a_long_prompt_in_one_line(bundle):
    """The same refusal on the CLI (ONNX Runtime here: the bundle has no engines), exit 2, naming the key."""
    from mobilevlm_export.runtime.prompt import build_prompt_ids, prompt_length

    art = open_artifacts(bundle)
    limit, tokens = art.manifest["recipe"]["tensorrt"]["max_prompt"], art.manifest["model"]["dims"]["image_tokens"]
    words = 1
    while prompt_length(build_prompt_ids(art.tokenizer, "word " * words, False), tokens) <= limit:
        words += 1
    assert prompt_length(build_prompt_ids(art.tokenizer, "word " * words, False), tokens) + 4 < 512  # fits the cache
    res = runner.invoke(app, ["run", str(bundle), "--image", str(IMAGE), "--prompt", "word " * words,
                              "--max-new-tokens", "4"])
    assert res.exit_code == 2, res.output
    assert res.stderr.count("\n") == 1 and "tensorrt.max_prompt" in res.stderr, res.stderr


def test_shapes_outside_every_profile_name_the_tensor_and_ranges(double):
    art, runners, _, _ = double
    dec = runners["decoder"]
    c = dec.contract
    kv = next(t for t in c.inputs if t.name == kv_names(0)[0])
    hidden, heads, hd = c.inputs[0].dims[2], kv.dims[1], kv.dims[3]
    buf = dec.allocate(1 << 20)
    # a chunk (seq 3 over a cache of 5): neither prefill (past 0) nor decode (seq 1) takes it
    inputs = {"inputs_embeds": (buf, (1, 3, hidden)), "attention_mask": (buf, (1, 8)), "position_ids": (buf, (1, 3))}
    inputs.update({n: (buf, (1, heads, 5, hd)) for i in range(art.manifest["model"]["dims"]["layers"])
                   for n in kv_names(i)[:2]})
    with pytest.raises(CheckFailed, match=r"no optimization profile .*inputs_embeds \[1, 3, .*profile 0: .*"
                                          r"profile 1: "):
        dec.execute(inputs, {})
    with pytest.raises(CheckFailed, match="no optimization profile"):
        runners["embed_tokens"].run({"input_ids": np.ones((1, 10_000), np.int32)})


def test_the_double_enforces_the_documented_contract(double):
    """What the double refuses, as TensorRT does: shapes outside the profile, unknown names, a missing address."""
    _, runners, trt, _ = double
    r = runners["embed_tokens"]
    r.run({"input_ids": np.array([[5]], np.int32)})
    ctx = r._context
    assert ctx.set_input_shape("input_ids", (1, 10_000)) is False
    assert ctx.set_input_shape("inputs_embeds", (1, 1, 8)) is False  # an output
    assert ctx.set_tensor_address("nope", 1) is False
    assert ctx.set_optimization_profile_async(5, None) is False
    ctx.addresses.pop("inputs_embeds")
    assert ctx.execute_async_v3(None) is False
    with pytest.raises(AssertionError, match="outside every allocation"):
        trt.cuda.device_range(12345, 8)


def test_an_engine_of_another_graph_is_refused(double, bundle):
    art, _, trt, cuda = double
    engines = write_engines(art.root)
    with pytest.raises(UserError, match="differ from the graph's contract"):
        TensorRTRunner(engines["embed_tokens"], GraphContract.from_dict(art.manifest["graphs"]["decoder"]["contract"]),
                       trt=trt, cudart=cuda)


def test_cuda_python_newer_than_the_driver_is_named():
    cuda = CudaDouble(driver=12060)
    assert cuda_problem(cuda, "12.6.2") is None
    why = cuda_problem(cuda, "13.0.1")
    assert "cuda-python 13.0.1 needs a CUDA 13 driver" in why and "CUDA 12.6" in why and "jetpack6" in why
    assert "no CUDA device" in cuda_problem(CudaDouble(devices=0), "12.6.2")


def test_recorded_engines_never_fall_back_quietly(bundle, tmp_path):
    """Engines recorded in the manifest: run/verify/bench use them or fail in one line; ONNX Runtime only when asked,
    and the output says which backend ran."""
    root = shutil.copytree(bundle, tmp_path / "recorded")
    write_engines(root)
    res = runner.invoke(app, ["trt-build", str(root), "--record-only", "--json"])
    assert res.exit_code == 0, res.output
    args = ["--image", str(IMAGE), "--prompt", "What color is the shape?", "--max-new-tokens", "4"]
    res = runner.invoke(app, ["run", str(root), *args])
    assert res.exit_code == 2, res.output
    assert "TensorRT engines cannot run here: tensorrt is not importable" in res.stderr
    assert "--backend onnxruntime" in res.stderr and res.stderr.count("\n") == 1
    for cmd in (["verify", str(root)], ["bench", str(root), "--runs", "1", "--warmup", "0", "--decode-tokens", "2"]):
        res = runner.invoke(app, cmd)
        assert res.exit_code == 2 and "cannot run here" in res.stderr, (cmd, res.output)
    res = runner.invoke(app, ["run", str(root), *args, "--backend", "onnxruntime", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backend"] == "onnxruntime"
    res = runner.invoke(app, ["run", str(root), *args, "--backend", "onnxruntime"])
    assert res.exit_code == 0 and "backend: onnxruntime" in res.stderr, res.output
    res = runner.invoke(app, ["verify", str(root), "--backend", "onnxruntime", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["backend"] == "onnxruntime", res.output
    res = runner.invoke(app, ["run", str(root), *args, "--backend", "executorch"])
    assert res.exit_code == 2 and "--backend executorch: orin builds run on tensorrt or onnxruntime" in res.stderr
    # without engines, --backend tensorrt is refused in one line
    res = runner.invoke(app, ["run", str(bundle), *args, "--backend", "tensorrt"])
    assert res.exit_code == 2 and "no TensorRT engine recorded" in res.stderr, res.output


def test_verify_over_the_double_every_golden_case_fits_a_profile(double):
    """What `verify` runs on the device: every golden case of every graph within the engines' profiles, and the
    same parity as ONNX Runtime (the double's engines are the same graphs)."""
    from mobilevlm_export.verify import verify_e2e, verify_graphs

    art, runners, trt, _ = double
    golden, e2e = load_golden(art.root)
    metrics = verify_graphs(runners, golden, art.recipe)
    assert metrics and all(m.passed for m in metrics), [m for m in metrics if not m.passed]
    results = verify_e2e(art.generator(runners), golden, e2e, art.recipe.e2e.max_new_tokens)
    assert results and all(r.match for r in results)
    assert {p for p, shapes in trt.log if "past_key_values.0.key" in shapes} == {0, 1}  # prefill and decode
