"""A refactor changes no output: the demo's artifacts, built with every shipped recipe, keep the sha256s recorded
before the issue 25 refactor (tests/data/artifact_pins.json). The default run rebuilds the fast onnx-fp32 build;
`make test-slow` every recipe. Compared only where the libraries that write the bytes are the recorded versions
(another torch or onnx writes other bytes for the same computation: skipped, naming the versions)."""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import pytest

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


def _build_and_compare(recipe: str, out: Path) -> None:
    _check_versions()
    target = recipe.split("-")[0]
    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir

    result = build(BuildConfig(ckpt=demo_checkpoint_dir(), out=out, target=target, recipe=recipe, bench=False))
    got = {a["path"]: a["sha256"] for a in result.manifest["artifacts"]}
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
