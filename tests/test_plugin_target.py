"""A target defined outside the package (tests/plugin/mvlm_edgebox.py) and registered the way an installed
distribution registers one: a ``.dist-info`` with an ``entry_points.txt`` in the ``mobilevlm_export.targets``
group, on ``sys.path`` (what ``pip install`` leaves in site-packages). A fresh process lists it; through the CLI
it builds the demo, verifies it and answers from it; no file of the package knows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobilevlm_export.cli import app
from mobilevlm_export.targets import registry

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


@pytest.fixture
def plugin_on_path(installed, monkeypatch):
    """The plugin importable and its distribution found, in this process (the registry read afresh)."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(installed))
    registry.cache_clear()
    yield
    registry.cache_clear()


def test_a_fresh_process_lists_the_plugin(installed):
    res = cli("targets", "--json", site=installed)
    assert res.returncode == 0, res.stderr
    listed = {t["name"]: t for t in json.loads(res.stdout)["targets"]}
    assert {"onnx", "orin", "snapdragon", "edgebox"} <= listed.keys()
    assert listed["edgebox"]["module"] == "mvlm_edgebox" and listed["edgebox"]["default_recipe"] == "edgebox-fp32"


def test_a_plugin_target_builds_verifies_and_runs(plugin_on_path, tmp_path, image_file, monkeypatch):
    runner = CliRunner()
    out = tmp_path / "edgebox"
    res = runner.invoke(app, ["build", "--target", "edgebox", "-o", str(out), "--no-bench", "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "edgebox" and manifest["recipe"]["edgebox"] == {"max_context": 256,
                                                                                 "intra_op_threads": 1}
    assert manifest["runtime_files"] == ["edgebox.json"]  # the target's own file, recorded as data
    assert "edgebox.json" in {a["path"] for a in manifest["artifacts"]}
    assert set(manifest["graphs"]) == {"image_encoder", "embed_tokens", "decoder"}
    assert manifest["verification"]["passed"] is True

    res = runner.invoke(app, ["verify", str(out), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)["verification"]
    assert report["passed"] and report["token_agreement"] == 1.0 and report["backend"] == "onnxruntime"

    res = runner.invoke(app, ["run", str(out), "--image", str(image_file), "--prompt", "What color is the shape?",
                              "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["backend"] == "onnxruntime"

    # without the plugin installed (a fresh process without its distribution), its builds are refused in one line
    res = cli("verify", str(out))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "manifest.json: target must be a registered target" in res.stderr and '"edgebox"' in res.stderr

    # the file the target's runtime reads is checked like every artifact: listed, with its sha256
    (out / "edgebox.json").write_text("{}")
    res = runner.invoke(app, ["verify", str(out)])
    assert res.exit_code == 2 and "edgebox.json: corrupt artifact" in res.stderr, res.output


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
