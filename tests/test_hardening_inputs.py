"""Inputs that are each valid but do not fit together, and inputs that would exhaust memory or hang the reader
(issue 24, items 3 and 4): each is exit 2 with one stderr line naming the file, flag or key, no traceback, nothing
changed outside ``-o`` (the inputs' hashes before and after), no hang (FIFO cases run in a child with a timeout).

Classes: the tokenizer vs ``vocab_size``; safetensors byte ranges (against the ``safetensors`` library itself);
orin recipe limits vs the model; ``bench``/``run`` request sizes vs each target's built limits; ``--predict`` vs
the build's target; image dimensions before decoding; non-regular files wherever a file is read; every integer
flag's range before anything loads; empty golden arrays.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_checkpoint
from PIL import Image
from typer.testing import CliRunner

from mobilevlm_export.cli import MAX_RUNS, MAX_SEED, MAX_TOKENS, app
from mobilevlm_export.errors import UserError
from mobilevlm_export.recipes import RECIPES_DIR
from mobilevlm_export.runtime.preprocess import MAX_INPUT_SIDE, ImagePreprocess, load_image

runner = CliRunner()
TIMEOUT = 60  # no case may hang: a child that is still reading after this is a failure


# --- the contract ---------------------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every regular file under ``roots`` (a non-regular file: its kind, never opened)."""
    out = {}
    for root in roots:
        paths = [root] if not root.is_dir() else sorted(p for p in root.rglob("*"))
        for p in paths:
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif not stat.S_ISDIR(mode):
                out[str(p)] = f"mode {stat.S_IFMT(mode):o}"
    return out


def one_line(code: int, stderr: str, output: str, *needles: str) -> str:
    """The one ``error:`` line of a refused command, checked to name every needle."""
    lines = stderr.strip().splitlines()
    assert code == 2, (code, output)
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in output, output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def refused(args: list[str], needles, inputs=()) -> str:
    """Run the CLI in this process (``CliRunner``); exit 2, one line naming ``needles``, ``inputs`` unchanged."""
    before = snapshot(*inputs)
    res = runner.invoke(app, [str(a) for a in args])
    line = one_line(res.exit_code, res.stderr, res.output, *needles)
    assert snapshot(*inputs) == before
    return line


