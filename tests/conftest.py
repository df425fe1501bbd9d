"""Shared fixtures: tiny random-weight checkpoints in the real MobileVLM layout, made once per session."""

from __future__ import annotations

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
