"""A target defined outside the package (tests/plugin/mvlm_edgebox.py) and registered the way an installed
distribution registers one: a ``.dist-info`` with an ``entry_points.txt`` in the ``mobilevlm_export.targets``
group, on ``sys.path`` (what ``pip install`` leaves in site-packages). Through the CLI, in fresh processes, it
builds the demo, verifies it and answers from it; no file of the package knows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "mobilevlm_export"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A site directory holding the plugin distribution's metadata (its module stays in tests/plugin)."""
    site = tmp_path_factory.mktemp("site")
    info = site / "mvlm_edgebox-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mvlm-edgebox\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mobilevlm_export.targets]\nedgebox = mvlm_edgebox:EdgeBoxTarget\n")
    return site


def cli(*args: str, site: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    paths = [str(site), str(PLUGIN)] if site else []
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-c", "import sys; from mobilevlm_export.cli import main; "
                           "sys.argv[0] = 'mvlm-export'; main()", *args],
                          capture_output=True, text=True, env=env, timeout=900)


def test_the_plugin_lives_outside_the_package():
    assert not (PLUGIN / "mvlm_edgebox.py").resolve().is_relative_to(PACKAGE_DIR)
    assert not any("edgebox" in p.read_text() for p in PACKAGE_DIR.rglob("*.py"))


def test_a_plugin_target_builds_verifies_and_runs(installed, tmp_path, image_file):
    res = cli("targets", "--json", site=installed)
    assert res.returncode == 0, res.stderr
    listed = {t["name"]: t for t in json.loads(res.stdout)["targets"]}
    assert {"onnx", "orin", "snapdragon", "edgebox"} <= listed.keys()
    assert listed["edgebox"]["module"] == "mvlm_edgebox" and listed["edgebox"]["default_recipe"] == "edgebox-fp32"

    out = tmp_path / "edgebox"
    res = cli("build", "--target", "edgebox", "-o", str(out), "--no-bench", "--json", site=installed)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "edgebox" and manifest["recipe"]["edgebox"] == {"max_context": 256,
                                                                                 "intra_op_threads": 1}
    assert manifest["runtime_files"] == ["edgebox.json"]  # the target's own file, recorded as data
    assert "edgebox.json" in {a["path"] for a in manifest["artifacts"]}
    assert set(manifest["graphs"]) == {"image_encoder", "embed_tokens", "decoder"}
    assert manifest["verification"]["passed"] is True

    res = cli("verify", str(out), "--json", site=installed)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)["verification"]
    assert report["passed"] and report["token_agreement"] == 1.0 and report["backend"] == "onnxruntime"

    res = cli("run", str(out), "--image", str(image_file), "--prompt", "What color is the shape?", "--json",
              site=installed)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["backend"] == "onnxruntime"

    # without the plugin installed, its builds are refused in one line naming the manifest's target
    res = cli("verify", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "manifest.json: target must be a registered target" in res.stderr and '"edgebox"' in res.stderr

    # the file the target's runtime reads is checked like every artifact: listed, with its sha256
    (out / "edgebox.json").write_text("{}")
    res = cli("verify", str(out), site=installed)
    assert res.returncode == 2 and "edgebox.json: corrupt artifact" in res.stderr, res.stderr


def test_a_broken_plugin_is_named(installed, tmp_path):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mobilevlm_export.targets]\nonnx = mvlm_edgebox:EdgeBoxOptions\n")
    res = cli("targets", site=site)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "entry point onnx = mvlm_edgebox:EdgeBoxOptions" in res.stderr and "not a mobilevlm_export target" in \
        res.stderr
