"""The one pipeline and its target registry: bad input through `build` and its `export` alias (one line, exit 2,
nothing written; no optional backend needed, all fail before one is), contract ranges, typed configuration."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mobilevlm_export.cli import app
from mobilevlm_export.graphs.contracts import DimRange, Limits, ModelDims, graph_contracts
from mobilevlm_export.recipes import RECIPES_DIR
from mobilevlm_export.targets import registry

runner = CliRunner()
DIMS = ModelDims(image_size=336, patches=576, vision_hidden=64, image_tokens=144, hidden=64, intermediate=128,
                 layers=2, heads=4, kv_heads=4, head_dim=16, vocab=512, max_context=2048)


def _bad(args, *needles):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output)
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in res.output, res.output
    for n in needles:
        assert n in err, (n, err)


@pytest.mark.parametrize("args,needles", [
    (["build", "--target", "mars"], ("--target mars", "unknown target", "onnx", "snapdragon")),
    (["build", "--target", "onnx", "--recipe", "nope"], ("--recipe nope", "no such recipe")),
    (["build", "--target", "snapdragon", "--recipe", "onnx-fp32"], ("--recipe onnx-fp32", "onnx recipe",
                                                                     "not snapdragon")),
    (["build", "--target", "onnx", "--recipe", "snapdragon-8da4w"], ("snapdragon recipe", "not onnx")),
    (["build", "--target", "snapdragon", "--profile", "pixel-9"], ("--profile pixel-9", "no such device profile")),
    (["build", "--target", "onnx", "--profile", "snapdragon-888"], ("--profile snapdragon-888",
                                                                     "snapdragon device", "not onnx")),
    (["build", "--target", "orin", "--profile", "snapdragon-888"], ("--profile snapdragon-888", "not orin")),
    (["build", "--target", "snapdragon", "--profile", "orin-nano-8gb"], ("--profile orin-nano-8gb", "not snapdragon")),
    (["build", "--target", "orin", "--recipe", "snapdragon-8da4w"], ("snapdragon recipe", "not orin")),
    (["export", "--format", "tflite"], ("--format tflite",)),
    (["export", "--precision", "int3"], ("--precision int3", "fp32, fp16")),
    (["export", "--recipe", "snapdragon-8da4w"], ("--recipe snapdragon-8da4w", "snapdragon recipe")),
    (["export", "--recipe", "onnx-fp16", "--precision", "fp32"], ("--recipe onnx-fp16", "fp16 recipe")),
    (["export", "--recipe", "nope"], ("--recipe nope",)),
])
def test_bad_target_recipe_profile(tmp_path, args, needles):
    out = tmp_path / "out"
    _bad([*args, "-o", str(out)], *needles)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("section,text,key", [
    ("recipe", 'target = "snapdragon"\nprecision = "fp8"', "recipe.precision"),
    ("recipe", 'target = "snapdragon"\nprecision = "fp16"', "recipe.precision"),
    ("quantize.decoder", "group_size = 24", "quantize.decoder.group_size"),
    ("quantize.decoder", "group_size = 8", "quantize.decoder.group_size"),
    ("quantize.decoder", 'algorithm = "awq"', "quantize.decoder.algorithm"),
    ("quantize.embed_tokens", 'scheme = "8da4w"', "quantize.embed_tokens.scheme"),
    ("quantize.decoder", 'scheme = "8da8w"', "quantize.decoder.scheme"),
    ("executorch", 'attention = "flash"', "executorch.attention"),
    ("executorch", 'logits = "first"', "executorch.logits"),
    ("executorch", "max_cache = 1", "executorch.max_cache"),
    ("executorch", 'max_cache = "512"', "executorch.max_cache"),
])
def test_bad_snapdragon_recipe(tmp_path, section, text, key):
    base = (RECIPES_DIR / "snapdragon-8da4w.toml").read_text()
    if section == "recipe":
        base = base.replace('target = "snapdragon"\nprecision = "8da4w"', text)
    else:
        lines = base.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(f"[{section}]"))
        first = text.split(" = ")[0]
        end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("["))
        body = [line for line in lines[start + 1:end] if not line.startswith(first + " ")]
        base = "\n".join([*lines[:start + 1], text, *body, *lines[end:]])
    f = tmp_path / "bad.toml"
    f.write_text(base)
    out = tmp_path / "out"
    _bad(["build", "--target", "snapdragon", "--recipe", str(f), "-o", str(out)], key, str(f))
    assert not out.exists()


def test_quantize_section_in_an_onnx_recipe(tmp_path):
    f = tmp_path / "q.toml"
    f.write_text((RECIPES_DIR / "onnx-fp32.toml").read_text() + '\n[quantize.decoder]\nscheme = "int4"\n')
    _bad(["export", "--recipe", str(f), "-o", str(tmp_path / "o")], "quantize.decoder", "not a part", "onnx")


def test_contract_ranges_feed_every_backend():
    """One set of ranges per graph: ONNX dynamic axes are its symbols, ExecuTorch's Dims and TensorRT's profiles
    read min/opt/max."""
    limits = Limits(max_batch=4, max_prompt=300, max_context=1024)
    dyn = {g.name: g for g in graph_contracts(DIMS, kv="dynamic", limits=limits)}
    dec = dyn["decoder"]
    symbols = {s for t in dec.inputs for d in t.dims if isinstance(d, str) for s in d.split("+")}
    assert symbols == set(dec.ranges) == {"batch", "seq", "past"}  # every symbol has its range
    # prefill tunes for the image's tokens plus a typical text (64), the text embedding for the text alone
    assert dec.ranges["past"] == DimRange(0, 300, 1023)
    assert dec.ranges["seq"] == DimRange(1, DIMS.image_tokens + 64, 300) and dyn["embed_tokens"].ranges["seq"] == \
        DimRange(1, 64, 300)
    assert dec.ranges["batch"] == DimRange(1, 1, 4) and dyn["vision_encoder"].ranges == {"batch": DimRange(1, 1, 4)}
    static = {g.name: g for g in graph_contracts(DIMS, kv="static", fused_image_encoder=True,
                                                 limits=Limits(1, 512, 512))}
    assert static["decoder"].ranges == {"seq": DimRange(1, 64, 512)} and static["image_encoder"].ranges == {}
    assert static["embed_tokens"].ranges == {"seq": DimRange(1, 64, 512)}
    round_trip = type(dec).from_dict(dec.to_dict())
    assert round_trip == dec
    with pytest.raises(ValueError):
        DimRange(2, 1, 3)


def test_every_target_has_recipes_and_tests():
    """Adding a target adds its recipes (named after it) and this registry entry; each recipe's target is its
    prefix."""
    for name, target in registry().items():
        assert (RECIPES_DIR / f"{target.default_recipe}.toml").is_file(), name
        assert target.default_recipe.startswith(f"{name}-")
