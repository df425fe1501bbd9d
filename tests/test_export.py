"""build --target onnx (and its alias, export) -> run -> verify -> bench on ONNX Runtime: parity, determinism,
failure detection and marking, the torch-free artifact side, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI_WITHOUT_TORCH
from PIL import Image
from typer.testing import CliRunner

from mobilevlm_export.checkpoint.model import load_checkpoint
from mobilevlm_export.checkpoint.reference import Reference
from mobilevlm_export.cli import app
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.manifest import MANIFEST, update_manifest

runner = CliRunner()


def _export(ckpt, out, samples, *extra):
    res = runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--samples", str(samples), "--json", *extra])
    return res


@pytest.fixture(scope="module")
def exported(tiny_ckpt, samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "onnx"
    res = _export(tiny_ckpt, out, samples)
    assert res.exit_code == 0, res.output
    return out, json.loads(res.stdout)


def test_fp32_parity(exported):
    out, result = exported
    v = result["verification"]
    assert v["passed"] and v["token_agreement"] == 1.0
    logits = [m for m in v["metrics"] if m["output"] == "logits"]
    assert {m["case"] for m in logits} == {"prefill", "decode"}
    for m in v["metrics"]:
        assert m["max_abs"] <= 1e-4, m
    assert all(m["top1"] == 1.0 for m in logits)
    manifest = json.loads((out / MANIFEST).read_text())
    assert set(manifest["graphs"]) == {"vision_encoder", "projector", "embed_tokens", "decoder"}
    assert all(len(a["sha256"]) == 64 and a["bytes"] > 0 for a in manifest["artifacts"])
    assert manifest["versions"]["torch"].startswith("2.13") and manifest["recipe"]["recipe"]["name"] == "onnx-fp32"
    assert manifest["target"] == "onnx" and manifest["graphs"]["decoder"]["contract"]["ranges"]["past"]["min"] == 0
    assert manifest["verification"]["passed"]


def test_run_uses_artifacts_only_and_matches_reference(exported, tiny_ckpt, tmp_path):
    out, _ = exported
    moved = shutil.copytree(out, tmp_path / "elsewhere")  # nothing refers back to the checkpoint
    ref = Reference(load_checkpoint(tiny_ckpt))
    for size, mode in [((300, 200), "RGB"), ((64, 48), "RGBA"), ((20, 30), "L"), ((2000, 900), "RGB")]:
        img = tmp_path / f"img_{mode}_{size[0]}.png"
        Image.fromarray(np.random.default_rng(size[0]).integers(0, 255, (size[1], size[0], 3), np.uint8)).convert(
            mode).save(img)
        res = runner.invoke(app, ["run", str(moved), "--image", str(img), "--prompt", "What shape is this?",
                                  "--max-new-tokens", "6", "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)
        want = ref.generate(Image.open(img), "What shape is this?", SamplingParams(max_new_tokens=6))
        assert got["output_ids"] == want.output_ids and got["prompt_ids"] == want.prompt_ids
        assert got["timings"]["ttft_ms"] > 0


def test_decode_with_kv_equals_full_forward(exported):
    """Each decode step (seq=1, growing past) gives the logits a full-sequence prefill gives at that place."""
    from mobilevlm_export.runtime.artifacts import open_artifacts

    art = open_artifacts(exported[0])
    pipe = art.generator()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 12, 64)).astype(np.float32)
    pipe.decoder.prefill(x[:, :8])
    for i in range(8, 12):
        step = pipe.decoder.step(x[:, i:i + 1])[-1]
        full = pipe.decoder.prefill(x[:, :i + 1])[-1]
        np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-5)
        pipe.decoder.prefill(x[:, :i + 1])


def test_export_is_deterministic(exported, tiny_ckpt, samples, tmp_path):
    res = _export(tiny_ckpt, tmp_path / "again", samples)
    assert res.exit_code == 0, res.output
    a = {x["path"]: x["sha256"] for x in json.loads((exported[0] / MANIFEST).read_text())["artifacts"]}
    b = {x["path"]: x["sha256"] for x in json.loads(res.stdout)["artifacts"]}
    assert a == b


def test_verify_fails_on_wrong_numbers(exported, tmp_path):
    import onnx
    from onnx import numpy_helper

    out = shutil.copytree(exported[0], tmp_path / "bad")
    path = out / "graphs" / "decoder.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight (lm_head/embed)
    w = numpy_helper.to_array(init).copy()
    w += 0.05
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    update_manifest(out)  # a consistent manifest: the file is not corrupt, it computes the wrong numbers
    junit = tmp_path / "junit.xml"
    res = runner.invoke(app, ["verify", str(out), "--junit", str(junit)])
    assert res.exit_code == 1, res.output
    assert "FAIL decoder" in res.stdout and "logits" in res.stdout
    assert "<failure" in junit.read_text()
    res = runner.invoke(app, ["verify", str(out), "--json"])
    worst = json.loads(res.stdout)["verification"]["worst"][0]
    assert worst["graph"] == "decoder"


def _bad(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


def test_corrupt_artifact_is_bad_input(exported, tmp_path):
    out = shutil.copytree(exported[0], tmp_path / "corrupt")
    f = out / "graphs" / "projector.onnx"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    _bad(["verify", str(out)], "projector.onnx", "sha256")
    _bad(["run", str(out), "--image", "x.png", "--prompt", "q"], "sha256")
    (out / "graphs" / "projector.onnx").unlink()
    _bad(["verify", str(out)], "projector.onnx", "missing")


def test_export_bad_input(exported, tiny_ckpt, samples, tmp_path):
    _bad(["export", str(tiny_ckpt), "-o", str(exported[0])], "not empty", "--force")
    _bad(["export", str(tiny_ckpt), "-o", str(tmp_path / "x"), "--format", "tflite"], "--format", "tflite")
    _bad(["export", str(tiny_ckpt), "-o", str(tmp_path / "x"), "--precision", "int3"], "--precision", "int3")
    _bad(["verify", str(tmp_path)], "manifest.json")
    _bad(["run", str(exported[0]), "--image", str(samples / "0.png"), "--prompt", "word " * 2000], "capacity")
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_fp16_export_reports_parity(tiny_ckpt, samples, tmp_path):
    res = _export(tiny_ckpt, tmp_path / "fp16", samples, "--recipe", "onnx-fp16")  # --precision from the recipe
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["verification"]
    assert v["passed"]
    assert any(m["output"] == "logits" and m["top1"] is not None for m in v["metrics"])
    manifest = json.loads((tmp_path / "fp16" / MANIFEST).read_text())
    assert manifest["graphs"]["decoder"]["contract"]["inputs"][0]["dtype"] == "float16"
    assert manifest["precision"] == "fp16" and manifest["recipe"]["recipe"]["name"] == "onnx-fp16"


def test_fused_image_encoder_from_recipe(tiny_ckpt, samples, tmp_path):
    recipe = tmp_path / "onnx-fused.toml"
    text = (Path(__file__).parent.parent / "recipes" / "onnx-fp32.toml").read_text()
    recipe.write_text(text.replace("fused_image_encoder = false", "fused_image_encoder = true"))
    res = _export(tiny_ckpt, tmp_path / "fused", samples, "--recipe", str(recipe))
    assert res.exit_code == 0, res.output
    v = json.loads(res.stdout)["verification"]
    assert v["passed"] and {m["graph"] for m in v["metrics"]} == {"image_encoder", "embed_tokens", "decoder"}


def test_sigterm_removes_staging(tiny_ckpt, samples, tmp_path):
    """A build stopped by SIGTERM (a CI timeout, `kill`) leaves neither the output nor its staging directory."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "mobilevlm_export.cli", "export", str(tiny_ckpt), "-o", str(out),
                             "--samples", str(samples)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".out.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*"))


