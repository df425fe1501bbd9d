"""The package as users install it: the built wheel, not this checkout.

- The wheel ships the recipes and device profiles (top-level ``recipes/`` and ``device_profiles/``, package data under
  ``mobilevlm_export/_data/``) and every module of the source tree.
- The device side (JetPack 6: Python 3.10, JetPack 7: Python 3.12): a fresh venv of each, the wheel installed with
  the ``ort`` extra only, no torch, transformers or onnx in it; ``verify`` and ``run`` on the demo's onnx and orin
  builds exit 0 and answer as this (host) venv does. Interpreters are looked up through pyenv, PATH and the usual
  prefixes; a version that is not found is skipped with the reason. The 3.12 venv is ``slow`` (a second install of
  the same wheel: the default run checks 3.10).
- The host toolchain from the wheel (``[build,onnx]``, non-editable, Python 3.11 with the local torch wheel) builds
  the demo for ``onnx`` with the shipped recipes (``slow``: about 2 minutes, most of it installing).

The venvs' pip installs from the package index (numpy, pillow, typer, rich, onnxruntime; for the slow test
transformers, onnx and friends): torch only ever from a local wheel file, never from an index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
from mobilevlm_export.cli import app

REPO = Path(__file__).resolve().parent.parent
SAMPLES = demo_checkpoint_dir().parent / "samples"
QUESTION = (SAMPLES / "1_purple_square.png", "What color is the shape?")
DATA_DIRS = ("recipes", "device_profiles")  # top-level folders shipped as mobilevlm_export/_data/<name>/
DEVICE_PYTHONS = ("3.10", "3.12")  # JetPack 6, JetPack 7
NOT_ON_DEVICE = ("torch", "transformers", "onnx", "safetensors", "sentencepiece")

runner = CliRunner()


def _env() -> dict[str, str]:
    """This process's environment without what points a child Python at this venv or checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(args: list, timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=_env(),
                          cwd=cwd)


