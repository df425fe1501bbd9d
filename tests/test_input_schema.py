"""Bad input never gets past the checks as a traceback: every broken checkpoint file, image or samples folder is one
``error:`` line naming the file and key, exit code 2, before any expensive work (a table of mutated copies of one
tiny checkpoint through ``inspect``, ``generate`` and ``build``). Property tests: ``config.json`` (and the tower's
config and image processor), recipe and device profile tables and ``questions.json`` with arbitrary values either
parse or raise ``UserError``, never another exception."""

from __future__ import annotations

import io
import json
import math
import shutil
import struct
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from mobilevlm_export.checkpoint.config import check_tower_fits, read_config, resolve_vision_tower
from mobilevlm_export.checkpoint.projector import build_projector
from mobilevlm_export.checkpoint.synthetic import save_state_dict, write_checkpoint
from mobilevlm_export.checkpoint.weights import weight_files
from mobilevlm_export.cli import app
from mobilevlm_export.errors import UserError
from mobilevlm_export.golden_writer import Pair, load_pairs
from mobilevlm_export.profiles import PROFILES_DIR, load_profile, parse_profile
from mobilevlm_export.recipes import RECIPES_DIR, Recipe, load_recipe, parse_recipe

runner = CliRunner()
DROP = object()  # a key to remove
TOWER_CFG, PREPROC = "vision_tower/config.json", "vision_tower/preprocessor_config.json"
INDEX = "model.safetensors.index.json"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A valid tiny checkpoint (ldpnetv2: tower config and processor in ``vision_tower``, weights in the file)."""
    return write_checkpoint(tmp_path_factory.mktemp("base") / "ckpt")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "ok.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(path)
    return path


# --- mutations of a checkpoint copy ----------------------------------------------------------------------------


def edit(rel: str, **changes):
    """Set top-level keys of the JSON file ``rel`` (``DROP``: remove the key)."""

    def mutate(ck: Path) -> None:
        data = json.loads((ck / rel).read_text())
        for k, v in changes.items():
            if v is DROP:
                data.pop(k, None)
            else:
                data[k] = v
        (ck / rel).write_text(json.dumps(data))

    return mutate


def write(rel: str, content: str | bytes):
    """Replace the file ``rel``."""

    def mutate(ck: Path) -> None:
        (ck / rel).write_bytes(content if isinstance(content, bytes) else content.encode())

    return mutate


def tensors(change, shards: int = 1):
    """Rewrite the weights after ``change(state)`` (in ``shards`` safetensors files)."""

    def mutate(ck: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(ck / "model.safetensors")
        change(state)
        (ck / "model.safetensors").unlink()
        save_state_dict(state, ck, "safetensors", shards)

    return mutate


def set_value(name: str, value: float):
    def change(state: dict) -> None:
        state[name].view(-1)[0] = value

    return change


def as_int(name: str):
    def change(state: dict) -> None:
        state[name] = state[name].to(torch.int32)

    return change


def pickle_with(**entries):
    """The weights as a ``pytorch_model.bin`` holding ``entries`` besides the tensors."""

    def mutate(ck: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(ck / "model.safetensors")
        (ck / "model.safetensors").unlink()
        torch.save({**state, **entries}, ck / "pytorch_model.bin")

    return mutate


def safetensors_header(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def shard_of(name: str):
    """A needle: the shard file the index assigns ``name`` to."""
    return lambda ck: json.loads((ck / INDEX).read_text())["weight_map"][name]


NAN_TENSOR = "model.layers.0.mlp.up_proj.weight"
TOWER_TENSOR = "model.vision_tower.vision_tower.vision_model.encoder.layers.1.self_attn.k_proj.weight"

# (id, mutation, what the one error line must name)
BAD_CHECKPOINTS = [
    # config.json: types
    ("intermediate-str", edit("config.json", intermediate_size="256"), ["config.json", "'intermediate_size'"]),
    ("hidden-bool", edit("config.json", hidden_size=True), ["config.json", "'hidden_size'", "integer"]),
    ("select-layer-str", edit("config.json", mm_vision_select_layer="last"), ["config.json", "mm_vision_select_layer"]),
    ("tower-name-int", edit("config.json", mm_vision_tower=5), ["config.json", "'mm_vision_tower'", "string"]),
    ("rope-theta-str", edit("config.json", rope_theta="x"), ["config.json", "'rope_theta'"]),
    ("rope-theta-null", edit("config.json", rope_theta=None), ["config.json", "'rope_theta'"]),
    ("rope-scaling-str", edit("config.json", rope_scaling="x"), ["config.json", "'rope_scaling'"]),
    ("rope-factor-str", edit("config.json", rope_scaling={"rope_type": "linear", "factor": "x"}),
     ["config.json", "'rope_scaling.factor'"]),
    ("rope-factor-missing", edit("config.json", rope_scaling={"type": "linear"}),
     ["config.json", "'rope_scaling.factor'", "missing"]),
    ("rope-type", edit("config.json", rope_scaling={"rope_type": "nope", "factor": 2.0}),
     ["config.json", "'rope_scaling.rope_type'"]),
    ("eps-nan", edit("config.json", rms_norm_eps=math.nan), ["config.json", "'rms_norm_eps'", "finite"]),
    ("tie-str", edit("config.json", tie_word_embeddings="yes"), ["config.json", "tie_word_embeddings"]),
    ("patch-token-str", edit("config.json", mm_use_im_patch_token="no"), ["config.json", "'mm_use_im_patch_token'"]),
    ("heads-null", edit("config.json", num_attention_heads=None), ["config.json", "'num_attention_heads'"]),
    ("layers-missing", edit("config.json", num_hidden_layers=DROP), ["config.json", "'num_hidden_layers'", "missing"]),
    ("config-list", write("config.json", "[1, 2]"), ["config.json", "JSON object"]),
    ("config-not-utf8", write("config.json", b"\xff\xfe{"), ["config.json", "not valid JSON"]),
    ("config-deep", write("config.json", "[" * 100_000), ["config.json", "not valid JSON"]),
    # config.json: ranges
    ("hidden-negative", edit("config.json", hidden_size=-64), ["config.json", "'hidden_size'", "[1, 65536]"]),
    ("layers-absurd", edit("config.json", num_hidden_layers=10**9), ["config.json", "'num_hidden_layers'"]),
    ("vocab-zero", edit("config.json", vocab_size=0), ["config.json", "'vocab_size'"]),
    ("head-dim-zero", edit("config.json", head_dim=0), ["config.json", "'head_dim'"]),
    ("positions-absurd", edit("config.json", max_position_embeddings=2**40),
     ["config.json", "'max_position_embeddings'"]),
    ("eps-negative", edit("config.json", rms_norm_eps=-1e-6), ["config.json", "'rms_norm_eps'"]),
    ("mm-hidden-huge", edit("config.json", mm_hidden_size=10**12), ["config.json", "'mm_hidden_size'"]),
    ("mlp-depth", edit("config.json", mm_projector_type="mlp99x_gelu"), ["config.json", "'mm_projector_type'"]),
    ("select-feature", edit("config.json", mm_vision_select_feature="cls"),
     ["config.json", "'mm_vision_select_feature'"]),
    ("aspect-ratio", edit("config.json", image_aspect_ratio="anyres"), ["config.json", "'image_aspect_ratio'"]),
    ("activation", edit("config.json", hidden_act="swishy"), ["config.json", "'hidden_act'", "swishy"]),
    # config.json: cross-field rules
    ("heads-not-dividing", edit("config.json", num_attention_heads=7),
     ["config.json", "'num_attention_heads' = 7 does not divide hidden_size 64"]),
    ("odd-head-dim-key", edit("config.json", head_dim=7), ["config.json", "'head_dim' = 7 gives an odd head dim"]),
    ("odd-head-dim", edit("config.json", num_attention_heads=64, num_key_value_heads=DROP),
     ["config.json", "'num_attention_heads' = 64 gives an odd head dim 1"]),
    ("kv-heads", edit("config.json", num_key_value_heads=3), ["config.json", "'num_key_value_heads'", "divide"]),
    ("cls-into-ldp", edit("config.json", mm_vision_select_feature="cls_patch"),
     ["config.json", "'mm_vision_select_feature'", "ldpnetv2"]),
    ("eos-outside-vocab", edit("config.json", eos_token_id=10**6), ["config.json", "'eos_token_id'", "vocab"]),
    ("select-layer-high", edit("config.json", mm_vision_select_layer=4),
     ["config.json", "'mm_vision_select_layer'", "[-4, 3]"]),
    ("select-layer-low", edit("config.json", mm_vision_select_layer=-5), ["config.json", "'mm_vision_select_layer'"]),
    ("mm-hidden-vs-tower", edit("config.json", mm_hidden_size=48), ["config.json", "'mm_hidden_size'", "48"]),
    # the tower's config
    ("tower-hidden-str", edit(TOWER_CFG, hidden_size="32"), [TOWER_CFG, "'hidden_size'"]),
    ("tower-heads", edit(TOWER_CFG, num_attention_heads=5), [TOWER_CFG, "'num_attention_heads'", "divide"]),
    ("tower-image-zero", edit(TOWER_CFG, image_size=0), [TOWER_CFG, "'image_size'"]),
    ("tower-patch-large", edit(TOWER_CFG, patch_size=1000), [TOWER_CFG, "'patch_size'"]),
    ("tower-activation", edit(TOWER_CFG, hidden_act="nope"), [TOWER_CFG, "'hidden_act'"]),
    ("tower-channels", edit(TOWER_CFG, num_channels=4), [TOWER_CFG, "'num_channels'"]),
    ("tower-eps", edit(TOWER_CFG, layer_norm_eps=-1), [TOWER_CFG, "'layer_norm_eps'"]),
    ("tower-list", write(TOWER_CFG, "[]"), [TOWER_CFG, "JSON object"]),
    ("tower-nested-bad", write(TOWER_CFG, '{"vision_config": 5}'), [TOWER_CFG, "'vision_config'"]),
    ("tower-dropout-str", edit(TOWER_CFG, attention_dropout="x"), [TOWER_CFG, "attention_dropout"]),
    # the image processor
    ("std-zero", edit(PREPROC, image_std=[0, 0, 0]), [PREPROC, "'image_std'"]),
    ("std-inf", edit(PREPROC, image_std=[math.inf, 0.2, 0.2]), [PREPROC, "'image_std'", "finite"]),
    ("mean-nan", edit(PREPROC, image_mean=[0.5, math.nan, 0.5]), [PREPROC, "'image_mean'"]),
    ("std-two-values", edit(PREPROC, image_std=[0.2, 0.2]), [PREPROC, "'image_std'", "3"]),
    ("mean-str", edit(PREPROC, image_mean="grey"), [PREPROC, "'image_mean'"]),
    ("crop-zero", edit(PREPROC, crop_size=0), [PREPROC, "'crop_size'"]),
    ("crop-not-square", edit(PREPROC, crop_size={"width": 336}), [PREPROC, "'crop_size'", "square"]),
    ("crop-vs-tower", edit(PREPROC, crop_size=224), [PREPROC, "'crop_size'", "224", "336"]),
    ("size-no-edge", edit(PREPROC, size={"height": 336}), [PREPROC, "'size'", "shortest_edge"]),
    ("size-negative", edit(PREPROC, size=-1), [PREPROC, "'size'"]),
    ("resample", edit(PREPROC, resample=9), [PREPROC, "'resample'"]),
    ("rescale-zero", edit(PREPROC, rescale_factor=0), [PREPROC, "'rescale_factor'"]),
    ("preproc-not-json", write(PREPROC, "{"), [PREPROC, "not valid JSON"]),
    # the shard index
    ("index-map-list", write(INDEX, '{"weight_map": ["model.safetensors"]}'), [INDEX, "'weight_map'"]),
    ("index-file-int", write(INDEX, '{"weight_map": {"lm_head.weight": 5}}'), [INDEX, "'weight_map.lm_head.weight'"]),
    ("index-missing-shard", write(INDEX, '{"weight_map": {"lm_head.weight": "model-2.safetensors"}}'),
     [INDEX, "'weight_map.lm_head.weight'", "missing"]),
    ("index-outside", write(INDEX, '{"weight_map": {"lm_head.weight": "../outside.safetensors"}}'),
     [INDEX, "'weight_map.lm_head.weight'", "must name a file in"]),
    ("index-nul", write(INDEX, '{"weight_map": {"lm_head.weight": "a\\u0000.safetensors"}}'),
     [INDEX, "'weight_map.lm_head.weight'", "must name a file in"]),
    ("index-not-json", write(INDEX, "weight_map"), [INDEX, "not valid JSON"]),
    # the weights
    ("int-weight", tensors(as_int("model.norm.weight")),
     ["model.safetensors", "'model.norm.weight'", "int32", "floating point"]),
    ("nan-weight", tensors(set_value(NAN_TENSOR, math.nan)), ["model.safetensors", f"'{NAN_TENSOR}'", "NaN"]),
    ("inf-tower-weight-sharded", tensors(set_value(TOWER_TENSOR, -math.inf), shards=3),
     [shard_of(TOWER_TENSOR), f"'{TOWER_TENSOR}'", "Inf"]),
    ("safetensors-bytes", write("model.safetensors", safetensors_header(
        {"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(4))), ["model.safetensors", "'x'"]),
    ("safetensors-float-offsets", write("model.safetensors", safetensors_header(
        {"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, bytes(4))), ["model.safetensors", "'x'"]),
    ("safetensors-header-list", write("model.safetensors", safetensors_header([], b"")), ["model.safetensors"]),
    ("bin-non-tensor", pickle_with(step=5), ["pytorch_model.bin", "'step'", "not a named tensor"]),
]


def expect_one_line_error(args: list[str], needles: list[str]) -> str:
    """Run the CLI: exit code 2 and exactly one non-empty stderr line, ``error: ...`` with every needle, no
    traceback."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("mutate,needles", [pytest.param(m, n, id=i) for i, m, n in BAD_CHECKPOINTS])
