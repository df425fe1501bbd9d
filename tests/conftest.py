"""Shared fixtures: tiny random-weight checkpoints in the real MobileVLM layout, and the demo checkpoint's builds
(``demo_builds``), each made once per session."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
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
# run), all with ``--json``. A build takes from ~20 s (orin) to ~2 min (snapdragon): each (target, recipe) is built
# once per session and shared by every module. They are read-only: a test that changes a build copies it first
# (``copy_build``); the session checks at its end that no file of a shared build changed.
#
# The builds that the session's tests need through the fixtures below are started when collection ends, one at a
# time in a child process (the CLI, as a user runs it), in the order the tests first need them, while the tests run
# (most of them keep one of the two cores busy): a test waits only for what is not built yet. A build no child has
# started yet is made in the test's own process.
DEMO_BUILD_ARGS = {
    "onnx": ["export", "--force"],
    "orin": ["build", "--target", "orin", "--no-bench", "--threads", "2"],
    "snapdragon": ["build", "--target", "snapdragon", "--threads", "2"],
}
DEMO_DEFAULT_RECIPES = {"onnx": "onnx-fp32", "orin": "orin-int4", "snapdragon": "snapdragon-8da4w"}
DEMO_FIXTURES = {  # fixture -> the build it returns (the directory; ``demo_builds[key]`` adds the --json result)
    "demo_build_onnx": ("onnx", "onnx-fp32"),
    "demo_build_orin": ("orin", "orin-int4"),
    "demo_build_orin_fp16": ("orin", "orin-fp16"),
    "demo_build_orin_int8": ("orin", "orin-int8"),
    "demo_build_snapdragon": ("snapdragon", "snapdragon-8da4w"),
    "demo_build_snapdragon_fp32": ("snapdragon", "snapdragon-fp32"),
}
_POPEN, _EXECUTABLE = subprocess.Popen, sys.executable  # (as they are before any test monkeypatches them)


def tree_digest(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


class DemoBuilds(dict):
    """``(target, recipe) -> (DIR, the build's --json result)``, built on first use or ahead (``prefetch``).
    ``recipe`` is a shipped recipe's name or a recipe file's path."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.digests: dict[Path, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._queue: list[tuple[str, str]] = []
        self._started: dict[tuple[str, str], threading.Event] = {}
        self._finished: dict[tuple[str, str], tuple[int | None, str, str]] = {}
        self._child: subprocess.Popen | None = None
        self._stopped = False

    def _out(self, key: tuple[str, str]) -> Path:
        target, recipe = key
        return self.root / f"{target}-{Path(recipe).stem}"

    def _args(self, key: tuple[str, str]) -> list[str]:
        target, recipe = key
        recipe_args = [] if recipe == DEMO_DEFAULT_RECIPES[target] else ["--recipe", recipe]
        return [*DEMO_BUILD_ARGS[target], *recipe_args, "-o", str(self._out(key)), "--json"]

    def prefetch(self, keys: list[tuple[str, str]]) -> None:
        """Build ``keys`` in this order, one at a time, each in a child process, from a background thread."""
        self._queue = list(dict.fromkeys(keys))
        env, cwd = dict(os.environ), os.getcwd()
        threading.Thread(target=self._work, args=(env, cwd), name="demo-builds", daemon=True).start()

    def _work(self, env: dict[str, str], cwd: str) -> None:
        while True:
            with self._lock:
                if self._stopped or not self._queue:
                    return
                key = self._queue.pop(0)
                done = self._started[key] = threading.Event()
                try:
                    self._child = _POPEN([_EXECUTABLE, "-m", "mobilevlm_export.cli", *self._args(key)], env=env,
                                         cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True)
                except OSError as exc:
                    self._finished[key] = (None, "", repr(exc))
                    done.set()
                    continue
            try:
                stdout, stderr = self._child.communicate()
                self._finished[key] = (self._child.returncode, stdout, stderr)
            except BaseException as exc:  # (reported to the test that needs it)
                self._finished[key] = (None, "", repr(exc))
            finally:
                done.set()

    def __missing__(self, key: tuple[str, str]):
        with self._lock:
            started = self._started.get(key)
            if started is None and key in self._queue:
                self._queue.remove(key)  # not started yet: made here
        out = self._out(key)
        if started is not None:
            started.wait()
            code, stdout, stderr = self._finished[key]
            assert code == 0, f"mvlm-export {' '.join(self._args(key))}: exit {code}\n{stderr[-3000:]}"
            result = json.loads(stdout)
        else:
            from typer.testing import CliRunner

            from mobilevlm_export.cli import app

            res = CliRunner().invoke(app, self._args(key))
            assert res.exit_code == 0, res.output
            result = json.loads(res.stdout)
        self[key] = (out, result)
        self.digests[out] = tree_digest(out)
        return self[key]

    def default(self, target: str) -> Path:
        return self[target, DEMO_DEFAULT_RECIPES[target]][0]

    def stop(self) -> None:
        """No more builds; a child still building is ended (a session that stopped early)."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()  # (the CLI removes its staging directory on SIGTERM, between two native calls)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


_DEMO_BUILDS: DemoBuilds | None = None  # the session's (made when collection ends)


def pytest_collection_modifyitems(session, config, items) -> None:
    """The artifact pins (tests/test_artifact_pins.py, which read six shared builds) run last: by then the builds
    were made alongside the tests that need them first, instead of every other test waiting behind all six."""
    items.sort(key=lambda item: item.path.name == "test_artifact_pins.py")  # (stable: the rest keep their order)


def pytest_collection_finish(session) -> None:
    """Start building, in the background, the demo builds the collected tests will need, first needed first."""
    global _DEMO_BUILDS
    if session.config.option.collectonly:
        return
    keys = [DEMO_FIXTURES[name] for item in session.items for name in getattr(item, "fixturenames", ())
            if name in DEMO_FIXTURES]
    if keys:
        _DEMO_BUILDS = DemoBuilds(session.config._tmp_path_factory.mktemp("demo_builds"))
        _DEMO_BUILDS.prefetch(keys)


def pytest_sessionfinish(session) -> None:
    if _DEMO_BUILDS is not None:
        _DEMO_BUILDS.stop()


@pytest.fixture(scope="session")
def demo_builds(tmp_path_factory):
    builds = _DEMO_BUILDS or DemoBuilds(tmp_path_factory.mktemp("demo_builds"))
    yield builds
    changed = [str(out) for out, before in builds.digests.items() if tree_digest(out) != before]
    assert not changed, f"a test changed a shared demo build (copy it first: copy_build): {changed}"


@pytest.fixture(scope="session")
def demo_build_onnx(demo_builds) -> Path:
    """``export -o DIR`` of the demo checkpoint (onnx-fp32). Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_onnx"]][0]


@pytest.fixture(scope="session")
def demo_build_orin(demo_builds) -> Path:
    """``build --target orin --no-bench`` of the demo checkpoint (orin-int4, the target's default). Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_orin"]][0]


@pytest.fixture(scope="session")
def demo_build_orin_fp16(demo_builds) -> Path:
    """``build --target orin --recipe orin-fp16 --no-bench`` of the demo checkpoint. Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_orin_fp16"]][0]


@pytest.fixture(scope="session")
def demo_build_orin_int8(demo_builds) -> Path:
    """``build --target orin --recipe orin-int8 --no-bench`` of the demo checkpoint. Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_orin_int8"]][0]


@pytest.fixture(scope="session")
def demo_build_snapdragon(demo_builds) -> Path:
    """``build --target snapdragon`` of the demo checkpoint (snapdragon-8da4w, with its latency run). Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_snapdragon"]][0]


@pytest.fixture(scope="session")
def demo_build_snapdragon_fp32(demo_builds) -> Path:
    """``build --target snapdragon --recipe snapdragon-fp32`` of the demo checkpoint (with its latency run).
    Read-only."""
    return demo_builds[DEMO_FIXTURES["demo_build_snapdragon_fp32"]][0]


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
