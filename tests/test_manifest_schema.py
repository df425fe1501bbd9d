"""Manifests are input too: a malformed manifest, a file outside DIR or unlisted, corrupt golden data whose sha256
was re-recorded, and a recipe for another target are each one line on stderr naming the file and key, exit 2, no
traceback; ``verify --recipe`` judges by the named recipe, whatever the manifest's copy says."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from mobilevlm_export.cli import app
from mobilevlm_export.errors import UserError
from mobilevlm_export.manifest import (
    E2E_JSON,
    GOLDEN_NPZ,
    MANIFEST,
    MANIFEST_SPEC,
    read_manifest,
    sha256,
    update_manifest,
    write_manifest,
)
from mobilevlm_export.runtime.artifacts import open_artifacts
from mobilevlm_export.runtime.golden_reader import case_names

runner = CliRunner()


@pytest.fixture(scope="module")
def demo(demo_build_onnx) -> Path:
    """The demo checkpoint exported to ONNX (conftest's, built once per session; read-only: cases copy it)."""
    return demo_build_onnx


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    return path


def _manifest(d: Path) -> dict:
    return json.loads((d / MANIFEST).read_text())


def _write(d: Path, manifest: dict) -> None:
    """Write ``manifest`` as is (its artifacts unchanged; NaN written as JSON's non-standard NaN)."""
    (d / MANIFEST).write_text(json.dumps(manifest))


def _resign(d: Path, manifest: dict | None = None) -> None:
    """Re-record every file's sha256, as a user editing the directory by hand might."""
    manifest = manifest or _manifest(d)
    write_manifest(d, {k: v for k, v in manifest.items() if k not in ("artifacts", "format_version")})


def _edit(fn):
    """A case that edits the parsed manifest in place, leaving its artifacts as recorded."""
    def mutate(d: Path, outside: Path) -> None:
        m = _manifest(d)
        fn(m)
        _write(d, m)
    return mutate


def _with_outside_copy(rel: str, fn):
    """Copy DIR/rel to OUTSIDE, then ``fn(manifest, outside_file)``; the copy is listed with its sha256 (only
    the inside-DIR rule can reject it)."""
    def mutate(d: Path, outside: Path) -> None:
        f = Path(shutil.copy(d / rel, outside / Path(rel).name))
        m = _manifest(d)
        fn(m, f)
        m["artifacts"].append({"path": os.path.relpath(f, d), "sha256": sha256(f), "bytes": f.stat().st_size})
        _write(d, m)
    return mutate


def _symlink_out(rel: str):
    """Replace DIR/rel by a link to a copy outside DIR, and re-record the artifacts (through the link)."""
    def mutate(d: Path, outside: Path) -> None:
        target = outside / Path(rel).name
        shutil.move(d / rel, target)
        (d / rel).symlink_to(target, target_is_directory=target.is_dir())
        _resign(d)
    return mutate


def _unlist(rel: str):
    return _edit(lambda m: m.update(artifacts=[a for a in m["artifacts"] if a["path"] != rel]))


def _raw(text_fn):
    """A case that rewrites manifest.json's bytes."""
    def mutate(d: Path, outside: Path) -> None:
        raw = text_fn((d / MANIFEST).read_bytes())
        (d / MANIFEST).write_bytes(raw)
    return mutate


def _golden(fn):
    """A case that rewrites golden data with ``fn(DIR)``, then re-records its sha256."""
    def mutate(d: Path, outside: Path) -> None:
        fn(d)
        _resign(d)
    return mutate


def _rewrite_npz(d: Path, keep) -> None:
    with np.load(d / GOLDEN_NPZ) as data:
        arrays = {k: data[k] for k in data.files if keep(k)}
    (d / GOLDEN_NPZ).unlink()
    np.savez(d / GOLDEN_NPZ, **arrays)


def _set(path: str, value):
    """Set a dotted path (``graphs.decoder.file``; digits index lists) in the manifest."""
    def fn(m: dict) -> None:
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
    return _edit(fn)


def _delete(path: str):
    def fn(m: dict) -> None:
        *parents, last = path.split(".")
        node = m
        for p in parents:
            node = node[p]
        del node[last]
    return _edit(fn)


# (id, mutate(DIR, OUTSIDE), substrings of the one error line besides "error: ")
MANIFEST_CASES = [
    ("not-json", _raw(lambda b: b"{not json"), ("manifest.json", "not valid JSON")),
    ("not-utf8", _raw(lambda b: b"\xff\xfe\xfa garbage"), ("manifest.json", "not valid JSON")),
    ("empty-file", _raw(lambda b: b""), ("manifest.json", "not valid JSON")),
    ("a-list", _raw(lambda b: b"[1, 2]"), ("manifest.json", "top level must be an object")),
    ("a-string", _raw(lambda b: b'"manifest"'), ("manifest.json", "top level must be an object")),
    ("old-format", _set("format_version", 1), ("manifest.json", "format_version is 1, expected 2")),
    ("too-deep", _raw(lambda b: b"[" * 100_000), ("manifest.json", "not valid JSON")),
    ("no-graphs", _delete("graphs"), ("manifest.json", "graphs is missing")),
    ("graphs-empty", _set("graphs", {}), ("manifest.json", "graphs must be a non-empty object")),
    ("graphs-a-list", _set("graphs", ["decoder"]), ("manifest.json", "graphs must be a non-empty object")),
    ("graph-a-string", _set("graphs.decoder", "graphs/decoder.onnx"), ("graphs.decoder must be an object",)),
    ("graph-file-int", _set("graphs.decoder.file", 3), ("manifest.json", "graphs.decoder.file must be a string")),
    ("graph-file-missing", _delete("graphs.decoder.file"), ("graphs.decoder.file is missing",)),
    ("graph-no-contract", _delete("graphs.projector.contract"), ("graphs.projector.contract is missing",)),
    ("contract-no-ranges", _set("graphs.decoder.contract.ranges", {}), ("graphs.decoder.contract must be",)),
    ("contract-dtype", _set("graphs.embed_tokens.contract.inputs.0.dtype", "float33"),
     ("graphs.embed_tokens.contract must be",)),
    ("contract-a-list", _set("graphs.decoder.contract", []), ("graphs.decoder.contract must be",)),
    ("no-decoder", _delete("graphs.decoder"), ("manifest.json", "graphs holds", "decoder")),
    ("decoder-no-cache", _edit(lambda m: m["graphs"]["decoder"]["contract"].update(
        inputs=m["graphs"]["decoder"]["contract"]["inputs"][:1], outputs=[],
        ranges={k: r for k, r in m["graphs"]["decoder"]["contract"]["ranges"].items() if k != "past"})),
     ("graphs.decoder.contract.ranges.past is missing",)),
    ("engine-a-list", _set("graphs.decoder.engine", ["x"]), ("graphs.decoder.engine must be a string",)),
    ("dims-string", _set("model.dims.layers", "4"), ("manifest.json", "model.dims.layers must be an integer")),
    ("dims-bool", _set("model.dims.vocab", True), ("model.dims.vocab must be an integer",)),
    ("dims-negative", _set("model.dims.hidden", -1), ("model.dims.hidden must be an integer >= 0",)),
    ("no-eos", _delete("model.eos_token_id"), ("model.eos_token_id is missing",)),
    ("eos-float", _set("model.eos_token_id", 2.5), ("model.eos_token_id must be an integer",)),
    ("mean-string", _set("model.preprocess.mean", "rgb"), ("model.preprocess.mean must be a list of 3 numbers",)),
    ("no-preprocess", _delete("model.preprocess"), ("model.preprocess is missing",)),
    ("model-null", _set("model", None), ("model must be an object",)),
    ("target-unknown", _set("target", "tpu"), ("manifest.json", "target must be a registered target")),
    ("target-int", _set("target", 7), ("target must be a registered target",)),
    ("recipe-a-list", _set("recipe", []), ("manifest.json", "recipe must be an object")),
    ("recipe-target-a-list", _set("recipe.recipe.target", ["onnx"]), ("manifest.json (recipe)", "recipe.target")),
    ("recipe-bad-value", _set("recipe.tolerances.default.max_abs", "loose"),
     ("manifest.json (recipe)", "tolerances.default.max_abs")),
    ("verification-a-list", _set("verification", []), ("verification must be an object or null",)),
    ("costs-zero", _set("costs.vision_ops", 0), ("costs must be",)),
    ("profile-name-int", _set("profile", {"name": 5}), ("profile must be null or an object whose name is a string",)),
    ("artifacts-empty", _set("artifacts", []), ("manifest.json", "artifacts must be a non-empty list")),
    ("artifacts-missing", _delete("artifacts"), ("manifest.json", "artifacts is missing")),
    ("artifacts-object", _set("artifacts", {"a": 1}), ("artifacts must be a non-empty list",)),
    ("artifact-a-string", _set("artifacts.0", "golden/e2e.json"), ("artifacts[0] must be an object",)),
    ("sha-not-hex", _set("artifacts.0.sha256", "z" * 64), ("artifacts[0].sha256 must be 64 lowercase hex",)),
    ("sha-short", _set("artifacts.1.sha256", "ab"), ("artifacts[1].sha256 must be 64 lowercase hex",)),
    ("bytes-negative", _set("artifacts.0.bytes", -1), ("artifacts[0].bytes must be an integer >= 0",)),
    ("path-int", _set("artifacts.2.path", 5), ("artifacts[2].path must be a string",)),
    ("nan", _set("verification.metrics.0.max_abs", float("nan")),
     ("manifest.json", "verification.metrics[0].max_abs is NaN or infinite")),
    ("infinity", _set("costs.vision_ops", float("-inf")), ("costs.vision_ops is NaN or infinite",)),
    ("1e999", _raw(lambda b: b.replace(b'"format_version": 2,', b'"format_version": 2, "x": [1e999],', 1)),
     ("x[0] is NaN or infinite",)),
    ("graph-dotdot", _with_outside_copy("graphs/decoder.onnx",
                                        lambda m, f: m["graphs"]["decoder"].update(file="../outside/decoder.onnx")),
     ("manifest.json", "graphs.decoder.file = '../outside/decoder.onnx' must be a relative path", "without '..'")),
    ("graph-absolute", _with_outside_copy("graphs/projector.onnx",
                                          lambda m, f: m["graphs"]["projector"].update(file=str(f))),
     ("manifest.json", "graphs.projector.file = '/", "must be a relative path")),
    ("engine-absolute", _set("graphs.decoder.engine", "/etc/passwd"),
     ("graphs.decoder.engine = '/etc/passwd' must be a relative path",)),
    ("graph-symlink-out", _symlink_out("graphs/decoder.onnx"),
     ("manifest.json", "graphs.decoder.file = 'graphs/decoder.onnx' resolves to", "outside")),
    ("golden-symlink-out", _symlink_out("golden/e2e.json"),
     ("manifest.json: golden/e2e.json resolves to", "outside")),
    ("tokenizer-symlink-out", _symlink_out("tokenizer"),
     ("manifest.json: tokenizer/tokenizer", "resolves to", "outside")),
    ("artifact-dotdot", _with_outside_copy("golden/e2e.json", lambda m, f: None),
     ("manifest.json", "artifacts[9].path = '../outside/e2e.json' must be a relative path", "without '..'")),
    ("graph-unlisted", _unlist("graphs/decoder.onnx"),
     ("manifest.json", "graphs.decoder.file = 'graphs/decoder.onnx' is not listed in artifacts")),
    ("golden-unlisted", _unlist("golden/golden.npz"), ("manifest.json: golden/golden.npz is not listed",)),
    ("e2e-unlisted", _unlist("golden/e2e.json"), ("golden/e2e.json", "is not listed")),
    ("tokenizer-unlisted", _unlist("tokenizer/tokenizer.json"), ("tokenizer/tokenizer.json", "is not listed")),
    ("tokenizer-extra-file", lambda d, o: (d / "tokenizer" / "added_tokens.json").write_text("{}"),
     ("tokenizer/added_tokens.json", "is not listed")),
    ("no-manifest", lambda d, o: (d / MANIFEST).unlink(), ("manifest.json: missing",)),
    ("corrupt-artifact", lambda d, o: (d / "tokenizer" / "tokenizer.json").write_text("{}"),
     ("tokenizer/tokenizer.json: corrupt artifact (sha256",)),
]

# corrupt golden data whose sha256 was re-recorded: only verify reads it
GOLDEN_CASES = [
    ("npz-garbage", _golden(lambda d: (d / GOLDEN_NPZ).write_bytes(b"not an archive")),
     ("golden/golden.npz: not a readable golden archive",)),
    ("npz-empty", _golden(lambda d: (d / GOLDEN_NPZ).write_bytes(b"")), ("golden/golden.npz: not a readable",)),
    ("npz-truncated", _golden(lambda d: (d / GOLDEN_NPZ).write_bytes((d / GOLDEN_NPZ).read_bytes()[:5000])),
     ("golden/golden.npz: not a readable", "BadZipFile")),
    ("npz-a-npy", _golden(lambda d: np.save(open(d / GOLDEN_NPZ, "wb"), np.arange(3))),
     ("golden/golden.npz: not a readable", "not an .npz archive")),
    ("npz-bad-crc", _golden(lambda d: (d / GOLDEN_NPZ).write_bytes(_flip(d / GOLDEN_NPZ))),
     ("golden/golden.npz: not a readable", "CRC")),
    ("npz-no-pixels", _golden(lambda d: _rewrite_npz(d, lambda k: k != "e2e/1/pixel_values")),
     ("golden/golden.npz: has no e2e/1/pixel_values",)),
    ("npz-no-decoder-case", _golden(lambda d: _rewrite_npz(d, lambda k: not k.startswith("decoder/"))),
     ("golden/golden.npz: has no golden case of graph decoder",)),
    ("e2e-not-json", _golden(lambda d: (d / E2E_JSON).write_text("[{")), ("golden/e2e.json: not valid JSON",)),
    ("e2e-an-object", _golden(lambda d: (d / E2E_JSON).write_text('{"pairs": []}')),
     ("golden/e2e.json: the top level must be a non-empty list",)),
    ("e2e-empty", _golden(lambda d: (d / E2E_JSON).write_text("[]")),
     ("golden/e2e.json: the top level must be a non-empty list",)),
    ("e2e-no-reference", _golden(lambda d: _edit_e2e(d, lambda p: p.pop("reference_ids"))),
     ("golden/e2e.json: [0].reference_ids is missing",)),
    ("e2e-string-ids", _golden(lambda d: _edit_e2e(d, lambda p: p.update(prompt_ids=["1"]))),
     ("golden/e2e.json: [0].prompt_ids[0] must be an integer",)),
]


def _flip(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside a stored member: its CRC no longer matches
    return bytes(raw)


def _edit_e2e(d: Path, fn) -> None:
    pairs = json.loads((d / E2E_JSON).read_text())
    fn(pairs[0])
    (d / E2E_JSON).write_text(json.dumps(pairs))


def _prepared(demo: Path, tmp_path: Path, mutate) -> Path:
    d = Path(shutil.copytree(demo, tmp_path / "art"))
    (tmp_path / "outside").mkdir()
    mutate(d, tmp_path / "outside")
    return d


def _assert_one_line_error(res, needles: tuple[str, ...]) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output + res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.mark.parametrize("mutate,needles", [c[1:] for c in MANIFEST_CASES + GOLDEN_CASES],
                         ids=[c[0] for c in MANIFEST_CASES + GOLDEN_CASES])
def test_verify_bad_input(demo, tmp_path, mutate, needles):
    d = _prepared(demo, tmp_path, mutate)
    _assert_one_line_error(runner.invoke(app, ["verify", str(d)]), needles)


@pytest.mark.parametrize("mutate,needles", [c[1:] for c in MANIFEST_CASES], ids=[c[0] for c in MANIFEST_CASES])
def test_run_bad_manifest(demo, tmp_path, image_file, mutate, needles):
    d = _prepared(demo, tmp_path, mutate)
    res = runner.invoke(app, ["run", str(d), "--image", str(image_file), "--prompt", "What?", "--json"])
    _assert_one_line_error(res, needles)


@pytest.mark.parametrize("recipe,needles", [
    ("snapdragon-fp32", ("--recipe snapdragon-fp32: is a recipe for target snapdragon", "target onnx")),
    ("orin-fp16", ("--recipe orin-fp16: is a recipe for target orin",)),
    ("no-such-recipe", ("--recipe no-such-recipe: no such recipe",)),
])
def test_verify_recipe_of_another_target(demo, recipe, needles):
    _assert_one_line_error(runner.invoke(app, ["verify", str(demo), "--recipe", recipe]), needles)


def test_verify_named_recipe_passes(demo):
    res = runner.invoke(app, ["verify", str(demo), "--recipe", "onnx-fp32", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["verification"]["passed"]


def test_gate_recipe_judges_but_does_not_change_the_e2e_length(demo, tmp_path):
    """`verify --recipe` takes tolerances and token agreement from the named recipe; the end-to-end pairs are
    generated with the build's own e2e.max_new_tokens (what the reference ids were made with): a gate asking for
    more tokens than the decoder holds still verifies."""
    from mobilevlm_export.recipes import RECIPES_DIR

    gate = tmp_path / "gate.toml"
    gate.write_text((RECIPES_DIR / "onnx-fp32.toml").read_text().replace("max_new_tokens = 8", "max_new_tokens = "
                    "100000").replace("token_agreement_min = 1.0", "token_agreement_min = 0.5"))
    res = runner.invoke(app, ["verify", str(demo), "--recipe", str(gate), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["verification"]
    assert report["passed"] and report["token_agreement_min"] == 0.5


def test_golden_array_names():
    """One reading of the npz names (runtime.golden_reader.case_key), used by cases, case_names and verify."""
    from mobilevlm_export.runtime.golden_reader import case_key, cases

    assert case_key("decoder/prefill/in/attention_mask") == ("decoder", "prefill", "in", "attention_mask")
    assert case_key("e2e/0/pixel_values") is None and case_key("a/b/c/d/e") is None
    one = np.zeros(1)
    assert cases({"decoder/c0/in/x": one, "decoder/c0/out/y": one, "e2e/0/pixel_values": one}) == {
        ("decoder", "c0"): ({"x": one}, {"y": one})}

def test_loosened_manifest_is_judged_by_the_named_recipe(demo, tmp_path):
    """Golden logits off by 1e-2 and the manifest's tolerances loosened to hide it: plain verify passes (the
    manifest's copy), verify --recipe onnx-fp32 fails on max_abs (exit 1)."""
    d = Path(shutil.copytree(demo, tmp_path / "art"))
    with np.load(d / GOLDEN_NPZ) as data:
        arrays = {k: data[k] + np.float32(1e-2) if k.endswith("/out/logits") else data[k] for k in data.files}
    np.savez(d / GOLDEN_NPZ, **arrays)
    m = _manifest(d)
    m["recipe"]["tolerances"] = {"default": {"max_abs": 1.0, "cosine_min": 0.9},
                                 "logits": {"max_abs": 1.0, "top1_min": 0.9}}
    _resign(d, m)
    loose = runner.invoke(app, ["verify", str(d), "--json"])
    assert loose.exit_code == 0, loose.output
    gated = runner.invoke(app, ["verify", str(d), "--recipe", "onnx-fp32", "--json"])
    assert gated.exit_code == 1, gated.output
    worst = json.loads(gated.stdout)["verification"]["worst"]
    assert worst and {w["output"] for w in worst} == {"logits"} and {w["metric"] for w in worst} == {"max_abs"}


def test_nonfinite_numbers_are_written_as_null(demo, tmp_path):
    """A metric that is NaN or infinite (an output that is not finite, a shape mismatch) is recorded as null:
    the manifest stays strict JSON and reads back."""
    d = Path(shutil.copytree(demo, tmp_path / "art"))
    m = _manifest(d)
    m["verification"]["metrics"][0].update(max_abs=float("nan"), kl=float("inf"))
    _resign(d, m)

    def strict(name):
        raise AssertionError(f"{name} in the manifest")

    written = json.loads((d / MANIFEST).read_text(), parse_constant=strict)
    assert written["verification"]["metrics"][0]["max_abs"] is None
    assert read_manifest(d)["verification"]["metrics"][0]["kl"] is None


def test_engines_recorded_later_are_listed(demo, tmp_path):
    """trt-build's flow: an engine written after the build and recorded with update_manifest is listed with its
    sha256 (so the checks pass); an engine file changed afterwards is corrupt."""
    d = Path(shutil.copytree(demo, tmp_path / "art"))
    (d / "engines").mkdir()
    (d / "engines" / "decoder.engine").write_bytes(b"serialized engine")
    graphs = _manifest(d)["graphs"]
    graphs["decoder"]["engine"] = "engines/decoder.engine"
    update_manifest(d, graphs=graphs)
    art = open_artifacts(d)
    assert "engines/decoder.engine" in {a["path"] for a in art.manifest["artifacts"]}
    (d / "engines" / "decoder.engine").write_bytes(b"another engine")
    with pytest.raises(UserError, match="decoder.engine: corrupt artifact"):
        open_artifacts(d)


def test_orin_runtime_refuses_unrecorded_engines(demo, tmp_path):
    """An engine the bundle's script built but the manifest does not record (no sha256) is not run unchecked."""
    from mobilevlm_export.backends.tensorrt import BuildPlan, EnginePlan, write_plan
    from mobilevlm_export.targets.orin import OrinTarget

    graphs = _manifest(demo)["graphs"]
    plan = BuildPlan("10.3", "orin-agx-64gb", 1 << 20,
                     [EnginePlan(g, r["file"], f"engines/{g}.engine", False, True, [], r["contract"])
                      for g, r in graphs.items()])
    write_plan(plan, tmp_path)
    (tmp_path / "engines").mkdir()
    (tmp_path / "engines" / "decoder.engine").write_bytes(b"built by build_engines.sh")
    with pytest.raises(UserError, match="decoder.engine: built but not recorded.*trt-build .* --record-only"):
        OrinTarget().open_runners(tmp_path, graphs, None)


# ---------------------------------------------------------------------------------------------------------------
# properties: reading any manifest (or e2e.json) succeeds or raises UserError, never another exception

TRICKY = st.sampled_from(["", ".", "..", "../x", "/etc/passwd", "a\x00b", "graphs", "graphs/decoder.onnx",
                          "tokenizer/../../x", "golden/golden.npz", "onnx", "decoder", "0" * 64, "NaN"])
LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | TRICKY
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8) | TRICKY, inner, max_size=4), max_leaves=12)


@pytest.fixture(scope="module")
def scratch(demo, tmp_path_factory) -> Path:
    """A copy of the demo build whose manifest.json (or golden/e2e.json) each example overwrites."""
    return Path(shutil.copytree(demo, tmp_path_factory.mktemp("scratch") / "art"))


def _open_or_user_error(d: Path) -> None:
    try:
        art = open_artifacts(d)
    except UserError:
        return
    art.recipe, art.preprocess, art.target  # noqa: B018 - what run and verify read next


@settings(max_examples=200, deadline=None)
@given(value=JSON | st.fixed_dictionaries({"format_version": st.just(2)},
                                          optional={k.removesuffix("?"): JSON for k in MANIFEST_SPEC}))
def test_any_json_manifest_reads_or_is_a_user_error(scratch, value):
    (scratch / MANIFEST).write_text(json.dumps(value))
    _open_or_user_error(scratch)


def _slots(node, out: list) -> list:
    """Every (container, key) under ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((node, k))
        _slots(v, out)
    return out


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_manifest_reads_or_is_a_user_error(demo, scratch, data):
    m = copy.deepcopy(_manifest(demo))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        top = data.draw(st.sampled_from(sorted(m)), label="section")  # each section alike, whatever its size
        container, key = data.draw(st.sampled_from([(m, top), *_slots(m[top], [])]), label="slot")
        if data.draw(st.booleans(), label="delete") and isinstance(container, dict):
            del container[key]
        else:
            container[key] = data.draw(JSON, label="value")
        if not m:
            break
    (scratch / MANIFEST).write_text(json.dumps(m))
    _open_or_user_error(scratch)


@settings(max_examples=100, deadline=None)
@given(value=JSON | st.lists(st.fixed_dictionaries(
    {}, optional={"image": JSON, "question": JSON, "prompt_ids": JSON, "reference_ids": JSON}), max_size=3))
def test_any_e2e_json_reads_or_is_a_user_error(scratch, value):
    e2e = scratch / E2E_JSON
    saved = e2e.read_bytes()
    e2e.write_text(json.dumps(value))
    try:
        case_names(scratch)
    except UserError:
        pass
    finally:
        e2e.write_bytes(saved)


def test_write_manifest_is_atomic(tmp_path, monkeypatch):
    """A manifest rewritten in place (trt-build) is replaced whole or not at all: a failed write leaves the old one
    and no temporary file; the new one has a plain file's mode."""
    import mobilevlm_export.outdir

    (tmp_path / "a.onnx").write_bytes(b"graph")
    write_manifest(tmp_path, {"tool": "mobilevlm_export", "note": "first"})
    before = (tmp_path / MANIFEST).read_bytes()
    assert _manifest(tmp_path)["artifacts"][0]["path"] == "a.onnx"
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o666 & ~_umask()

    def killed(*_a):
        raise KeyboardInterrupt

    monkeypatch.setattr(mobilevlm_export.outdir.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_manifest(tmp_path, {"tool": "mobilevlm_export", "note": "second"})
    assert (tmp_path / MANIFEST).read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.onnx", MANIFEST]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