def test_bad_checkpoint_is_one_line(base, tmp_path, mutate, needles):
    ck = Path(shutil.copytree(base, tmp_path / "ckpt"))
    mutate(ck)
    expect_one_line_error(["inspect", str(ck)], [n(ck) if callable(n) else n for n in needles])


def test_the_base_checkpoint_is_valid(base):
    res = runner.invoke(app, ["inspect", str(base), "--json"])
    assert res.exit_code == 0, res.output


# --- images -----------------------------------------------------------------------------------------------------


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (PIL checks the size when it opens the file)."""
    buf = io.BytesIO()
    Image.new("1", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR's data follows the signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path.write_bytes(buf.getvalue()[:300])
    return path


BAD_IMAGES = [
    ("bomb", lambda d: png_claiming(d / "bomb.png", 14_000, 14_000), ["DecompressionBombError"]),
    ("over-limit", lambda d: png_claiming(d / "big.png", 10_000, 10_000), ["DecompressionBombWarning"]),
    ("text", lambda d: write_file(d / "notes.png", b"this is not an image"), ["not a readable image"]),
    ("empty", lambda d: write_file(d / "empty.jpg", b""), ["not a readable image"]),
    ("truncated", lambda d: truncated_png(d / "cut.png"), ["not a readable image"]),
    ("directory", lambda d: d, ["no such file"]),
]


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,needles", [pytest.param(m, n, id=i) for i, m, n in BAD_IMAGES])
def test_bad_image_is_one_line(base, tmp_path, make, needles):
    image = make(tmp_path)
    expect_one_line_error(["generate", str(base), "--image", str(image), "--prompt", "q"],
                          ["--image", str(image), *needles])


def test_bad_image_processor_stops_generate(base, tmp_path, image_file):
    """A zero std made an empty answer with exit 0: now the processor config is refused before loading weights."""
    ck = Path(shutil.copytree(base, tmp_path / "ckpt"))
    edit(PREPROC, image_std=[0.0, 0.0, 0.0])(ck)
    expect_one_line_error(["generate", str(ck), "--image", str(image_file), "--prompt", "q"],
                          [PREPROC, "'image_std'"])


def test_decompression_bomb_in_a_fresh_process(base, tmp_path):
    """As a user runs it: PIL's size warning is an error, not a warning line beside the answer."""
    image = png_claiming(tmp_path / "big.png", 10_000, 10_000)
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", "generate", str(base), "--image", str(image),
                          "--prompt", "q"], capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --image") and str(image) in lines[0], res.stderr


