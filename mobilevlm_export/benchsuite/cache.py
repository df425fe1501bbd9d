"""The suite's cache under ``--out``: checkpoints and builds, each in a directory named by a hash of what made it.

An entry's key is the sha256 of a JSON record: for a build, the recipe's text, the checkpoint's shape
(``shape_record``), the package's version, a digest of its source files and the library versions (``identity``),
and the builder's own settings. The record and the key are written next to the build (``KEY_FILE``), with what
building took and where (``BUILD_FILE``: wall seconds, peak RSS, exit code, the git commit it was built at). An
entry is built into a ``.partial`` sibling and renamed when complete, so an interrupted suite resumes where it
stopped and a finished build is never redone for the same inputs; a change of any input makes a new entry beside
the old one (old entries are left for the user to delete).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import cache
from pathlib import Path

from mobilevlm_export.errors import UserError

KEY_FILE = "suite-key.json"
BUILD_FILE = "suite-build.json"
SHAPES = ("demo", "tiny", "1.7b")
PACKAGE = Path(__file__).resolve().parent.parent


def digest(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def key_of(record: dict) -> str:
    return digest(json.dumps(record, sort_keys=True, default=str))


# package data a build reads besides its checkpoint: the sample pairs its golden data and calibration come from
BUILD_DATA = ("demo/samples",)


@cache
def source_digest() -> str:
    """sha256 over the package's Python sources and ``BUILD_DATA`` (path and content; this suite's own modules
    left out, as they make no build)."""
    h = hashlib.sha256()
    files = [*PACKAGE.rglob("*.py"), *(p for d in BUILD_DATA for p in (PACKAGE / d).rglob("*") if p.is_file())]
    for p in sorted(files):
        rel = p.relative_to(PACKAGE).as_posix()
        if rel.startswith("benchsuite/"):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def suite_digest(module: str) -> str:
    """sha256 of one of this suite's own modules that makes something (``peers``, ``worker``): a change to it
    remakes what it made."""
    return digest((PACKAGE / "benchsuite" / f"{module}.py").read_bytes())


@cache
def identity() -> dict:
    """What of the package a build depends on, for its key: the package's version, a digest of its sources
    (which changes with any edit of its code, committed or not) and the versions of the libraries it builds with.
    Not the git commit: a commit that changes no source (the suite's own BENCHMARKS.md, say) would otherwise
    throw away hours of builds; the commit is recorded beside each build instead (``provenance``)."""
    from mobilevlm_export import __version__
    from mobilevlm_export.manifest import versions

    libraries = {k: v for k, v in versions().items() if k != "mobilevlm_export"}
    return {"version": __version__, "source_sha256": source_digest(), "libraries": libraries}


def provenance() -> dict:
    """Where a build was made: the git commit and whether the tree had uncommitted changes, and when."""
    from datetime import datetime, timezone

    from mobilevlm_export.bench import source_state

    commit, dirty = source_state()
    return {"commit": commit, "dirty": dirty, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def synthetic_dims(shape: str):
    from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, TINY

    return {"tiny": TINY, "1.7b": MOBILEVLM_V2_1_7B}[shape]


# how a synthetic checkpoint is written (checkpoint.synthetic.write_checkpoint's arguments besides the dims)
SYNTHETIC = {"projector": "ldpnetv2", "shards": 2, "dtype": "float16", "seed": 0}


def shape_record(shape: str) -> dict:
    """What identifies the checkpoint of ``shape``: the bundled demo checkpoint's files (it may be retrained),
    or a synthetic checkpoint's dims, writer arguments, the writer's source and torch's version (its random weights
    are made from a fixed seed by torch's generator)."""
    if shape == "demo":
        from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

        root = demo_checkpoint_dir()
        return {"shape": "demo", "files": {p.relative_to(root).as_posix(): digest(p.read_bytes())
                                           for p in sorted(root.rglob("*")) if p.is_file()}}
    if shape not in SHAPES:
        raise UserError(f"--shape {shape}: unknown (known: {', '.join(SHAPES)})")
    from importlib.metadata import version

    return {"shape": shape, "dims": asdict(synthetic_dims(shape)), **SYNTHETIC, "torch": version("torch"),
            "writer": digest((PACKAGE / "checkpoint" / "synthetic.py").read_bytes())}


def _finished(final: Path, key: str) -> dict | None:
    """The info of the complete entry ``final`` of ``key``; None when it is absent, incomplete or of another key."""
    if (final / KEY_FILE).is_file() and (final / BUILD_FILE).is_file():
        if json.loads((final / KEY_FILE).read_text()).get("key") == key:
            return json.loads((final / BUILD_FILE).read_text())
    return None


def entry(parent: Path, name: str, record: dict, make: Callable[[Path], dict], log=print,
          doing: str = "building") -> tuple[Path, dict]:
    """The cached entry ``parent/<name>-<key[:12]>`` of ``record``: made by ``make(directory) -> info`` into a
    ``.partial`` sibling unless complete (logged as ``doing``). Suite processes run side by side (``--build-only``
    splits) make each entry once: the maker holds ``.<entry>.lock`` (flock) while it builds, and another process
    that needs the same entry waits for it, then finds it complete. Returns (the entry's directory, its info with
    ``"cached"``, ``"key"`` and the making's ``"wall_s"``)."""
    import fcntl

    key = key_of(record)
    final = parent / f"{name}-{key[:12]}"
    done = _finished(final, key)
    if done is not None:
        return final, {**done, "cached": True, "key": key}
    parent.mkdir(parents=True, exist_ok=True)
    with open(parent / f".{final.name}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another suite process {doing} {name} ({parent.name}, {key[:12]}) ...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        done = _finished(final, key)  # made while this process waited
        if done is not None:
            return final, {**done, "cached": True, "key": key}
        partial = parent / f".{final.name}.partial"
        for stale in (partial, final):  # an interrupted making, or an entry of another key under this name
            if stale.exists():
                shutil.rmtree(stale)
        partial.mkdir(parents=True)
        log(f"{doing} {name} ({parent.name}, {key[:12]}) ...")
        t0 = time.perf_counter()
        info = make(partial)
        info.setdefault("wall_s", round(time.perf_counter() - t0, 1))
        info["provenance"] = provenance()
        (partial / BUILD_FILE).write_text(json.dumps(info, indent=1, default=str) + "\n")
        (partial / KEY_FILE).write_text(json.dumps({"key": key, "record": record}, indent=1, default=str) + "\n")
        partial.rename(final)
    return final, {**info, "cached": False, "key": key}
