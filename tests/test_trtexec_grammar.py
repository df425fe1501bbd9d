"""``build_engines.sh`` against trtexec 10.3's option grammar (``tests/trtexec_grammar.py``, transcribed from
trtexec's source): the script of every Orin recipe on every Orin device profile is accepted, carries the build
plan's profiles, and bash hands trtexec the words the checker read; the pre-``--profile`` form, unknown flags and
malformed specs are refused with trtexec's own message. The plans come from the real target code (limits, split
contracts, workspace, parser opset) on the demo checkpoint, without exporting: a few seconds in all."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from trtexec_grammar import (
    MULTIPLE_SHAPES,
    TrtexecError,
    check_script,
    memory_pools,
    parse_args,
    shape_spec,
    shell_commands,
)

from mobilevlm_export.recipes import RECIPES_DIR, load_recipe
from mobilevlm_export.schema import Precision

ORIN_RECIPES = sorted(p.stem for p in RECIPES_DIR.glob("orin-*.toml"))
GRAPH_PARTS = {"decoder": ("decoder", "lm_head"), "image_encoder": ("image_encoder",), "embed_tokens": ()}


@pytest.fixture(scope="module")
def plans():
    """(recipe, device profile) -> the BuildPlan ``build --target orin`` writes, made by the same functions from
    the demo checkpoint's contracts (no ONNX export)."""
    from mobilevlm_export.backends.tensorrt import BuildPlan, engine_plan
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.records import model_dims
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
    from mobilevlm_export.profiles import PROFILES_DIR, load_profile
    from mobilevlm_export.targets import get_target
    from mobilevlm_export.targets.orin import STANDARD_OPSET, _parser_opset, workspace_bytes

    target = get_target("orin")
    profiles = [p for p in map(load_profile, sorted(PROFILES_DIR.glob("*.toml"))) if p.target == "orin"]
    assert profiles, "no orin device profile"
    ckpt = load_checkpoint(demo_checkpoint_dir())
    dims = model_dims(ckpt)
    out = {}
    for name in ORIN_RECIPES:
        recipe = load_recipe(name)
        for profile in profiles:
            limits = target.limits(recipe, profile, dims)
            version = profile.options.tensorrt
            folder = "trt" if _parser_opset(version) < STANDARD_OPSET else "graphs"
            plan = BuildPlan(version, profile.name, workspace_bytes(recipe, profile))
            for graph in target.split(ckpt, recipe, limits):
                qdq = any(recipe.quant(p).scheme not in (Precision.FP16, Precision.FP32)
                          for p in GRAPH_PARTS[graph.name])
                plan.engines.append(engine_plan(graph.contract, f"{folder}/{graph.name}.onnx", strongly_typed=qdq))
            out[name, profile.name] = plan
    return out