def refused_in_child(args: list[str], needles, inputs=()) -> str:
    """As ``refused``, in a fresh process that must end within ``TIMEOUT`` (a reader blocked on a FIFO never
    would)."""
    before = snapshot(*inputs)
    res = subprocess.run([sys.executable, "-m", "mobilevlm_export.cli", *map(str, args)], capture_output=True,
                         text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    line = one_line(res.returncode, res.stderr, res.stdout + res.stderr, *needles)
    assert snapshot(*inputs) == before
    return line


# --- cross-field: the tokenizer vs vocab_size -------------------------------------------------------------------


def test_tokenizer_past_vocab_size_is_refused(tiny_ckpt, tmp_path):
    """One added token (id 512 of a 512-row model) used to grow the model by a random row, different on every
    load: now refused naming the tokenizer, config.json and both numbers."""
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    (ck / "added_tokens.json").write_text(json.dumps({"<extra>": 512}))
    refused(["inspect", ck], ["tokenizer.model", str(ck / "config.json"), "513", "512", "<extra>"], [ck])


def _with_patch_token(src: Path, dst: Path) -> Path:
    ck = copy_checkpoint(src, dst)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["mm_use_im_patch_token"] = True
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


def test_image_token_rows_are_padded_deterministically(tiny_ckpt, tmp_path):
    """The image token the config asks for (as the original adds it) gets the mean row, the same on every load,
    with one warning naming both numbers; the RNG is left as it was."""
    from mobilevlm_export.checkpoint.model import load_checkpoint

    ck = _with_patch_token(tiny_ckpt, tmp_path / "ck")
    loads, notes = [], []
    for seed in (1, 2):
        torch.manual_seed(seed)
        state = torch.random.get_rng_state()
        loads.append(load_checkpoint(ck, warn=notes.append))
        assert torch.equal(torch.random.get_rng_state(), state)
    assert len(notes) == 2 and all("513" in n and "512" in n and "<im_patch>" in n for n in notes), notes
    for get in ("get_input_embeddings", "get_output_embeddings"):
        a, b = (getattr(c.model.language_model, get)().weight for c in loads)
        assert a.shape[0] == 513 and torch.equal(a, b), get
        assert torch.allclose(a[512], a[:512].mean(0)), get
    res = runner.invoke(app, ["inspect", str(ck), "--json"])
    assert res.exit_code == 0, res.output
    warnings = [line for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "513" in warnings[0] and "512" in warnings[0], res.stderr


# --- cross-field: safetensors byte ranges -------------------------------------------------------------------------


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _t(start: int, end: int, shape=None) -> dict:
    return {"dtype": "F32", "shape": shape if shape is not None else [(end - start) // 4],
            "data_offsets": [start, end]}


# name -> (header, data bytes, the tensor a refusal names or None when both readers accept it)
LAYOUTS = {
    "contiguous": ({"a": _t(0, 4), "b": _t(4, 8)}, 8, None),
    "unsorted-header": ({"b": _t(4, 8), "a": _t(0, 4)}, 8, None),
    "empty-tensor": ({"a": _t(0, 0), "b": _t(0, 4)}, 4, None),
    "no-tensors": ({}, 0, None),
    "overlapping": ({"a": _t(0, 8), "b": _t(4, 8)}, 8, "'b'"),
    "aliased": ({"a": _t(0, 4), "b": _t(0, 4)}, 4, "'b'"),
    "gap": ({"a": _t(0, 4), "b": _t(8, 12)}, 12, "'b'"),
    "late-start": ({"a": _t(4, 8)}, 8, "'a'"),
    "trailing-bytes": ({"a": _t(0, 4)}, 8, "'a'"),
    "past-the-end": ({"a": _t(0, 8)}, 4, "'a'"),
    "bytes-not-shape": ({"a": _t(0, 8, [1])}, 8, "'a'"),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_safetensors_layout_as_the_reference_reader(tmp_path, name):
    """Our header check accepts what ``safetensors.safe_open`` reads and refuses what it refuses, naming the file
    and the tensor."""
    from safetensors import safe_open

    from mobilevlm_export.checkpoint.weights import _read_safetensors

    header, size, culprit = LAYOUTS[name]
    path = tmp_path / "model.safetensors"
    path.write_bytes(_safetensors(header, bytes(size)))
    try:
        with safe_open(str(path), "np") as f:
            [f.get_tensor(k) for k in f.keys()]  # noqa: SIM118 - safe_open has keys(), no iteration
        reference_ok = True
    except Exception:  # noqa: BLE001 - whatever the reference raises, it refused the file
        reference_ok = False
    assert reference_ok == (culprit is None)
    if culprit is None:
        assert set(_read_safetensors(path)) == set(header)
    else:
        with pytest.raises(UserError) as err:
            _read_safetensors(path)
        assert str(path) in str(err.value) and culprit in str(err.value)


def test_checkpoint_with_aliased_tensors_is_refused(tiny_ckpt, tmp_path):
    """A real checkpoint whose two same-shaped tensors share one byte range (the safetensors library refuses it):
    exit 2 naming the file and the tensor."""
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    f = ck / "model.safetensors"
    blob = f.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    by_shape: dict = {}
    for k, v in header.items():
        if k != "__metadata__":
            by_shape.setdefault((v["dtype"], tuple(v["shape"])), []).append(k)
    first, second = sorted(next(ks for ks in by_shape.values() if len(ks) > 1),
                           key=lambda k: header[k]["data_offsets"])[:2]
    header[second]["data_offsets"] = list(header[first]["data_offsets"])
    raw = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(raw)) + raw + blob[8 + n:])
    refused(["inspect", ck], [str(f), f"'{second}'", "overlaps"], [ck])


# --- cross-field: orin recipe limits vs the model -------------------------------------------------------------------


def _orin_recipe(tmp_path: Path, max_prompt: int, max_context: int) -> Path:
    text = (RECIPES_DIR / "orin-fp16.toml").read_text()
    text = text.replace("max_prompt = 384", f"max_prompt = {max_prompt}").replace(
        "max_context = 512", f"max_context = {max_context}")
    path = tmp_path / f"orin-{max_prompt}-{max_context}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("max_prompt,max_context,key", [
    (144, 512, "tensorrt.max_prompt"),   # exactly the image's tokens: no text fits beside it
    (100, 512, "tensorrt.max_prompt"),   # below the image's tokens
    (384, 384, "tensorrt.max_context"),  # no room for a generated token
])
def test_orin_recipe_limits_that_cannot_run_are_refused(tiny_ckpt, samples, tmp_path, max_prompt, max_context, key):
    recipe = _orin_recipe(tmp_path, max_prompt, max_context)
    out = tmp_path / "o"
    refused(["build", tiny_ckpt, "--target", "orin", "--recipe", recipe, "--samples", samples, "-o", out,
             "--no-bench"], [str(recipe), key, str(max_prompt)], [tiny_ckpt, samples, recipe])
    assert not out.exists()


