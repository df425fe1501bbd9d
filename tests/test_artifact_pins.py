"""A refactor changes no output: the demo's artifacts, built with every shipped recipe, keep the sha256s recorded
before the issue 25 refactor (tests/data/artifact_pins.json). The default run checks the session's shared demo builds
(conftest: six of the eight recipes, built once for every test module); `make test-slow` builds every recipe
afresh. Compared only where the libraries that write the bytes are the recorded versions
(another torch or onnx writes other bytes for the same computation: skipped, naming the versions).

An ONNX graph is compared without the source locations torch.onnx records per node (file paths and line numbers
of the code that made it, which the refactor moves by design and which builds since drop:
``backends.onnx.drop_source_locations``); every other file, and everything else in a graph, byte for byte."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest

from mobilevlm_export.files import sha256
from mobilevlm_export.pipeline import BuildConfig, build

PINS = json.loads((Path(__file__).parent / "data" / "artifact_pins.json").read_text())
# recipe -> the conftest fixture of the session's shared build of it
SHARED = {"onnx-fp32": "demo_build_onnx", "orin-int4": "demo_build_orin", "orin-fp16": "demo_build_orin_fp16",
          "orin-int8": "demo_build_orin_int8", "snapdragon-8da4w": "demo_build_snapdragon",
          "snapdragon-fp32": "demo_build_snapdragon_fp32"}


def _version(lib: str) -> str | None:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None


def versions_differ() -> list[str]:
    """The libraries whose installed version is not the one the pins were recorded with."""
    return [f"{lib} {_version(lib)} (pinned with {v})" for lib, v in PINS["versions"].items() if _version(lib) != v]


def _check_versions() -> None:
    differ = versions_differ()
    if differ:
        pytest.skip("artifact bytes were recorded with other library versions: " + ", ".join(differ))


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes; of an ONNX graph, of its serialization without source locations."""
    if path.suffix != ".onnx":
        return sha256(path)
    import onnx

    from mobilevlm_export.backends.onnx import drop_source_locations

    model = onnx.load(str(path), load_external_data=False)
    drop_source_locations(model)
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def pins_of(root: Path) -> dict[str, str]:
    """``{artifact path: content_sha256}`` of a build directory (every file its manifest lists)."""
    manifest = json.loads((root / "manifest.json").read_text())
    return {a["path"]: content_sha256(root / a["path"]) for a in manifest["artifacts"]}


def _compare(recipe: str, out: Path) -> None:
    got = pins_of(out)
    want = PINS["recipes"][recipe]
    changed = sorted(p for p in want.keys() & got.keys() if want[p] != got[p])
    assert got.keys() == want.keys() and not changed, (
        f"{recipe}: artifacts differ from those recorded at {PINS['recorded_at']}: changed {changed}, "
        f"new {sorted(got.keys() - want.keys())}, gone {sorted(want.keys() - got.keys())}")


def test_every_shipped_recipe_is_pinned():
    assert set(SHARED) <= PINS["recipes"].keys()
    shipped = {p.stem for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")}
    assert shipped == PINS["recipes"].keys()


@pytest.mark.parametrize("recipe", sorted(SHARED))
def test_shared_demo_builds_unchanged(recipe, request):
    _check_versions()
    _compare(recipe, request.getfixturevalue(SHARED[recipe]))


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(PINS["recipes"]))
def test_artifacts_unchanged_every_recipe(recipe, tmp_path):
    _check_versions()
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    out = tmp_path / recipe
    build(BuildConfig(ckpt=demo_checkpoint_dir(), out=out, target=recipe.split("-")[0], recipe=recipe, bench=False))
    _compare(recipe, out)
