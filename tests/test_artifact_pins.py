"""A refactor changes no output: the demo's artifacts, built with every shipped recipe, keep the sha256s recorded
before the issue 25 refactor (tests/data/artifact_pins.json). The default run rebuilds the fast onnx-fp32 build;
`make test-slow` every recipe. Compared only where the libraries that write the bytes are the recorded versions
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
DEFAULT_RUN = ("onnx-fp32",)


def _version(lib: str) -> str | None:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return None


def _check_versions() -> None:
    differ = [f"{lib} {_version(lib)} (pinned with {v})" for lib, v in PINS["versions"].items() if _version(lib) != v]
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


def _build_and_compare(recipe: str, out: Path) -> None:
    _check_versions()
    target = recipe.split("-")[0]
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    build(BuildConfig(ckpt=demo_checkpoint_dir(), out=out, target=target, recipe=recipe, bench=False))
    got = pins_of(out)
    want = PINS["recipes"][recipe]
    changed = sorted(p for p in want.keys() & got.keys() if want[p] != got[p])
    assert got.keys() == want.keys() and not changed, (
        f"{recipe}: artifacts differ from those recorded at {PINS['recorded_at']}: changed {changed}, "
        f"new {sorted(got.keys() - want.keys())}, gone {sorted(want.keys() - got.keys())}")


def test_every_shipped_recipe_is_pinned():
    shipped = {p.stem for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.toml")}
    assert shipped == PINS["recipes"].keys()


@pytest.mark.parametrize("recipe", DEFAULT_RUN)
def test_artifacts_unchanged(recipe, tmp_path):
    _build_and_compare(recipe, tmp_path / recipe)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(set(PINS["recipes"]) - set(DEFAULT_RUN)))
def test_artifacts_unchanged_every_recipe(recipe, tmp_path):
    _build_and_compare(recipe, tmp_path / recipe)