# --- built bundles: request sizes and --predict vs each target --------------------------------------------------


@pytest.fixture(scope="module")
def bundles(demo_build_onnx, demo_build_orin_fp16, demo_build_snapdragon_fp32):
    """One build per target with float recipes (onnx-fp32, orin-fp16, snapdragon-fp32): conftest's builds of the
    demo checkpoint, made once per session (read-only: cases copy one before changing it). The limits checked are
    the recipes' and the model's (the demo's: 512 positions, 144 image tokens), read from each manifest."""
    return {"onnx": demo_build_onnx, "orin": demo_build_orin_fp16, "snapdragon": demo_build_snapdragon_fp32}


def _limits(d: Path) -> tuple[dict, dict]:
    m = json.loads((d / "manifest.json").read_text())
    return m["recipe"], m["model"]["dims"]


def test_orin_bench_text_prompt_past_max_prompt(bundles):
    """The issue's case: `bench --text-only --prompt-tokens 385` on an orin bundle (max_prompt 384) exited 0."""
    d = bundles["orin"]
    recipe, _ = _limits(d)
    limit = recipe["tensorrt"]["max_prompt"]
    refused(["bench", d, "--text-only", "--prompt-tokens", limit + 1, "--decode-tokens", 1, "--runs", 1,
             "--warmup", 0], ["--prompt-tokens", str(limit + 1), "tensorrt.max_prompt"], [d])


def test_orin_bench_image_prompt_past_max_prompt(bundles):
    d = bundles["orin"]
    recipe, dims = _limits(d)
    over = recipe["tensorrt"]["max_prompt"] - dims["image_tokens"] + 1  # with the image: max_prompt + 1 positions
    refused(["bench", d, "--prompt-tokens", over, "--decode-tokens", 1, "--runs", 1, "--warmup", 0],
            ["--prompt-tokens", "with the image", "tensorrt.max_prompt"], [d])