def _argv_from_bash(script: str, tmp_path: Path) -> list[list[str]]:
    """The argument lists bash passes to trtexec when it runs ``script`` (TRTEXEC: a recorder)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "build_engines.sh").write_text(script)
    recorder = tmp_path / "trtexec"
    recorder.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                        "with open(os.environ['ARGV_LOG'], 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "argv.jsonl"
    res = subprocess.run(["bash", str(tmp_path / "build_engines.sh")], capture_output=True, text=True,
                         env={**os.environ, "TRTEXEC": str(recorder), "ARGV_LOG": str(log)})
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.mark.parametrize("recipe", ORIN_RECIPES)
def test_every_orin_recipe_script_passes_trtexec_10_3(plans, recipe, tmp_path):
    from mobilevlm_export.backends.tensorrt import trtexec_script

    checked = [key for key in plans if key[0] == recipe]
    assert checked
    for key in checked:
        plan = plans[key]
        assert plan.tensorrt.split(".")[:2] == ["10", "3"], f"{key}: the grammar checked is trtexec 10.3's"
        script = trtexec_script(plan)
        calls = check_script(script)
        assert len(calls) == len(plan.engines), key
        assert [c.argv for c in calls] == _argv_from_bash(script, tmp_path / "-".join(key)), key
        for e, call in zip(plan.engines, calls, strict=True):
            assert call.warnings == [], (key, e.graph, call.warnings)
            assert call.options["--onnx"] == e.onnx and call.options["--saveEngine"] == e.engine
            assert ("--stronglyTyped" in call.options) == e.strongly_typed and ("--fp16" in call.options) == e.fp16
            assert "--skipInference" in call.options
            assert call.memory_pools == {"workspace": plan.workspace_bytes}
            assert call.profiles == [p.shapes for p in e.profiles], (key, e.graph)
            markers = [a for a in call.argv if a.startswith("--profile")]
            assert markers == ([f"--profile={i}" for i in range(len(e.profiles))] if len(e.profiles) > 1 else [])
        dec = next(e for e in plan.engines if e.graph == "decoder")
        assert [p.name for p in dec.profiles] == ["prefill", "decode"]


def test_the_pre_profile_form_is_refused_with_trtexecs_message(plans):
    """The script as written before ``--profile``: the decoder's two groups repeat the shape flags."""
    from mobilevlm_export.backends.tensorrt import trtexec_script

    script = trtexec_script(plans["orin-int4", "orin-agx-64gb"])
    old = re.sub(r"    --profile=\d+ \\\n", "", script)
    assert old != script and "--profile" not in old
    with pytest.raises(TrtexecError, match=re.escape(MULTIPLE_SHAPES)) as exc:
        check_script(old)
    decoder_line = next(c.line for c in shell_commands(old) if "--onnx=trt/decoder.onnx" in [w.text for w in c.words])
    assert str(exc.value).startswith(f"line {decoder_line}: ")
    # the one-profile engines before it were accepted: the refusal is the decoder's
    head = old[:old.index('"$TRTEXEC" \\\n    --onnx=trt/decoder.onnx')]
    assert [c.options["--onnx"] for c in check_script(head)] == ["trt/image_encoder.onnx", "trt/embed_tokens.onnx"]


BASE = ["--onnx=m.onnx", "--saveEngine=m.engine", "--skipInference"]


@pytest.mark.parametrize("argv, message", [
    (BASE + ["--workspace=2048"], "Unknown option: --workspace 2048"),  # the pre-8.4 flag, gone in 10.x
    (BASE + ["--explicitBatch"], "Unknown option: --explicitBatch"),  # gone in 10.0
    (["--onnx", "m.onnx", "--skipInference"], "--onnx needs a value"),  # a value never comes from the next word
    (BASE + ["--fp16", "--fp16"], "Unknown option: --fp16"),  # read once: the second is left over
    (BASE + ["--minShapes=x:1x2", "--minShapes=x:1x3"], re.escape(MULTIPLE_SHAPES)),
    (BASE + ["--help"], "prints its help"),
    (["--saveEngine=m.engine"], "Model missing or format not recognized"),
    (BASE + ["--loadEngine=n.engine"], "Incompatible load and save engine options selected"),
])
def test_unknown_or_misplaced_options_are_refused(argv, message):
    with pytest.raises(TrtexecError, match=message):
        parse_args(argv)


@pytest.mark.parametrize("spec, message", [
    ("x:1xAx3", "dim 'A' is not a non-negative integer; conversion failure"),
    ("x1x2", "has no ':' between the tensor name and its dims"),
    ("'x:1x2", "Found invalid number of 's when parsing 'x:1x2. Expected: 2, received: 1."),
    ("x:1x2,", "empty entry between commas"),
    ("x:1x2,x:1x3", "names tensor 'x' twice"),
    ("a*b*:1", "at most one wildcard"),
    ("", "names no tensor"),
])
def test_malformed_shape_specs_are_refused(spec, message):
    with pytest.raises(TrtexecError, match=re.escape(message)):
        shape_spec("--minShapes", spec)
    with pytest.raises(TrtexecError, match=re.escape(message)):
        parse_args(BASE + [f"--minShapes={spec}", "--optShapes=x:1x2", "--maxShapes=x:1x2"])


def test_shape_specs_as_trtexec_reads_them():
    assert shape_spec("--optShapes", "in:0:1x3,'out:1':2x4,s:,t:scalar,past:1x4x0x32") == {
        "in:0": [1, 3], "out:1": [2, 4], "s": [], "t": [], "past": [1, 4, 0, 32]}  # name: all before the last ':'


