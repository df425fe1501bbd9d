"""build --target orin on the demo checkpoint: TensorRT-ready ONNX per recipe (fp16, int4 AWQ/RTN, W8A8), lint,
ONNX Runtime parity, the on-device bundle (build plan, trtexec script, trt-domain graphs), the torch-free device
side, and bad input. TensorRT itself is exercised only where it imports (it cannot be installed here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import CLI_WITHOUT_TORCH
from typer.testing import CliRunner

from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
from mobilevlm_export.cli import app
from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import RECIPES_DIR, load_recipe

runner = CliRunner()
SAMPLES = demo_checkpoint_dir().parent / "samples"


class _Builds(dict):
    """name -> (DIR, the build's JSON), each built on first use (a test of one recipe builds only that one), by
    conftest's ``demo_builds``: once per session, shared with test_trt_runner (fp16), test_hardening_artifacts and
    test_install (int4, the target's default). Read-only: a test that changes a build copies it first."""

    def __init__(self, builds, recipes: dict[str, str]) -> None:
        super().__init__()
        self.builds, self.recipes = builds, recipes

    def __missing__(self, name: str):
        self[name] = self.builds["orin", self.recipes[name]]
        return self[name]


@pytest.fixture(scope="module")
def builds(demo_builds, tmp_path_factory):
    """The shipped orin recipes and an int4 round-to-nearest variant of orin-int4 (`build --target orin --recipe R
    --no-bench --threads 2 --json`)."""
    root = tmp_path_factory.mktemp("orin")
    rtn = root / "orin-int4-rtn.toml"
    rtn.write_text((RECIPES_DIR / "orin-int4.toml").read_text().replace('algorithm = "awq"', 'algorithm = "rtn"')
                   .replace('name = "orin-int4"', 'name = "orin-int4-rtn"'))
    return _Builds(demo_builds, {"fp16": "orin-fp16", "int4": "orin-int4", "int4-rtn": str(rtn), "int8": "orin-int8"})


def _logits(result: dict) -> list[dict]:
    return [m for m in result["verification"]["metrics"] if m["output"] == "logits"]


@pytest.mark.usefixtures("demo_build_orin_fp16")  # (conftest: built ahead, in the background)
def test_fp16_tokens_identical_and_bundle_complete(builds):
    out, result = builds["fp16"]
    v = result["verification"]
    assert v["passed"] and v["token_agreement"] == 1.0 and len(v["e2e"]) == 10
    assert all(m["top1"] == 1.0 for m in _logits(result))
    manifest = json.loads((out / "manifest.json").read_text())
    files = {a["path"] for a in manifest["artifacts"]}
    assert {"build_plan.json", "build_engines.sh", "golden/golden.npz", "tokenizer/tokenizer.json"} <= files
    assert {f"{d}/{g}.onnx" for d in ("graphs", "trt") for g in ("image_encoder", "embed_tokens", "decoder")} <= files
    comp = manifest["compile"]
    assert comp["lint"] == "passed" and comp["tensorrt"] == "10.3" and comp["fits"]["fits"]
    assert comp["engines"].startswith("not built: ")  # said plainly: no TensorRT here
    dec = manifest["graphs"]["decoder"]["contract"]
    assert {t["name"]: t["dtype"] for t in dec["inputs"]}["position_ids"] == "int32"
    assert dec["inputs"][0]["dtype"] == "float16" and dec["outputs"][0]["dims"][1] == 1  # last-position logits


@pytest.mark.usefixtures("demo_build_orin")  # (conftest: built ahead, in the background)
def test_int4_accuracy_and_awq_against_round_to_nearest(builds, reference_heldout):
    """int4 (AWQ) held-out accuracy within 2 points of the reference; AWQ and round-to-nearest side by side."""
    from mobilevlm_export.demo.evaluate import heldout_accuracy

    rows = {}
    for name in ("int4", "int4-rtn"):
        out, result = builds[name]
        assert result["verification"]["passed"], result["verification"]["worst"]
        logits = _logits(result)
        acc, _ = heldout_accuracy(n=60, artifacts=out)
        rows[name] = {"accuracy": acc, "kl": max(m["kl"] for m in logits), "top1": min(m["top1"] for m in logits),
                      "cosine": min(m["cosine"] for m in logits)}
    ref_acc, _ = reference_heldout(60)  # heldout_accuracy(n=60) of the reference (conftest: once per session)
    print(json.dumps({"reference_accuracy": ref_acc, **rows}))
    assert rows["int4"]["accuracy"] >= ref_acc - 0.02 and rows["int4-rtn"]["accuracy"] >= ref_acc - 0.02
    quant = "\n".join(builds["int4"][1]["log"])
    assert "AWQ pre-scales" in quant and "int4 (int4 block 128)" in quant
    assert "AWQ" not in "\n".join(builds["int4-rtn"][1]["log"])


@pytest.mark.usefixtures("demo_build_orin_int8")  # (conftest: built ahead, in the background)
def test_int8_w8a8_has_calibrated_activation_qdq(builds):
    out, result = builds["int8"]
    assert result["verification"]["passed"]
    model = onnx.load(str(out / "graphs" / "decoder.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    assert "w8a8" in "\n".join(result["log"])


@pytest.mark.usefixtures("demo_build_orin")  # (conftest: built ahead, in the background)
def test_trt_form_differs_only_in_domain_and_opset(builds):
    from mobilevlm_export.backends.tensorrt_qdq import convert_dq_form

    out, _ = builds["int4"]
    std = onnx.load(str(out / "graphs" / "decoder.onnx"))
    trt = onnx.load(str(out / "trt" / "decoder.onnx"))
    blocked = [n for n in trt.graph.node if n.op_type == "DequantizeLinear" and
               any(a.name == "block_size" for a in n.attribute)]
    assert blocked and all(n.domain == "trt" for n in blocked)
    assert {o.domain: o.version for o in trt.opset_import}[""] == 20
    assert {o.domain: o.version for o in std.opset_import}[""] == 21
    assert [t.SerializeToString() for t in trt.graph.initializer] == [t.SerializeToString() for t in
                                                                       std.graph.initializer]
    assert convert_dq_form(trt, "standard").SerializeToString() == std.SerializeToString()


@pytest.mark.usefixtures("demo_build_orin")  # (conftest: built ahead, in the background)
def test_build_plan_and_trtexec_script_agree_with_the_contracts(builds):
    """The plan matches the graphs' contracts and ONNX files; build_engines.sh passes trtexec 10.3's option
    grammar (tests/trtexec_grammar.py) and carries the plan's engines, flags, workspace and profiles."""
    from trtexec_grammar import check_script

    from mobilevlm_export.backends.tensorrt import read_plan
    from mobilevlm_export.graphs.contracts import GraphContract

    out, _ = builds["int4"]
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = load_recipe("orin-int4").options
    plan = read_plan(out)
    assert [e.graph for e in plan.engines] == list(manifest["graphs"])
    assert plan.tensorrt == manifest["compile"]["tensorrt"] == "10.3"  # the grammar checked is trtexec 10.3's
    calls = check_script((out / "build_engines.sh").read_text())
    assert len(calls) == len(plan.engines)
    for e, call in zip(plan.engines, calls, strict=True):
        contract = GraphContract.from_dict(manifest["graphs"][e.graph]["contract"])
        assert e.contract == contract.to_dict()
        onnx_in = onnx.load(str(out / e.onnx), load_external_data=False)
        assert [i.name for i in onnx_in.graph.input] == [t.name for t in contract.inputs]
        assert [o.name for o in onnx_in.graph.output] == [t.name for t in contract.outputs]
        assert e.strongly_typed == any(n.op_type == "DequantizeLinear" for n in onnx_in.graph.node)
        for p in e.profiles:
            assert set(p.shapes) == {t.name for t in contract.inputs}
            for t in contract.inputs:
                s = p.shapes[t.name]
                assert len(s["min"]) == len(t.dims) and all(a <= b <= c for a, b, c in zip(
                    s["min"], s["opt"], s["max"], strict=True))
                for i, d in enumerate(t.dims):
                    if isinstance(d, int):
                        assert s["min"][i] == s["max"][i] == d
        assert call.warnings == [], call.warnings
        assert call.options["--onnx"] == e.onnx and call.options["--saveEngine"] == e.engine
        assert ("--stronglyTyped" in call.options) == e.strongly_typed and ("--fp16" in call.options) == e.fp16
        assert call.profiles == [p.shapes for p in e.profiles]
        assert call.memory_pools == {"workspace": recipe.workspace_mb << 20} == {"workspace": plan.workspace_bytes}
    dec = next(e for e in plan.engines if e.graph == "decoder")
    prefill, decode = (p.shapes for p in dec.profiles)
    assert [p.name for p in dec.profiles] == ["prefill", "decode"]
    assert prefill["past_key_values.0.key"]["max"][2] == 0 and prefill["inputs_embeds"]["max"][1] == recipe.max_prompt
    assert decode["inputs_embeds"]["max"][1] == 1 and decode["past_key_values.0.key"]["max"][2] == \
        recipe.max_context - 1
    assert decode["attention_mask"]["max"][1] == recipe.max_context


@pytest.mark.usefixtures("demo_build_orin")  # (conftest: built ahead, in the background)
def test_device_side_without_torch(builds, tmp_path):
    """`verify` and `run` on an orin bundle where importing torch or transformers fails (ONNX Runtime runner)."""
    out = str(builds["int4"][0])
    for args in (["verify", out, "--json"],
                 ["run", out, "--image", str(SAMPLES / "1_purple_square.png"), "--prompt",
                  "What color is the shape?", "--json"]):
        res = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TORCH, *args], capture_output=True, text=True,
                             cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr[-2000:])
    assert json.loads(res.stdout)["text"] == "purple"


@pytest.mark.usefixtures("demo_build_orin_fp16")  # (conftest: built ahead, in the background)
def test_trt_build_refuses_what_it_cannot_build(builds, tmp_path):
    try:
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    if not has_trt:
        res = runner.invoke(app, ["trt-build", str(builds["fp16"][0])])
        assert res.exit_code == 2 and "tensorrt is not importable" in res.stderr, res.output
    onnx_dir = tmp_path / "not-orin"
    shutil.copytree(builds["fp16"][0], onnx_dir)
    manifest = json.loads((onnx_dir / "manifest.json").read_text())
    tampered = tmp_path / "tampered"
    shutil.copytree(builds["fp16"][0], tampered)
    f = tampered / "trt" / "decoder.onnx"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    res = runner.invoke(app, ["trt-build", str(tampered)])
    assert res.exit_code == 2 and "sha256" in res.stderr and "trt/decoder.onnx" in res.stderr, res.output
    manifest["target"] = "onnx"
    from mobilevlm_export.manifest import write_manifest

    write_manifest(onnx_dir, {k: v for k, v in manifest.items() if k not in ("artifacts", "format_version")})
    res = runner.invoke(app, ["trt-build", str(onnx_dir)])
    assert res.exit_code == 2 and "not an orin bundle" in res.stderr, res.output


@pytest.mark.usefixtures("demo_build_orin_fp16")  # (conftest: built ahead, in the background)
def test_engines_from_the_script_are_used_only_once_recorded(builds, tmp_path):
    """Engines `build_engines.sh` wrote are not run unchecked: verify refuses them until `trt-build --record-only`
    records their sha256; a missing engine cannot be recorded. (Here the "engines" are placeholder bytes and
    TensorRT is absent, so once recorded verify refuses to fall back quietly and runs ONNX Runtime only when asked
    with --backend onnxruntime; where TensorRT imports they would run.)"""
    from mobilevlm_export.backends.tensorrt import read_plan

    bundle = tmp_path / "bundle"
    shutil.copytree(builds["fp16"][0], bundle)
    plan = read_plan(bundle)
    res = runner.invoke(app, ["trt-build", str(bundle), "--record-only"])
    assert res.exit_code == 2 and "run build_engines.sh first" in res.stderr, res.output
    for e in plan.engines:
        (bundle / e.engine).parent.mkdir(parents=True, exist_ok=True)
        (bundle / e.engine).write_bytes(b"engine bytes of " + e.graph.encode())
    res = runner.invoke(app, ["verify", str(bundle)])
    assert res.exit_code == 2 and "not recorded" in res.stderr, res.output
    assert f"mvlm-export trt-build {bundle} --record-only" in res.stderr  # the command that records them
    res = runner.invoke(app, ["trt-build", str(bundle), "--record-only", "--json"])
    assert res.exit_code == 0, res.output
    recorded = {e["graph"]: e["file"] for e in json.loads(res.stdout)["engines"]}
    assert recorded == {e.graph: e.engine for e in plan.engines}
    manifest = json.loads((bundle / "manifest.json").read_text())
    listed = {a["path"] for a in manifest["artifacts"]}
    assert all(f in listed and manifest["graphs"][g]["engine"] == f for g, f in recorded.items())
    if "tensorrt" not in sys.modules:
        res = runner.invoke(app, ["verify", str(bundle)])
        assert res.exit_code == 2 and "TensorRT engines cannot run here" in res.stderr, res.output
        assert runner.invoke(app, ["verify", str(bundle), "--backend", "onnxruntime"]).exit_code == 0
    engine = bundle / plan.engines[0].engine
    engine.write_bytes(engine.read_bytes() + b"x")  # changed after recording: caught
    res = runner.invoke(app, ["verify", str(bundle)])
    assert res.exit_code == 2 and "sha256" in res.stderr, res.output


@pytest.mark.usefixtures("demo_build_orin_fp16")  # (conftest: built ahead, in the background)
def test_engines_rebuilt_by_the_script_are_recorded_again(builds, tmp_path):
    """build_engines.sh run again (new engines and timing cache over recorded ones): `trt-build --record-only`
    records them, and `trt-build` gets past the bundle check (to "no TensorRT here" where it is absent); every
    other file is still checked against its sha256."""
    from mobilevlm_export.backends.tensorrt import TIMING_CACHE, read_plan

    bundle = shutil.copytree(builds["fp16"][0], tmp_path / "bundle")
    plan = read_plan(bundle)
    for round_ in (1, 2):  # the script's first run, then a second one
        for e in plan.engines:
            (bundle / e.engine).parent.mkdir(parents=True, exist_ok=True)
            (bundle / e.engine).write_bytes(f"engine {round_} of {e.graph}".encode())
        (bundle / TIMING_CACHE).write_bytes(f"cache {round_}".encode())
        if round_ == 2 and "tensorrt" not in sys.modules:
            res = runner.invoke(app, ["trt-build", str(bundle)])
            assert res.exit_code == 2 and "tensorrt is not importable" in res.stderr, res.output
        res = runner.invoke(app, ["trt-build", str(bundle), "--record-only", "--json"])
        assert res.exit_code == 0, res.output
    from mobilevlm_export.runtime.artifacts import open_artifacts

    assert open_artifacts(bundle).manifest["compile"]["engines"][0]["builder"] == "build_engines.sh"
    other = bundle / "build_engines.sh"  # not an engine: still checked
    other.write_text(other.read_text() + "# edited\n")
    res = runner.invoke(app, ["trt-build", str(bundle), "--record-only"])
    assert res.exit_code == 2 and "build_engines.sh: corrupt artifact" in res.stderr, res.output


@pytest.mark.usefixtures("demo_build_orin_fp16")  # (conftest: built ahead, in the background)
def test_tensorrt_engines(builds, tmp_path):
    """Where TensorRT and a GPU exist: trt-build builds the engines from the plan, verify runs on them."""
    pytest.importorskip("tensorrt", reason="TensorRT cannot be installed here: its wheels fetch from NVIDIA's own "
                                           "index; this runs on a Jetson or a machine with TensorRT and a GPU")
    from mobilevlm_export.backends.tensorrt_runtime import tensorrt_available

    if tensorrt_available():
        pytest.skip(f"TensorRT imports but cannot run: {tensorrt_available()}")
    out = shutil.copytree(builds["fp16"][0], tmp_path / "bundle")
    res = runner.invoke(app, ["trt-build", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert {e["graph"] for e in json.loads(res.stdout)["engines"]} == {"image_encoder", "embed_tokens", "decoder"}
    from mobilevlm_export.backends.tensorrt_runtime import TensorRTRunner
    from mobilevlm_export.runtime.artifacts import open_artifacts

    runners = open_artifacts(out).runners()
    assert all(isinstance(r, TensorRTRunner) for r in runners.values())
    res = runner.invoke(app, ["verify", str(out), "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("edit,needle", [
    (('precision = "fp16"', 'precision = "fp8"'), "recipe.precision"),
    (("max_prompt = 384", "max_prompt = 600"), "tensorrt.max_prompt"),
    (('[tensorrt]', '[quantize.decoder]\nscheme = "int4"\ngroup_size = 256\n\n[tensorrt]'),
     "quantize.decoder.group_size"),
    (('[tensorrt]', '[quantize.embed_tokens]\nscheme = "int4"\n\n[tensorrt]'), "quantize.embed_tokens.scheme"),
])
def test_bad_orin_recipe(tmp_path, edit, needle):
    text = (RECIPES_DIR / "orin-fp16.toml").read_text()
    assert edit[0] in text
    f = tmp_path / "bad.toml"
    f.write_text(text.replace(edit[0], edit[1], 1))
    res = runner.invoke(app, ["build", "--target", "orin", "--recipe", str(f), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "o").exists()


def test_context_beyond_the_model_and_block_not_dividing(tmp_path):
    f = tmp_path / "long.toml"
    f.write_text((RECIPES_DIR / "orin-fp16.toml").read_text().replace("max_context = 512", "max_context = 1024"))
    res = runner.invoke(app, ["build", "--target", "orin", "--recipe", str(f), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "max_position_embeddings 512" in res.stderr, res.output
    from mobilevlm_export.graphs.contracts import ModelDims
    from mobilevlm_export.profiles import load_profile
    from mobilevlm_export.targets.orin import OrinTarget

    dims = ModelDims(image_size=336, patches=576, vision_hidden=64, image_tokens=144, hidden=128, intermediate=352,
                     layers=4, heads=4, kv_heads=4, head_dim=32, vocab=512, max_context=512)
    with pytest.raises(UserError, match=r"quantize.decoder.group_size = 128 does not divide .* 352"):
        OrinTarget().limits(load_recipe("orin-int4"), load_profile("orin-nano-8gb"), dims)


@pytest.mark.usefixtures("demo_build_orin")  # (conftest: built ahead, in the background)
def test_fits_on_device_refuses_with_the_numbers(builds, tmp_path):
    from mobilevlm_export.profiles import PROFILES_DIR, load_profile
    from mobilevlm_export.targets.orin import fits_on_device

    out, _ = builds["int4"]
    manifest = json.loads((out / "manifest.json").read_text())
    recipe = load_recipe("orin-int4")
    fits = fits_on_device(out, manifest["graphs"], manifest["model"]["dims"], recipe, load_profile("orin-nano-8gb"))
    assert fits["fits"] and fits["weights_bytes"] > 0 and fits["kv_cache_bytes"] == 2 * 4 * 4 * 32 * 512 * 2
    assert fits["builder_bytes"] == int(1.65e9)  # TensorRT 10.3's builder start-up on Orin, the profile's figures
    assert set(fits["activation_bytes"]["decoder"]) == {"prefill", "decode"}
    tiny = tmp_path / "tiny.toml"
    tiny.write_text((PROFILES_DIR / "orin-nano-8gb.toml").read_text().replace(
        "memory_gb = 8 ", "memory_gb = 1 "))
    with pytest.raises(UserError, match=r"does not fit .* to build: TensorRT builder 1.54 GiB"):
        fits_on_device(out, manifest["graphs"], manifest["model"]["dims"], recipe, load_profile(tiny))


# MobileVLM_V2-1.7B's and -3B's dims (reference/mobilevlm.md), for the fit at full size without building
V2_1_7B = dict(image_size=336, patches=576, vision_hidden=1024, image_tokens=144, hidden=2048, intermediate=5632,
               layers=24, heads=16, kv_heads=16, head_dim=128, vocab=32000, max_context=2048)
V2_3B = {**V2_1_7B, "hidden": 2560, "intermediate": 6912, "layers": 32, "heads": 32, "kv_heads": 32, "head_dim": 80}


def _weights(d: dict, bytes_per_weight: float) -> dict[str, int]:
    vision = 24 * 12 * d["vision_hidden"] ** 2 * 2  # the CLIP tower, fp16
    decoder = d["layers"] * (4 * d["hidden"] ** 2 + 3 * d["hidden"] * d["intermediate"]) + d["vocab"] * d["hidden"]
    return {"image_encoder": vision, "embed_tokens": d["vocab"] * d["hidden"] * 2,
            "decoder": int(decoder * bytes_per_weight)}


def test_memory_fit_at_full_size_on_the_orin_nano():
    """Per profile and phase, with the numbers: a 3B fp16 build does not fit an 8 GB Orin Nano (refused); a 1.7B
    int4 build fits it; the run's KV buffers and activations are counted at the recipe's shapes."""
    from mobilevlm_export.profiles import load_profile
    from mobilevlm_export.targets.orin import memory_fit

    nano = load_profile("orin-nano-8gb")
    with pytest.raises(UserError, match=r"orin-fp16.toml: does not fit orin-nano-8gb \(8 GB\) to build: TensorRT "
                                        r"builder 1.54 GiB \+ 3 x the decoder's weights 4.88 GiB"):
        memory_fit(_weights(V2_3B, 2.0), V2_3B, load_recipe("orin-fp16"), nano)
    fit = memory_fit(_weights(V2_1_7B, 0.5 + 2 / 128), V2_1_7B, load_recipe("orin-int4"), nano)
    assert fit["kv_cache_bytes"] == 2 * 24 * 16 * 128 * 512 * 2  # fp16 keys and values at context 512
    assert fit["run_bytes"] > fit["weights_bytes"] + 2 * fit["kv_cache_bytes"]
    dec = fit["activation_bytes"]["decoder"]
    assert dec["prefill"] > dec["decode"] > 0  # 384 positions of attention and MLP vs one
    assert "build: TensorRT builder" in fit["summary"] and "run: weights" in fit["summary"]


def test_orin_predictions_from_the_profiles():
    """The AGX profile's calibration reproduces the published 1.7B 4-bit decode figure within 10 %."""
    from mobilevlm_export.profiles import load_profile

    weights = 24 * (4 * 2048 * 2048 + 3 * 2048 * 5632) + 32000 * 2048  # MobileLLaMA-1.4B linears + lm_head
    q4k = load_profile("orin-agx-64gb").predict(weights * 4.5 / 8, 2.0 * weights, 2.0 * 302e6 * 577)
    assert abs(q4k["decode_tokens_per_s"] - 65.3) / 65.3 < 0.1, q4k
    assert 802 * 0.8 < q4k["prefill_tokens_per_s"] < 1086 * 1.2, q4k
    nano = load_profile("orin-nano-8gb").predict(weights * 4.5 / 8, 2.0 * weights, 2.0 * 302e6 * 577)
    assert nano["decode_tokens_per_s"] < q4k["decode_tokens_per_s"]
    assert np.isclose(nano["decode_tokens_per_s"] / q4k["decode_tokens_per_s"], 68 / 204.8, rtol=0.02)