# --- samples ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory, image_file) -> Path:
    """A samples folder with one good image, a text file and a bomb (``questions.json`` written per case)."""
    d = tmp_path_factory.mktemp("samples")
    shutil.copy(image_file, d / "a.png")
    (d / "notes.txt").write_text("not an image")
    png_claiming(d / "bomb.png", 14_000, 14_000)
    return d


BAD_SAMPLES = [
    ("not-a-list", {"image": "a.png", "question": "q"}, ["non-empty list"]),
    ("empty-list", [], ["non-empty list"]),
    ("entry-not-object", ["a.png"], ["'[0]'"]),
    ("question-missing", [{"image": "a.png"}], ["'[0].question'", "missing"]),
    ("question-not-str", [{"image": "a.png", "question": "q"}, {"image": "a.png", "question": 5}],
     ["'[1].question'", "string"]),
    ("image-missing", [{"image": "gone.png", "question": "q"}], ["'[0].image'", "gone.png", "no such file"]),
    ("image-not-image", [{"image": "notes.txt", "question": "q"}], ["'[0].image'", "notes.txt", "not a readable"]),
    ("image-bomb", [{"image": "bomb.png", "question": "q"}], ["'[0].image'", "DecompressionBombError"]),
]


@pytest.mark.parametrize("items,needles", [pytest.param(q, n, id=i) for i, q, n in BAD_SAMPLES])
def test_bad_samples_are_one_line(base, samples_dir, tmp_path, items, needles):
    """``build --samples`` reads questions.json before it loads the checkpoint."""
    (samples_dir / "questions.json").write_text(json.dumps(items))
    expect_one_line_error(["build", str(base), "--target", "onnx", "-o", str(tmp_path / "out"),
                           "--samples", str(samples_dir), "--no-bench"],
                          [str(samples_dir / "questions.json"), *needles])