def test_orin_bench_at_max_prompt_runs(bundles):
    """The limit itself is a request the bundle takes (the refusals above are not off by one)."""
    d = bundles["orin"]
    recipe, _ = _limits(d)
    res = runner.invoke(app, ["bench", str(d), "--text-only", "--prompt-tokens", str(recipe["tensorrt"]["max_prompt"]),
                              "--decode-tokens", "1", "--runs", "1", "--warmup", "0", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["host"]["prefill_positions"] == recipe["tensorrt"]["max_prompt"]


@pytest.mark.parametrize("target", ["onnx", "orin", "snapdragon"])
def test_bench_request_past_capacity(bundles, target):
    """A prompt plus decode steps past what the target's decoder holds: exit 2 naming both flags."""
    d = bundles[target]
    refused(["bench", d, "--text-only", "--prompt-tokens", 4, "--decode-tokens", 100_000, "--runs", 1,
             "--warmup", 0], ["--prompt-tokens", "--decode-tokens", "capacity"], [d])


@pytest.mark.parametrize("target", ["onnx", "orin", "snapdragon"])
def test_run_answer_past_capacity(bundles, target, image_file):
    d = bundles[target]
    refused(["run", d, "--image", image_file, "--prompt", "What is it?", "--max-new-tokens", 100_000],
            ["--max-new-tokens", "capacity"], [d, image_file])


@pytest.mark.parametrize("target,words,needle", [
    ("orin", 260, "tensorrt.max_prompt"),  # 442 positions: in the 512 context, past the 384-position prefill
    ("onnx", 2100, "capacity"),            # past the model's 512 positions (onnx: no context of its own)
    ("snapdragon", 400, "capacity"),       # 582 positions: past the 512-position cache
    ("orin", 400, "capacity"),
])
def test_run_prompt_past_the_built_limits(bundles, image_file, target, words, needle):
    d = bundles[target]
    refused(["run", d, "--image", image_file, "--prompt", "a " * words, "--max-new-tokens", 1],
            ["--prompt", needle], [d, image_file])


@pytest.mark.parametrize("target,profile", [("orin", "snapdragon-888"), ("snapdragon", "orin-nano-8gb"),
                                            ("orin", "snapdragon-8-gen-3")])
@pytest.mark.parametrize("flag", ["--predict", "--profile"])
def test_predict_for_another_targets_device(bundles, target, profile, flag):
    """A phone's roofline for a TensorRT bundle (or a Jetson's for a .pte) is refused before any run."""
    d = bundles[target]
    other = "snapdragon" if target == "orin" else "orin"
    refused(["bench", d, flag, profile, "--runs", 1, "--warmup", 0], ["--predict", profile, other, target], [d])


# --- empty golden arrays --------------------------------------------------------------------------------------------


def _resigned_golden(src: Path, dst: Path, change) -> tuple[Path, str]:
    from mobilevlm_export.manifest import update_manifest

    d = Path(shutil.copytree(src, dst))
    npz = d / "golden" / "golden.npz"
    arrays = dict(np.load(npz))
    key = change(arrays)
    np.savez(npz, **arrays)
    update_manifest(d)
    return d, key


def _empty_prompt(arrays: dict) -> str:
    """The embed_tokens case given a zero-length prompt (and its reference output cut to match)."""
    key = next(k for k in arrays if k.startswith("embed_tokens/") and k.endswith("/in/input_ids"))
    arrays[key] = arrays[key][:, :0]
    out = key.replace("/in/input_ids", "/out/inputs_embeds")
    arrays[out] = arrays[out][:, :0]
    return key


def _empty_output(arrays: dict) -> str:
    key = next(k for k in arrays if k.startswith("decoder/") and k.endswith("/out/logits"))
    arrays[key] = arrays[key][:, :0]
    return key


def _empty_pixels(arrays: dict) -> str:
    arrays["e2e/0/pixel_values"] = arrays["e2e/0/pixel_values"][..., :0]
    return "e2e/0/pixel_values"


@pytest.mark.parametrize("change", [_empty_prompt, _empty_output, _empty_pixels])
def test_empty_golden_arrays(bundles, tmp_path, change):
    """A zero-length golden case printed numpy warnings and exited 1 (a failed check): it is bad input."""
    d, key = _resigned_golden(bundles["onnx"], tmp_path / "d", change)
    res = runner.invoke(app, ["verify", str(d)])
    line = one_line(res.exit_code, res.stderr, res.output, "golden.npz", key, "empty")
    assert "Warning" not in res.output, line


# --- bounded resources: image dimensions ------------------------------------------------------------------------


def _png(path: Path, width: int, height: int, rows: bytes | None = None) -> Path:
    """A PNG of ``width`` x ``height`` grey pixels (``rows``: the raw scanlines, default all zero)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = rows if rows is not None else b"".join(b"\0" + bytes(width) for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width,height", [(30_000, 1), (1, 30_000), (MAX_INPUT_SIDE + 1, 2)])
def test_long_thin_image_is_refused_before_padding(tiny_ckpt, tmp_path, width, height):
    """The issue's 168-byte 30000x1 PNG padded to a 30000 x 30000 square (3.66 GB): refused from its header."""
    image = _png(tmp_path / "thin.png", width, height)
    assert image.stat().st_size < 1000
    refused(["generate", tiny_ckpt, "--image", image, "--prompt", "q"],
            ["--image", str(image), f"{width}x{height}", str(MAX_INPUT_SIDE)], [tiny_ckpt, image])


def test_image_size_is_checked_before_decoding(tmp_path):
    """A header claiming 30000x1 over data that could not even be decoded: the size is what is refused."""
    image = _png(tmp_path / "lie.png", 30_000, 1, rows=b"\0" * 10)
    with pytest.raises(UserError, match="30000x1"):
        load_image(image)


def test_preprocess_refuses_an_oversized_image_object():
    """An image handed to the preprocessing directly (not through load_image) is bounded too."""
    with pytest.raises(UserError, match=f"{MAX_INPUT_SIDE + 1}x1"):
        ImagePreprocess()(Image.new("L", (MAX_INPUT_SIDE + 1, 1)))


def test_image_at_the_bound_is_read(tmp_path):
    image = _png(tmp_path / "wide.png", MAX_INPUT_SIDE, 1)
    assert load_image(image).size == (MAX_INPUT_SIDE, 1)
    assert ImagePreprocess(crop_size=14, shortest_edge=14)(load_image(image)).shape == (3, 14, 14)


# --- bounded resources: non-regular files wherever a file is read -----------------------------------------------


def _fifo(path: Path) -> Path:
    if path.exists():
        path.unlink()
    os.mkfifo(path)
    return path


@pytest.fixture
def unix_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    path = tmp_path / "sock"
    sock.bind(str(path))
    yield path
    sock.close()


requires_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")


@requires_fifo
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.model", "tokenizer_config.json",
                                  "special_tokens_map.json", "vision_tower/preprocessor_config.json"])
