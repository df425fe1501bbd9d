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
# run), all with ``--json``. A build takes from ~20 s (orin) to ~1.5 min (snapdragon): each (target, recipe) is built
# once per test run and shared by every module and every pytest-xdist worker (`make test` runs two). They are
# read-only: a test that changes a build copies it first (``copy_build``); each process checks at its end that no
# file of a shared build it used changed.
#
# The builds live in one folder of the run (the xdist workers' common temporary root), each guarded by a lock file:
# whoever holds it builds, or finds the build (its --json result, or its failure) already recorded there. Each
# process starts building, when collection ends, the builds its collected tests need, first needed first, one at a
# time in a child process (the CLI, as a user runs it) from a background thread that passes over a build another
# process is making; a test waits only for a build not made yet, and one nobody has started is made in its own
# process.
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


class _BuildLock:
    """An exclusive lock on ``path`` (``flock``: between processes, and between threads of one process, each
    holding its own open file), blocking or not; released when the ``with`` block ends."""

    def __init__(self, path: Path, blocking: bool = True) -> None:
        self.path, self.blocking, self.fd, self.held = path, blocking, -1, False

    def __enter__(self) -> _BuildLock:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
            self.held = True
        except BlockingIOError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)  # (closing the file releases the lock)


class DemoBuilds(dict):
    """``(target, recipe) -> (DIR, the build's --json result)``, built on first use or ahead (``prefetch``), once
    per folder ``root`` whichever process of the run asks. ``recipe`` is a shipped recipe's name or a recipe file's
    path."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.digests: dict[Path, dict[str, str]] = {}
        self._lock = threading.Lock()
        self._queue: list[tuple[str, str]] = []
        self._child: subprocess.Popen | None = None
        self._stopped = False

    def _out(self, key: tuple[str, str]) -> Path:
        target, recipe = key
        return self.root / f"{target}-{Path(recipe).stem}"

    def _record(self, key: tuple[str, str], suffix: str) -> Path:
        """The build's lock (``.lock``), its --json result once built (``.json``) or its failure (``.failed``)."""
        return self._out(key).with_name(self._out(key).name + suffix)

    def _args(self, key: tuple[str, str]) -> list[str]:
        target, recipe = key
        recipe_args = [] if recipe == DEMO_DEFAULT_RECIPES[target] else ["--recipe", recipe]
        return [*DEMO_BUILD_ARGS[target], *recipe_args, "-o", str(self._out(key)), "--json"]

    def _recorded(self, key: tuple[str, str]) -> bool:
        return self._record(key, ".json").exists() or self._record(key, ".failed").exists()

    def _save(self, key: tuple[str, str], code: int | None, stdout: str, stderr: str) -> None:
        """Record a finished build (under its lock): its --json result, or why it failed."""
        if code == 0:
            self._record(key, ".json").write_text(stdout)
        else:
            self._record(key, ".failed").write_text(
                f"mvlm-export {' '.join(self._args(key))}: exit {code}\n{stderr[-3000:]}")

    def prefetch(self, keys: list[tuple[str, str]]) -> None:
        """Build ``keys`` not built yet in this order, one at a time, each in a child process, from a background
        thread; a build another process holds the lock of is passed over (that process makes it)."""
        self._queue = list(dict.fromkeys(keys))
        env, cwd = dict(os.environ), os.getcwd()
        threading.Thread(target=self._work, args=(env, cwd), name="demo-builds", daemon=True).start()

    def _work(self, env: dict[str, str], cwd: str) -> None:
        while True:
            with self._lock:
                if self._stopped or not self._queue:
                    return
                key = self._queue.pop(0)
            with _BuildLock(self._record(key, ".lock"), blocking=False) as lock:
                if not lock.held or self._recorded(key):
                    continue
                with self._lock:
                    if self._stopped:
                        return
                    try:
                        self._child = _POPEN([_EXECUTABLE, "-m", "mobilevlm_export.cli", *self._args(key)],
                                             env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
                    except OSError as exc:
                        self._save(key, None, "", repr(exc))
                        continue
                try:
                    stdout, stderr = self._child.communicate()
                    code = self._child.returncode
                except BaseException as exc:  # (recorded for the test that needs it)
                    code, stdout, stderr = None, "", repr(exc)
                if not self._stopped:  # (a build ended by stop() is no failure to record: nobody waits for it)
                    self._save(key, code, stdout, stderr)

    def __missing__(self, key: tuple[str, str]):
        with self._lock:
            if key in self._queue:
                self._queue.remove(key)  # not started here yet: made below, unless another process has it
        with _BuildLock(self._record(key, ".lock")):  # (waits for whoever is building it)
            if not self._recorded(key):
                from typer.testing import CliRunner

                from mobilevlm_export.cli import app

                res = CliRunner().invoke(app, self._args(key))
                self._save(key, res.exit_code, res.stdout, res.output)
        failed = self._record(key, ".failed")
        assert not failed.exists(), failed.read_text()
        out = self._out(key)
        self[key] = (out, json.loads(self._record(key, ".json").read_text()))
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


_DEMO_BUILDS: DemoBuilds | None = None  # this process's (made when collection ends)


def _demo_builds_root(config) -> Path:
    """The run's folder of shared builds: under the temporary root the xdist workers share (a worker's own base
    folder is ``popen-gwN`` inside it), or this process's base folder when it runs alone."""
    base = config._tmp_path_factory.getbasetemp()
    return (base.parent if hasattr(config, "workerinput") else base) / "demo_builds"


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
        _DEMO_BUILDS = DemoBuilds(_demo_builds_root(session.config))
        _DEMO_BUILDS.prefetch(keys)


def pytest_sessionfinish(session) -> None:
    if _DEMO_BUILDS is not None:
        _DEMO_BUILDS.stop()


@pytest.fixture(scope="session")
def demo_builds(request):
    builds = _DEMO_BUILDS or DemoBuilds(_demo_builds_root(request.config))
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