# --- property tests ---------------------------------------------------------------------------------------------

JSON_SCALARS = (st.none() | st.booleans() | st.integers(-3, 70) | st.integers() | st.floats()
                | st.text(max_size=8) | st.sampled_from(["patch", "pad", "silu", "linear", "dynamic", "mlp3x_gelu"]))
# table keys: arbitrary, or those of the nested tables the readers know (rope_scaling, size, crop_size)
JSON_KEYS = st.text(max_size=6) | st.sampled_from(["rope_type", "type", "factor", "shortest_edge", "height", "width"])
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(JSON_KEYS, inner, max_size=3), max_leaves=6)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def mutations(keys: list[str]):
    """A few (key, value) changes: existing or extra keys set to arbitrary JSON values, or removed."""
    return st.dictionaries(st.sampled_from(keys), JSON_VALUES | st.just(DROP), min_size=1, max_size=3)


def apply(data: dict, changes: dict) -> dict:
    out = dict(data)
    for k, v in changes.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def config_dir(base, tmp_path_factory) -> Path:
    """The checkpoint's configuration files only (no weights): what ``read_config`` and the tower resolution read."""
    d = tmp_path_factory.mktemp("configs")
    shutil.copy(base / "config.json", d / "config.json")
    shutil.copytree(base / "vision_tower", d / "vision_tower")
    return d