def test_checkpoint_file_that_is_a_fifo(tiny_ckpt, tmp_path, name):
    """A FIFO (no writer) in place of a checkpoint file hung `inspect` forever: one line naming it."""
    ck = copy_checkpoint(tiny_ckpt, tmp_path / "ck")
    fifo = _fifo(ck / name)
    refused_in_child(["inspect", ck], [str(fifo), "FIFO"], [ck])


@requires_fifo
def test_bin_weights_fifo(ckpt_factory, tmp_path):
    ck = copy_checkpoint(ckpt_factory("ldpnetv2", "bin", 1), tmp_path / "ck")
    fifo = _fifo(next(ck.glob("pytorch_model*.bin")))
    refused_in_child(["inspect", ck], [str(fifo), "FIFO"], [ck])


@requires_fifo
def test_shard_named_by_the_index_is_a_fifo(ckpt_factory, tmp_path):
    ck = copy_checkpoint(ckpt_factory("ldpnetv2", "safetensors", 3), tmp_path / "ck")
    fifo = _fifo(sorted(ck.glob("*.safetensors"))[1])
    refused_in_child(["inspect", ck], [str(fifo), "FIFO"], [ck])


@requires_fifo
def test_image_fifo_device_and_socket(tiny_ckpt, tmp_path, unix_socket):
    fifo = _fifo(tmp_path / "img.png")
    for path, kind in ((fifo, "FIFO"), (Path("/dev/zero"), "character device"), (unix_socket, "socket")):
        refused_in_child(["generate", tiny_ckpt, "--image", path, "--prompt", "q"], ["--image", str(path), kind],
                         [tiny_ckpt])


@requires_fifo
def test_recipe_and_profile_fifos(tiny_ckpt, tmp_path, bundles):
    fifo = _fifo(tmp_path / "r.toml")
    out = tmp_path / "o"
    refused_in_child(["build", tiny_ckpt, "--target", "orin", "--recipe", fifo, "-o", out],
                     ["--recipe", str(fifo), "FIFO"], [tiny_ckpt])
    refused_in_child(["build", tiny_ckpt, "--target", "orin", "--profile", fifo, "-o", out],
                     ["--profile", str(fifo), "FIFO"], [tiny_ckpt])
    refused_in_child(["bench", bundles["orin"], "--predict", fifo], ["--profile", str(fifo), "FIFO"],
                     [bundles["orin"]])
    assert not out.exists()


@requires_fifo
def test_sample_image_fifo(tiny_ckpt, samples, tmp_path):
    folder = Path(shutil.copytree(samples, tmp_path / "s"))
    items = json.loads((folder / "questions.json").read_text())
    fifo = _fifo(folder / items[0]["image"])
    out = tmp_path / "o"
    refused_in_child(["build", tiny_ckpt, "--target", "onnx", "--samples", folder, "-o", out],
                     [str(fifo), "FIFO", "'[0].image'"], [tiny_ckpt, folder])
    assert not out.exists()


