"""Shared fixtures: tiny random-weight checkpoints in the real MobileVLM layout, and the demo checkpoint's builds
(``demo_builds``), each made once per session."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mobilevlm_export.checkpoint.model import load_checkpoint
from mobilevlm_export.checkpoint.synthetic import write_checkpoint

torch.set_num_threads(2)

# (projector, weight format, shards): every projector type, both file formats, single and sharded.
CHECKPOINT_KINDS = [
    ("ldpnetv2", "safetensors", 1),
    ("ldpnetv2", "bin", 3),
    ("ldpnet", "safetensors", 2),
    ("ldpnet", "bin", 1),
    ("mlp2x_gelu", "safetensors", 1),
    ("mlp2x_gelu", "bin", 2),
    ("linear", "safetensors", 3),
    ("linear", "bin", 1),
]


@pytest.fixture(scope="session")
def ckpt_factory(tmp_path_factory):
    """``make(projector, fmt, shards, **config_overrides) -> Path``, cached per argument set."""
    cache: dict = {}

    def make(projector: str = "ldpnetv2", fmt: str = "safetensors", shards: int = 1, **overrides) -> Path:
        key = (projector, fmt, shards, json.dumps(overrides, sort_keys=True))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ckpt_{projector}_{fmt}_{shards}")
            cache[key] = write_checkpoint(out, projector=projector, fmt=fmt, shards=shards, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(ckpt_factory) -> Path:
    return ckpt_factory("ldpnetv2")


@pytest.fixture(scope="session")
def tiny_loaded(tiny_ckpt):
    return load_checkpoint(tiny_ckpt)


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> Path:
    """A samples folder (images + questions.json), one shape per demo question."""
    from mobilevlm_export.demo.shapes import QUESTIONS, render

    d = tmp_path_factory.mktemp("samples")
    items = []
    for i, kind in enumerate(QUESTIONS):
        render(2, i).image.save(d / f"{i}.png")
        items.append({"image": f"{i}.png", "question": QUESTIONS[kind]})
    (d / "questions.json").write_text(json.dumps(items))
    return d


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A random RGB image file (120 x 200)."""
    import numpy as np
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(path)
    return path


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A writable copy of a checkpoint directory (for tests that break one)."""
    import shutil

    shutil.copytree(src, dst)
    return dst


# `python -c CLI_WITHOUT_TORCH ARGS...`: the CLI in a process where importing torch or transformers raises
CLI_WITHOUT_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"importing {name} is blocked: the artifact side must not need it")
sys.meta_path.insert(0, Block())
sys.argv = ["mvlm-export", *sys.argv[1:]]
from mobilevlm_export.cli import main
main()
"""


# ------------------------------------------------------------------------------------------------ the demo's builds
# The demo checkpoint built per target as `make demo` builds it: ``export`` (onnx, its default recipe onnx-fp32),
# ``build --target orin --no-bench --threads 2`` and ``build --target snapdragon --threads 2`` (with its latency
# run), all with ``--json``. A build takes from ~20 s (onnx) to ~2 min (snapdragon): each (target, recipe) is built once
# per session and shared by every module. They are read-only: a test that changes a build copies it first
# (``copy_build``); the session checks at its end that no file of a shared build changed.
DEMO_BUILD_ARGS = {
    "onnx": ["export", "--force"],
    "orin": ["build", "--target", "orin", "--no-bench", "--threads", "2"],
    "snapdragon": ["build", "--target", "snapdragon", "--threads", "2"],
}
DEMO_DEFAULT_RECIPES = {"onnx": "onnx-fp32", "orin": "orin-int4", "snapdragon": "snapdragon-8da4w"}


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


class DemoBuilds(dict):
    """``(target, recipe) -> (DIR, the build's --json result)``, built on first use (a session that runs only the
    onnx tests builds only onnx). ``recipe`` is a shipped recipe's name or a recipe file's path."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.digests: dict[Path, dict[str, str]] = {}

    def __missing__(self, key: tuple[str, str]):
        from typer.testing import CliRunner

        from mobilevlm_export.cli import app

        target, recipe = key
        out = self.root / f"{target}-{len(self)}-{Path(recipe).stem}"
        recipe_args = [] if recipe == DEMO_DEFAULT_RECIPES[target] else ["--recipe", recipe]
        res = CliRunner().invoke(app, [*DEMO_BUILD_ARGS[target], *recipe_args, "-o", str(out), "--json"])
        assert res.exit_code == 0, res.output
        self[key] = (out, json.loads(res.stdout))
        self.digests[out] = tree_digest(out)
        return self[key]

    def default(self, target: str) -> Path:
        return self[target, DEMO_DEFAULT_RECIPES[target]][0]


@pytest.fixture(scope="session")
def demo_builds(tmp_path_factory):
    builds = DemoBuilds(tmp_path_factory.mktemp("demo_builds"))
    yield builds
    changed = [str(out) for out, before in builds.digests.items() if tree_digest(out) != before]
    assert not changed, f"a test changed a shared demo build (copy it first: copy_build): {changed}"


@pytest.fixture(scope="session")
def demo_build_onnx(demo_builds) -> Path:
    """``export -o DIR`` of the demo checkpoint (onnx-fp32). Read-only."""
    return demo_builds.default("onnx")


@pytest.fixture(scope="session")
def demo_build_orin(demo_builds) -> Path:
    """``build --target orin --no-bench`` of the demo checkpoint (orin-int4, the target's default). Read-only."""
    return demo_builds.default("orin")


@pytest.fixture(scope="session")
def demo_build_snapdragon(demo_builds) -> Path:
    """``build --target snapdragon`` of the demo checkpoint (snapdragon-8da4w, with its latency run). Read-only."""
    return demo_builds.default("snapdragon")


@pytest.fixture(scope="session")
def reference_heldout():
    """``n -> (accuracy, records)`` of the demo checkpoint's reference model over the first ``n`` (<= 150) held-out
    pairs: ``heldout_accuracy(n=150)`` run once per session (sample ``i`` does not depend on ``n``, so the first
    ``n`` records are ``heldout_accuracy(n=n)``'s)."""
    from mobilevlm_export.demo.evaluate import heldout_accuracy

    _, records = heldout_accuracy(n=150)

    def first(n: int = 150) -> tuple[float, list[dict]]:
        assert 0 < n <= len(records), n
        return sum(r["correct"] for r in records[:n]) / n, records[:n]

    return first


def copy_build(build: Path, dst: Path) -> Path:
    """A writable copy of a (shared, read-only) build directory at ``dst``."""
    import shutil

    return Path(shutil.copytree(build, dst))