EXTRA_KEYS = {"config.json": ["head_dim", "rope_scaling", "attention_bias", "mlp_bias", "initializer_range"],
              TOWER_CFG: ["vision_config", "projection_dim", "attention_dropout", "torch_dtype"],
              PREPROC: ["do_resize", "image_processor_type"]}


def build_on_meta(cfg, tower) -> None:
    """What the loader builds from a checked configuration: the three parts on the meta device, and the decoder's
    rotary embedding (computed on the CPU)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    text = cfg.text_config()
    with torch.device("meta"):
        CLIPVisionModel(CLIPVisionConfig(**tower.config))
        build_projector(cfg.projector_type, cfg.mm_hidden_size, text.hidden_size)
        LlamaForCausalLM(text)
    LlamaRotaryEmbedding(config=text)


@pytest.mark.parametrize("rel", ["config.json", TOWER_CFG, PREPROC])
def test_config_files_parse_or_raise_user_error(config_dir, rel):
    """A configuration either is refused with a one-line ``UserError`` or builds the model."""
    original = json.loads((config_dir / rel).read_text())
    keys = sorted(original) + EXTRA_KEYS[rel]

    @PROPERTY
    @given(st.one_of(mutations(keys).map(lambda c: apply(original, c)), JSON_VALUES))
    def check(data):
        (config_dir / rel).write_text(json.dumps(data))
        try:
            cfg = read_config(config_dir)
            tower = resolve_vision_tower(cfg)
            check_tower_fits(cfg, tower)
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc)
        else:
            build_on_meta(cfg, tower)
            assert min(tower.preprocess.std) > 0

    try:
        check()
    finally:
        (config_dir / rel).write_text(json.dumps(original))


# every shipped recipe and profile, with its reader from a table and from a file
TOML_FILES = [pytest.param(parse_recipe, load_recipe, p, id=p.stem) for p in sorted(RECIPES_DIR.glob("*.toml"))] + [
    pytest.param(parse_profile, load_profile, p, id=p.stem) for p in sorted(PROFILES_DIR.glob("*.toml"))]


def table_mutations(data: dict):
    """One value anywhere in a two-level table (a section, a key of one, a new key) set to an arbitrary value."""
    paths = [(s,) for s in data] + [(s, k) for s, t in data.items() if isinstance(t, dict) for k in t]
    paths += [(s, k, k2) for s, t in data.items() if isinstance(t, dict) for k, t2 in t.items()
              if isinstance(t2, dict) for k2 in t2]
    return st.tuples(st.sampled_from(paths) | st.tuples(st.sampled_from(sorted(data)), st.text(max_size=6)),
                     JSON_VALUES)


def set_path(data: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(data))  # a deep copy
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize("parse,load,path", TOML_FILES)
def test_recipe_and_profile_tables_parse_or_raise_user_error(parse, load, path):
    data = tomllib.loads(path.read_text())

    @settings(max_examples=40, deadline=None)
    @given(table_mutations(data) | st.tuples(st.just(()), JSON_VALUES))
    def check(change):
        where, value = change
        table = set_path(data, where, value) if where else value
        try:
            parse(table, str(path))
        except UserError as exc:
            assert str(path) in str(exc)

    check()


def line_mutations(text: str):
    """The TOML text with one line's value replaced by arbitrary text."""
    lines = text.splitlines()
    assignments = [i for i, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]

    def replace(i: int, value: str) -> str:
        key = lines[i].split("=", 1)[0]
        return "\n".join([*lines[:i], f"{key}= {value}", *lines[i + 1:]])

    return st.builds(replace, st.sampled_from(assignments),
                     st.text(max_size=12) | JSON_SCALARS.map(lambda v: json.dumps(v)))