def test_profile_groups():
    one = ["--minShapes=x:1x1", "--optShapes=x:1x8", "--maxShapes=x:1x16"]
    two = ["--maxShapes=x:1x32", "--minShapes=x:1x16", "--optShapes=x:1x16"]  # any order within a group
    want = [{"x": {"min": [1, 1], "opt": [1, 8], "max": [1, 16]}}, {"x": {"min": [1, 16], "opt": [1, 16],
                                                                        "max": [1, 32]}}]
    assert parse_args(BASE + ["--profile=0", *one, "--profile=1", *two]).profiles == want
    assert parse_args(BASE + ["--profile=1", *two, "--profile=0", *one]).profiles == want  # indices, not order
    # one profile: with or without --profile=0, the same
    assert parse_args(BASE + one).profiles == parse_args(BASE + ["--profile=0", *one]).profiles == want[:1]
    # only opt given: copied to min and max, with trtexec's warning
    call = parse_args(BASE + ["--optShapes=x:1x8"])
    assert call.profiles == [{"x": {"min": [1, 8], "opt": [1, 8], "max": [1, 8]}}]
    assert any("optShapes is being broadcasted to minShapes" in w for w in call.warnings)
    refused = {
        "Optimization profile index cannot be the same.": ["--profile=0", *one, "--profile=0", *two],
        "Found invalid or missing shape spec at profile index 0.": ["--profile=1", *two],
        # a shape flag not directly after its --profile is not part of it: the profile is empty
        "Found invalid or missing shape spec at profile index 1.": ["--profile=0", *one, "--profile=1", "--fp16",
                                                                    *two],
        # a fourth shape flag after a full group is left over
        MULTIPLE_SHAPES: ["--profile=0", *one, "--maxShapes=x:1x64"],
        "--profile=a: not an integer": ["--profile=a", *one],
    }
    for message, extra in refused.items():
        with pytest.raises(TrtexecError, match=re.escape(message)):
            parse_args(BASE + extra)


def test_memory_pool_sizes():
    assert memory_pools("workspace:2048M") == {"workspace": 2048 << 20}
    assert memory_pools("workspace:2048") == {"workspace": 2048 << 20}  # MiB when no unit
    assert memory_pools("workspace:1g,tacticSharedMem:0.5K") == {"workspace": 1 << 30, "tacticSharedMem": 512}
    for spec, message in [("workspace:2048Q", "invalid unit specifier 'Q'"), ("scratch:1M", "Unknown memory pool: "
                          "scratch"), ("workspace:", "has no size"), ("workspace:-1M", "Negative memory pool size"),
                          ("workspace:abcM", "is not a number")]:
        with pytest.raises(TrtexecError, match=re.escape(message)):
            memory_pools(spec)


def test_the_shell_side(tmp_path):
    """Quotes, continuations and comments as bash reads them (checked against bash itself); expansions the check
    cannot see, and a $TRTEXEC the script never set, are refused."""
    script = ("#!/usr/bin/env bash\nTRTEXEC=\"${TRTEXEC:-/x/trtexec}\"  # the program\n"
              "\"$TRTEXEC\" --onnx='a b.onnx' \\\n    --saveEngine=\"e\\$1.engine\" --skipInference # trailing\n"
              "${TRTEXEC} --onnx=m.onnx --minShapes=\"'in:0'\":1x2 --skipInference\n")
    calls = check_script(script)
    assert [c.argv for c in calls] == [["--onnx=a b.onnx", "--saveEngine=e$1.engine", "--skipInference"],
                                       ["--onnx=m.onnx", "--minShapes='in:0':1x2", "--skipInference"]]
    assert [c.line for c in calls] == [3, 5] and calls[1].profiles == [{"in:0": {s: [1, 2] for s in
                                                                                  ("min", "opt", "max")}}]
    assert _argv_from_bash(script, tmp_path) == [c.argv for c in calls]
    with pytest.raises(TrtexecError, match=r"line 2: argument '--onnx=\$MODEL' holds a shell expansion"):
        check_script("TRTEXEC=trtexec\n\"$TRTEXEC\" --onnx=$MODEL --skipInference\n")
    with pytest.raises(TrtexecError, match=r"line 1: \$TRTEXEC is used before the script sets TRTEXEC"):
        check_script("\"$TRTEXEC\" --onnx=m.onnx\n")
    with pytest.raises(TrtexecError, match="unterminated single quote"):
        check_script("trtexec --onnx='m.onnx\n")
