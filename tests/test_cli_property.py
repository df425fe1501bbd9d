"""Property-based test of the CLI's contract: every command, driven with generated argument vectors (valid and
invalid flags, values, paths), ends with exit 0, 1 (a failed check) or 2 (bad input); exit 2 is exactly one stderr
line; no traceback ever; no signal, no hang; nothing outside the scratch output folder changes (the build, the
checkpoint and the image are hashed before and after each example).

Each example is a fresh process of the console script (what a user and CI run). The default run draws a bounded
number of examples; `make test-slow` draws many more (``MVLM_PROPERTY_EXAMPLES``) and adds `build`/`export`, whose
valid vectors take tens of seconds each. ``MVLM_PROPERTY_LOG=FILE`` appends each example's exit code, command and
first stderr characters to FILE (what the vectors reached).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

CLI = str(Path(sys.executable).with_name("mvlm-export"))
SLOW = os.environ.get("MVLM_PROPERTY_SLOW") == "1"
EXAMPLES = int(os.environ.get("MVLM_PROPERTY_EXAMPLES", "200" if SLOW else "12"))
INTS = ["-5", "0", "99999999999999999999", "abc", "1.5", ""]  # each flag's invalid values; valid ones per flag
FLOATS = ["-1", "1.5", "nan", "inf", "x"]
WORDS = ["onnx", "orin", "snapdragon", "tensorrt", "executorch", "orin-fp16", "snapdragon-888", "orin-nano-8gb",
         "nope", "", "../x", "-", "--json"]


def mix(valid: list[str], invalid: list[str]):
    """Mostly valid values (so that vectors reach past the parser), sometimes invalid ones."""
    return st.sampled_from(valid * 3 + invalid)


def _digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(demo_build_onnx, tmp_path_factory):
    """A built demo (onnx: a copy of conftest's `export`, built once per session), the demo checkpoint's copy, an
    image, a text file, a directory and a scratch folder."""
    root = tmp_path_factory.mktemp("prop")
    shutil.copytree(demo_build_onnx, root / "build")
    shutil.copytree(demo_checkpoint_dir(), root / "ckpt")
    image = root / "img.png"
    shutil.copy(sorted((demo_checkpoint_dir().parent / "samples").glob("*.png"))[0], image)
    (root / "notes.txt").write_text("not an image, not a model\n")
    (root / "adir").mkdir()
    (root / "scratch").mkdir()
    return root


def _paths(root: Path) -> list[str]:
    return [str(root / "build"), str(root / "ckpt"), str(root / "img.png"), str(root / "notes.txt"),
            str(root / "adir"), str(root / "missing"), str(root / "build" / "manifest.json"), "", "/",
            str(root / "scratch" / "out")]


def _commands(root: Path) -> dict[str, tuple[list, dict]]:
    paths = _paths(root)
    p, w = st.sampled_from(paths), st.sampled_from(WORDS)
    text = st.sampled_from(["What color is the shape?"] * 3 + ["", "x" * 3000, "<image>", "ünïcode ✓"])
    out = st.sampled_from([str(root / "scratch" / "report.xml")] * 3 + [
        str(root / "build" / "manifest.json"), str(root / "build"), str(root / "adir"),
        str(root / "scratch" / ("n" * 300))])
    built = st.sampled_from([str(root / "build")] * 4 + paths)
    threads = mix(["1", "2"], INTS)
    gen = {"--max-new-tokens": mix(["1", "4", "16"], INTS), "--temperature": mix(["0", "0.7"], FLOATS),
           "--top-p": mix(["0.9", "1"], FLOATS), "--top-k": mix(["0", "5"], INTS),
           "--seed": mix(["0", "7", "18446744073709551615"], INTS), "--raw-prompt": None, "--json": None}
    commands = {
        "inspect": ([st.sampled_from([str(root / "ckpt")] * 3 + paths)], {"--json": None, "--vision-tower": p}),
        "generate": ([st.sampled_from([str(root / "ckpt")] * 3 + paths)],
                     {"--image": mix([str(root / "img.png")], paths), "--prompt": text, **gen}),
        "run": ([built], {"--image": mix([str(root / "img.png")], paths), "--prompt": text, "--threads": threads,
                          "--backend": mix(["onnxruntime"], WORDS), **gen}),
        "verify": ([built], {"--junit": out, "--threads": threads, "--backend": mix(["onnxruntime"], WORDS),
                             "--recipe": mix(["onnx-fp32", "onnx-fp16"], WORDS), "--json": None}),
        "bench": ([built], {"--runs": mix(["1", "2"], ["0", "-1", "10000000", "x"]),
                            "--warmup": mix(["0", "1"], ["-1", "10000000"]),
                            "--prompt-tokens": mix(["4", "16"], INTS), "--decode-tokens": mix(["2", "4"], INTS),
                            "--text-only": None, "--predict": w, "--threads": threads,
                            "--backend": mix(["onnxruntime"], WORDS), "--json": None}),
        "trt-build": ([built], {"--record-only": None, "--json": None}),
    }
    if SLOW:
        target = {"--target": mix(["onnx"], WORDS), "--recipe": mix(["onnx-fp32"], WORDS), "--profile": w,
                  "--threads": threads, "--no-bench": None, "--json": None}
        scratch = st.sampled_from([str(root / "scratch" / "b"), str(root / "adir"), str(root / "scratch")])
        commands["build"] = ([st.sampled_from([str(root / "ckpt"), *paths])], {"-o": scratch, "--force": None,
                                                                                **target})
    return commands


@st.composite
def argv(draw, root: Path):
    commands = _commands(root)
    name = draw(st.sampled_from(sorted(commands)))
    positional, flags = commands[name]
    args = [name] + [draw(s) for s in positional if draw(st.integers(0, 7)) > 0]  # (sometimes missing)
    required = [f for f in ("--image", "--prompt", "--target", "-o") if f in flags and draw(st.integers(0, 5)) > 0]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True))
    for flag in dict.fromkeys(required + chosen):
        value = flags[flag]
        args += [flag] if value is None else [flag, draw(value)]
    if draw(st.integers(0, 9)) == 0:
        args.append(draw(st.sampled_from(["--bogus", "extra-positional", "--json=1", "-x"])))
    return args


def test_cli_contract_on_generated_argument_vectors(world):
    root = world
    protected = {name: _digest(root / name) for name in ("build", "ckpt")}
    image = hashlib.sha256((root / "img.png").read_bytes()).hexdigest()

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not SLOW,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(args=argv(root))
    def check(args):
        env = {**os.environ, "COLUMNS": "120"}
        try:
            res = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=120, env=env,
                                 stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: mvlm-export {args}")
        if os.environ.get("MVLM_PROPERTY_LOG"):
            with open(os.environ["MVLM_PROPERTY_LOG"], "a") as log:
                log.write(f"{res.returncode} {args[:1]} {res.stderr.strip()[:150]!r}\n")
        assert res.returncode in (0, 1, 2), (args, res.returncode, res.stderr[-2000:])
        assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, (args, res.stderr[-2000:])
        if res.returncode == 2:
            lines = [line for line in res.stderr.splitlines() if line.strip()]
            assert len(lines) == 1, (args, res.stderr)
        for name, before in protected.items():
            assert _digest(root / name) == before, (args, f"{name} changed")
        assert hashlib.sha256((root / "img.png").read_bytes()).hexdigest() == image, args

    check()