@pytest.mark.parametrize("parse,load,path", TOML_FILES)
def test_recipe_and_profile_files_load_or_raise_user_error(parse, load, path, tmp_path):
    target = tmp_path / "mutated.toml"

    @settings(max_examples=30, deadline=None)
    @given(line_mutations(path.read_text()))
    def check(text):
        target.write_text(text)
        try:
            load(target)
        except UserError as exc:
            assert str(target) in str(exc)

    check()


SHARD_NAMES = st.sampled_from(["model.safetensors", "gone.safetensors", "../x", "/", "", "a\x00b"]) | JSON_VALUES


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("index")
    (d / "model.safetensors").write_bytes(b"")
    return d


@PROPERTY
@given(st.dictionaries(st.text(max_size=6), SHARD_NAMES, max_size=3).map(lambda m: {"weight_map": m}) | JSON_VALUES)
def test_shard_index_parses_or_raises_user_error(index_dir, index):
    """Any index JSON: its shard files (that exist, inside the directory) or ``UserError`` naming it."""
    (index_dir / INDEX).write_text(json.dumps(index))
    try:
        files = weight_files(index_dir)
    except UserError as exc:
        assert INDEX in str(exc)
    else:
        assert files and all(f.is_file() and f.resolve().parent == index_dir.resolve() for f in files)


SAMPLE_ENTRIES = st.dictionaries(
    st.sampled_from(["image", "question", "answer"]),
    st.sampled_from(["a.png", "notes.txt", "gone.png", "", "/", "a.png\x00"]) | JSON_VALUES, max_size=3)


@PROPERTY
@given(st.lists(SAMPLE_ENTRIES, max_size=4) | JSON_VALUES)
def test_questions_json_parses_or_raises_user_error(samples_dir, items):
    (samples_dir / "questions.json").write_text(json.dumps(items))
    try:
        pairs = load_pairs(samples_dir)
    except UserError as exc:
        assert "questions.json" in str(exc)
    else:
        assert pairs and all(isinstance(p, Pair) and p.image.is_file() for p in pairs)


def test_recipe_round_trip_still_parses():
    """The manifest form of every shipped recipe parses back (the reader's JSON null handling changes nothing)."""
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        recipe = load_recipe(path)
        assert Recipe.from_dict(recipe.to_dict(), str(path)) == recipe