def test_regular_file_helper(tmp_path, unix_socket):
    """The one helper every reader uses: what it says for each kind of path, and that it never blocks."""
    from mobilevlm_export.files import open_regular, regular_file

    f = tmp_path / "f"
    f.write_bytes(b"x")
    assert regular_file(f) == f
    link = tmp_path / "link"
    link.symlink_to(f)
    with open_regular(link) as fh:  # a link to a regular file is read (what it leads to counts)
        assert fh.read() == b"x"
    cases = [(tmp_path / "none", "no such file"), (tmp_path, "it is a directory"), (unix_socket, "a socket"),
             (Path("/dev/null"), "a character device")]
    if hasattr(os, "mkfifo"):
        cases.append((_fifo(tmp_path / "p"), "a FIFO"))
        dangling = tmp_path / "dangling"
        dangling.symlink_to(tmp_path / "gone")
        cases.append((dangling, "no such file"))
    for path, why in cases:
        for fn in (regular_file, open_regular):
            with pytest.raises(UserError) as err:
                fn(path, "--flag")
            assert str(err.value).startswith(f"--flag {path}:") and why in str(err.value), err.value


# --- every integer flag, range-checked before anything loads ----------------------------------------------------

GENERATION_FLAGS = [
    ("--seed", "-5"), ("--seed", "-1"), ("--seed", str(MAX_SEED + 1)),
    ("--max-new-tokens", "0"), ("--max-new-tokens", str(MAX_TOKENS + 1)),
    ("--top-k", "-1"), ("--top-k", str(MAX_TOKENS + 1)),
]
BENCH_FLAGS = [
    ("--prompt-tokens", "0"), ("--prompt-tokens", str(MAX_TOKENS + 1)),
    ("--decode-tokens", "0"), ("--decode-tokens", str(MAX_TOKENS + 1)),
    ("--runs", "0"), ("--runs", str(MAX_RUNS + 1)),
    ("--warmup", "-1"), ("--warmup", str(MAX_RUNS + 1)),
]


@pytest.mark.parametrize("flag,value", GENERATION_FLAGS)
@pytest.mark.parametrize("command", ["generate", "run"])
def test_generation_flag_out_of_range(tmp_path, command, flag, value):
    """Refused by the parser: the checkpoint or bundle given does not even exist, and the flag is what is named
    (`--seed -5` used to be exit 3 after a 12 s load)."""
    image = _png(tmp_path / "i.png", 4, 4)
    refused([command, tmp_path / "nothing-here", "--image", image, "--prompt", "q", flag, value], [flag], [image])


@pytest.mark.parametrize("flag,value", BENCH_FLAGS)
def test_bench_flag_out_of_range(tmp_path, flag, value):
    refused(["bench", tmp_path / "nothing-here", flag, value], [flag])


def test_flags_at_their_bounds_reach_the_command(tmp_path):
    """The bounds themselves pass the parser: the error is then about the (missing) bundle, not the flag."""
    image = _png(tmp_path / "i.png", 4, 4)
    line = refused(["run", tmp_path / "nothing-here", "--image", image, "--prompt", "q", "--seed", str(MAX_SEED),
                    "--max-new-tokens", str(MAX_TOKENS), "--top-k", str(MAX_TOKENS)], ["nothing-here"])
    assert "--seed" not in line and "--top-k" not in line


def test_seed_refused_without_loading(tiny_ckpt, image_file, monkeypatch):
    """`--seed -5` on a real checkpoint: refused before the checkpoint loader is called."""
    import mobilevlm_export.checkpoint.model as model

    def boom(*_a, **_k):
        raise AssertionError("the checkpoint was loaded")

    monkeypatch.setattr(model, "load_checkpoint", boom)
    refused(["generate", tiny_ckpt, "--image", image_file, "--prompt", "q", "--seed", "-5"], ["--seed"])


def test_png_helper_is_a_readable_image(tmp_path):
    """(The crafted PNGs above are real images, so the size bound, not a decode error, is what refuses them.)"""
    with Image.open(io.BytesIO(_png(tmp_path / "p.png", 7, 3).read_bytes())) as img:
        img.load()
        assert img.size == (7, 3)