def _ok(res: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    assert res.returncode == 0, f"{what}: exit {res.returncode}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


# ---------------------------------------------------------------------------------------------------- interpreters
def _candidates(version: str) -> list[Path]:
    """Where a CPython ``version`` (``"3.10"``) may be: pyenv's versions (newest patch first), PATH, usual prefixes."""
    found: list[Path] = []
    roots = [os.environ.get("PYENV_ROOT")]
    if shutil.which("pyenv"):
        res = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        roots.append(res.stdout.strip() if res.returncode == 0 else None)
    roots.append(str(Path.home() / ".pyenv"))
    for root in dict.fromkeys(r for r in roots if r):
        patch = re.compile(rf"{re.escape(version)}\.(\d+)$")
        versions = [(int(m.group(1)), d) for d in Path(root, "versions").glob(f"{version}.*")
                    if (m := patch.match(d.name))]
        found += [d / "bin" / f"python{version}" for _, d in sorted(versions, reverse=True)]
    which = shutil.which(f"python{version}")
    if which:
        found.append(Path(which))
    found += [Path(p) / f"python{version}" for p in ("/usr/bin", "/usr/local/bin", f"/opt/python/{version}/bin")]
    return list(dict.fromkeys(p for p in found if p.is_file()))


def find_python(version: str) -> Path:
    """A CPython ``version`` that can make a venv with pip (ensurepip), or ``pytest.skip`` saying where it looked."""
    why = []
    for exe in _candidates(version):
        res = subprocess.run([str(exe), "-c", "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60, env=_env())
        if res.returncode == 0 and res.stdout.strip() == version:
            return exe
        why.append(f"{exe}: {(res.stderr.strip().splitlines() or [res.stdout.strip()])[-1]}")
    pytest.skip(f"no usable Python {version} on this machine (looked in pyenv's versions, PATH, /usr/bin, "
                f"/usr/local/bin{'; ' + '; '.join(why) if why else ''})")


def make_venv(python: Path, where: Path) -> Path:
    """A fresh venv (no system site-packages) at ``where``; its python."""
    _ok(_run([python, "-m", "venv", where], timeout=300), f"{python} -m venv")
    return where / "bin" / "python"


# ---------------------------------------------------------------------------------------------------------- wheel
@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The package's wheel, built once from a copy of this working tree (so the build leaves nothing in it)."""
    src = tmp_path_factory.mktemp("wheel_src")
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("mobilevlm_export", *DATA_DIRS):
        shutil.copytree(REPO / name, src / name, ignore=junk)
    out = tmp_path_factory.mktemp("wheel")
    args = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out, src]
    if int(metadata.version("setuptools").split(".")[0]) >= 77:  # pyproject's build-system requires: use it as is
        args.insert(5, "--no-build-isolation")  # (else pip's isolated build environment downloads one)
    _ok(_run(args, timeout=600), "pip wheel")
    (built,) = out.glob("mobilevlm_export-*.whl")
    return built


def test_wheel_ships_recipes_profiles_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for d in DATA_DIRS:
        shipped = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"mobilevlm_export/_data/{d}/")}
        assert shipped == {p.name for p in (REPO / d).glob("*.toml")} and shipped, d
    source = {p.relative_to(REPO).as_posix() for p in (REPO / "mobilevlm_export").rglob("*.py")}
    assert source <= names, f"modules missing from the wheel (pyproject.toml [tool.setuptools] packages?): " \
                            f"{sorted(source - names)}"
    demo = {p.relative_to(REPO).as_posix() for p in (REPO / "mobilevlm_export" / "demo").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"}
    assert demo <= names, sorted(demo - names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    base = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert base and not any(re.search(r"\b(torch|transformers|onnx|executorch)\b", line) for line in base), base
    assert "Requires-Python: >=3.10" in meta


# ---------------------------------------------------------------------------------------------- demo builds (host)
class _DemoBuilds(dict):
    """name -> (DIR, this venv's `run --json` and `verify --json` on it), on first use: the demo built as `make demo`
    builds it, `export` (onnx) and `build --target orin` (its default recipe): conftest's builds, made once per
    session (read-only: nothing here writes into them)."""

    def __init__(self, builds) -> None:
        super().__init__()
        self.builds = builds

    def __missing__(self, name: str):
        out = self.builds.default(name)
        run = runner.invoke(app, ["run", str(out), "--image", str(QUESTION[0]), "--prompt", QUESTION[1], "--json"])
        assert run.exit_code == 0, run.output
        ver = runner.invoke(app, ["verify", str(out), "--json"])
        assert ver.exit_code == 0, ver.output
        self[name] = (out, {"run": json.loads(run.stdout), "verify": json.loads(ver.stdout)})
        return self[name]


@pytest.fixture(scope="module")
def host_answers(demo_builds) -> _DemoBuilds:
    return _DemoBuilds(demo_builds)


# ------------------------------------------------------------------------------------------- the device's install
# JetPack 6's 3.10 (where schema.StrEnum is the package's own) in the default run; 3.12, the same checks in a second
# fresh venv with a second install (about a minute), in `make test-slow`.
@pytest.fixture(scope="module", params=[DEVICE_PYTHONS[0], pytest.param(DEVICE_PYTHONS[1], marks=pytest.mark.slow)],
                ids=lambda v: f"py{v}")
def device_venv(request, wheel, tmp_path_factory) -> Path:
    """A fresh venv of the device's Python with the wheel installed as README's device lines do (``[ort]``: the
    device runs the ONNX graphs on its CPU here, having no TensorRT); its bin/ folder."""
    python = find_python(request.param)
    venv = make_venv(python, tmp_path_factory.mktemp(f"device_py{request.param}") / "venv")
    _ok(_run([venv, "-m", "pip", "install", "--quiet", f"{wheel}[ort]"], timeout=900), "pip install the wheel")
    return venv.parent


def test_device_install_has_no_torch(device_venv, tmp_path):
    probe = ("import importlib.util as u, json, sys\n"
             "from mobilevlm_export.profiles import PROFILES_DIR\nfrom mobilevlm_export.recipes import RECIPES_DIR\n"
             "import mobilevlm_export, mobilevlm_export.cli\n"
             f"print(json.dumps({{'python': '%d.%d' % sys.version_info[:2], 'package': mobilevlm_export.__file__, "
             f"'recipes': sorted(p.name for p in RECIPES_DIR.glob('*.toml')), "
             f"'profiles': sorted(p.name for p in PROFILES_DIR.glob('*.toml')), "
             f"'present': [m for m in {list(NOT_ON_DEVICE)!r} if u.find_spec(m)]}}))")
    info = json.loads(_ok(_run([device_venv / "python", "-c", probe], timeout=120, cwd=tmp_path), "probe").stdout)
    assert info["python"] in DEVICE_PYTHONS
    assert info["present"] == [], f"the device install pulled {info['present']}"
    assert "site-packages" in info["package"] and not info["package"].startswith(str(REPO)), info["package"]
    assert info["recipes"] == sorted(p.name for p in (REPO / "recipes").glob("*.toml"))
    assert info["profiles"] == sorted(p.name for p in (REPO / "device_profiles").glob("*.toml"))


ENUM_PROBE = """
import enum, json
from mobilevlm_export.schema import Precision, StrEnum
class Auto(StrEnum):
    FIRST_ONE = enum.auto()
    Second = enum.auto()
x = Precision.INT4
print(json.dumps([str(x), f"{x}|{x:>6}|{x!r}", "%s" % x, x == "int4", "int4" == x, hash(x) == hash("int4"),
                  isinstance(x, str), Precision("int4") is x, x.value, x.name, json.dumps({x: x}), x.upper(),
                  [m.value for m in Auto], str(Auto.Second), sorted(Precision)[:3], "int4" in {x}]))
"""


def test_device_str_enums_behave_as_on_the_host(device_venv, tmp_path):
    """schema.StrEnum on the device's Python (3.10: the package's own) as ``enum.StrEnum`` on the host's."""
    device = _ok(_run([device_venv / "python", "-c", ENUM_PROBE], timeout=120, cwd=tmp_path), "enum probe")
    host = _ok(_run([sys.executable, "-c", ENUM_PROBE], timeout=120, cwd=REPO), "enum probe (host)")
    assert json.loads(device.stdout) == json.loads(host.stdout)


@pytest.mark.parametrize("build", ["onnx", "orin"])
def test_device_verify_and_run_answer_as_the_host(device_venv, build, host_answers, tmp_path):
    cli, (out, host) = device_venv / "mvlm-export", host_answers[build]
    res = _ok(_run([cli, "verify", out, "--json"], timeout=300, cwd=tmp_path), f"verify {build}")
    ver, host_ver = json.loads(res.stdout)["verification"], host["verify"]["verification"]
    assert ver["passed"] and ver["token_agreement"] == host_ver["token_agreement"]
    assert [r["ids"] for r in ver["e2e"]] == [r["ids"] for r in host_ver["e2e"]]  # every shipped question
    res = _ok(_run([cli, "run", out, "--image", QUESTION[0], "--prompt", QUESTION[1], "--json"], timeout=300,
                   cwd=tmp_path), f"run {build}")
    answer = json.loads(res.stdout)
    assert (answer["text"], answer["output_ids"]) == (host["run"]["text"], host["run"]["output_ids"])
    assert answer["text"] == "purple"


# ------------------------------------------------------------------------------------ the host toolchain from the wheel
def _local_torch_wheel(pin: str) -> Path:
    """The torch wheel file ``torch==VERSION`` resolves to from a local folder (pip's find-links, as `make setup`
    uses, or ``MVLM_TORCH_WHEEL_DIR``) for this Python, or ``pytest.skip``: never a download (a torch from an index
    may be a multi-GB CUDA build)."""
    version = pin.split("==", 1)[1]
    folders = [os.environ.get("MVLM_TORCH_WHEEL_DIR", ""), *os.environ.get("PIP_FIND_LINKS", "").split()]
    res = _run([sys.executable, "-m", "pip", "config", "list"], timeout=60)
    for line in res.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            folders += value.strip("'\"").split()
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for folder in dict.fromkeys(Path(f.removeprefix("file://")) for f in folders if f):
        found = sorted(folder.glob(f"torch-{version}*-{tag}-{tag}-*.whl")) if folder.is_dir() else []
        if found:
            return found[-1]
    pytest.skip(f"no local wheel for {pin} ({tag}) in {[f for f in folders if f]} (set MVLM_TORCH_WHEEL_DIR): "
                "not downloading torch")


@pytest.mark.slow
def test_wheel_with_build_extra_builds_the_demo_with_the_shipped_recipes(wheel, host_answers, tmp_path):
    """A non-editable install of the wheel with ``[build,onnx]`` in a fresh venv of this Python (no system
    site-packages): ``build --target onnx`` on the demo with the wheel's recipe, as this checkout builds it."""
    from mobilevlm_export.schema import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (pin,) = [r for r in extras["build"] if r.startswith("torch==")]
    torch_wheel = _local_torch_wheel(pin)
    python = make_venv(Path(getattr(sys, "_base_executable", sys.executable)), tmp_path / "venv")
    _ok(_run([python, "-m", "pip", "install", "--quiet", torch_wheel], timeout=900), "pip install torch")
    _ok(_run([python, "-m", "pip", "install", "--quiet", torch_wheel, f"{wheel}[build,onnx]"], timeout=1800),
        "pip install the wheel [build,onnx]")
    probe = ("import json, mobilevlm_export, torch\nfrom mobilevlm_export.recipes import RECIPES_DIR\n"
             "print(json.dumps([mobilevlm_export.__file__, str(RECIPES_DIR), torch.__version__]))")
    package, recipes, torch_version = json.loads(_ok(_run([python, "-c", probe], timeout=300, cwd=tmp_path),
                                                     "probe").stdout)
    assert "site-packages" in package and Path(recipes).is_relative_to(Path(package).parent / "_data"), recipes
    assert torch_version.split("+")[0] == pin.split("==")[1]

    out, cli = tmp_path / "demo-onnx", python.parent / "mvlm-export"
    res = _ok(_run([cli, "build", "--target", "onnx", "--no-bench", "-o", out, "--json"], timeout=900, cwd=tmp_path),
              "build --target onnx")
    verification = json.loads(res.stdout)["verification"]
    assert verification["passed"] and verification["token_agreement"] == 1.0
    ref_dir, host = host_answers["onnx"]
    manifest, reference = (json.loads((d / "manifest.json").read_text()) for d in (out, ref_dir))
    assert manifest["recipe"] == reference["recipe"] and manifest["recipe"]["recipe"]["name"] == "onnx-fp32"
    res = _ok(_run([cli, "run", out, "--image", QUESTION[0], "--prompt", QUESTION[1], "--json"], timeout=300,
                   cwd=tmp_path), "run")
    answer = json.loads(res.stdout)
    assert (answer["text"], answer["output_ids"]) == (host["run"]["text"], host["run"]["output_ids"])