def test_build_target_onnx_equals_export_and_marks_failed_parity(exported, tiny_ckpt, samples, tmp_path):
    """`build --target onnx` writes the alias's graphs byte for byte; a build that fails parity is committed but
    marked (manifest verification.passed = false, exit 1) and `run` warns."""
    strict = tmp_path / "onnx-strict.toml"
    text = (Path(__file__).parent.parent / "recipes" / "onnx-fp32.toml").read_text()
    strict.write_text(text.replace("max_abs = 1e-4\ncosine_min", "max_abs = 1e-12\ncosine_min", 1))
    out = tmp_path / "built"
    res = runner.invoke(app, ["build", str(tiny_ckpt), "--target", "onnx", "--recipe", str(strict), "-o", str(out),
                              "--samples", str(samples), "--no-bench", "--json"])
    assert res.exit_code == 1, res.output
    assert json.loads(res.stdout)["verification"]["passed"] is False
    graphs = lambda d: {a["path"]: a["sha256"] for a in json.loads((d / MANIFEST).read_text())["artifacts"]  # noqa: E731
                        if a["path"].startswith("graphs/")}
    assert graphs(out) == graphs(exported[0]) and len(graphs(out)) == 4
    assert json.loads((out / MANIFEST).read_text())["verification"]["passed"] is False
    res = runner.invoke(app, ["run", str(out), "--image", str(samples / "0.png"), "--prompt", "What?",
                              "--max-new-tokens", "2"])
    assert res.exit_code == 0 and "failed its parity check" in res.stderr, res.output


def test_bench_refuses_what_does_not_fit(exported):
    _bad(["bench", str(exported[0]), "--prompt-tokens", "2000", "--decode-tokens", "100"], "--decode-tokens",
         "capacity")
    res = runner.invoke(app, ["bench", str(exported[0]), "--threads", "1", "--prompt-tokens", "8",
                              "--decode-tokens", "4", "--runs", "1", "--json"])
    assert res.exit_code == 0, res.output
    host = json.loads(res.stdout)["host"]
    assert host["prefill_positions"] == 8 + 144 and host["decode_tokens_per_s"] > 0 and host["ttft_ms"] > 0


def test_artifact_side_without_torch(exported, samples, tmp_path):
    """`run`, `verify` and `bench` on a built DIR in a process where importing torch or transformers fails."""
    import subprocess
    import sys

    out = str(exported[0])
    for args in (["verify", out, "--json"],
                 ["run", out, "--image", str(samples / "1.png"), "--prompt", "What shape is this?", "--json"],
                 ["bench", out, "--prompt-tokens", "4", "--decode-tokens", "2", "--runs", "1", "--json"]):
        res = subprocess.run([sys.executable, "-c", CLI_WITHOUT_TORCH, *args], capture_output=True, text=True,
                             cwd=tmp_path)
        assert res.returncode == 0, (args, res.stderr[-2000:])
        assert "blocked" not in res.stderr
        json.loads(res.stdout)


def test_junit_path_errors_and_write_failure(exported, tmp_path, monkeypatch):
    """`--junit` to a directory, a missing parent or a read-only place: exit 2 before any work; a write that fails
    after verification still shows the report (table, or the one JSON object) and says whether parity passed."""
    import mobilevlm_export.files

    for bad, needle in ((tmp_path, "is a directory"), (tmp_path / "no" / "j.xml", "does not exist"),
                        (Path("/proc/junit.xml"), "cannot write")):
        res = runner.invoke(app, ["verify", str(exported[0]), "--junit", str(bad)])
        assert res.exit_code == 2 and "Traceback" not in res.output, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --junit") and needle in lines[0], res.stderr

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mobilevlm_export.files, "write_file_atomic", full)
    res = runner.invoke(app, ["verify", str(exported[0]), "--junit", str(tmp_path / "j.xml")])
    assert res.exit_code == 2 and "PASSED" in res.stdout, res.output
    assert res.stderr.strip().splitlines()[-1] == (f"error: --junit {tmp_path / 'j.xml'}: cannot write it (No "
                                                   "space left on device); parity passed")  # (after the progress)
    res = runner.invoke(app, ["verify", str(exported[0]), "--junit", str(tmp_path / "j.xml"), "--json"])
    obj = json.loads(res.stdout)
    assert res.exit_code == 2 and obj["verification"]["passed"] and obj["exit_code"] == 2 and "junit" in obj["error"]
    assert not (tmp_path / "j.xml").exists()


@pytest.mark.parametrize("change", ["dtype", "rank", "missing"])
def test_resigned_golden_arrays_that_break_the_contract(exported, tmp_path, change):
    """A golden npz edited and re-signed (its sha256 recorded again) whose arrays no longer fit the graphs'
    contracts: exit 2 naming the npz and the array, not an error from inside the runtime."""
    import shutil

    import numpy as np

    from mobilevlm_export.manifest import update_manifest

    out = shutil.copytree(exported[0], tmp_path / "d")
    npz = out / "golden" / "golden.npz"
    arrays = dict(np.load(npz))
    key = next(k for k in arrays if k.startswith("decoder/") and k.endswith("/in/attention_mask"))
    if change == "dtype":
        arrays[key] = arrays[key].astype(np.float32)
    elif change == "rank":
        arrays[key] = arrays[key][0]
    else:
        del arrays[key]
    np.savez(npz, **arrays)
    update_manifest(out)
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    line = res.stderr.strip().splitlines()[-1]
    assert "golden.npz" in line and key in line, line
