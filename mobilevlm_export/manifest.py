"""The build record, ``manifest.json``: artifacts with sha256 and size, contracts, versions, recipe, results."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

from mobilevlm_export import __version__
from mobilevlm_export.errors import UserError

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: one pipeline for every target (``target``, typed recipe, contract ranges)
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnxsim", "executorch", "torchao",
             "tensorrt", "numpy", "safetensors", "tokenizers")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"mobilevlm_export": __version__, "python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_entries(root: Path) -> list[dict]:
    """Every file under ``root`` but the manifest, with sha256 and size, in a stable order."""
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256(p), "bytes": p.stat().st_size}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST]


def write_manifest(root: Path, manifest: dict) -> None:
    manifest = {"format_version": FORMAT_VERSION, **manifest, "artifacts": artifact_entries(root)}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")


def read_manifest(root: Path, check: bool = True) -> dict:
    """Read DIR/manifest.json; with ``check``, every artifact must exist and match its sha256 (``UserError``)."""
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise UserError(f"{root}: no such artifact directory")
    if not path.is_file():
        raise UserError(f"{path}: missing (not a mobilevlm_export artifact directory)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION} "
                        "(rebuild it with this version)")
    if check:
        for entry in manifest.get("artifacts", []):
            f = Path(root) / entry["path"]
            if not f.is_file():
                raise UserError(f"{f}: artifact listed in the manifest is missing")
            if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
                raise UserError(f"{f}: corrupt artifact (sha256 does not match the manifest)")
    return manifest


def update_manifest(root: Path, **fields) -> dict:
    """Set top-level fields (e.g. verification results) and re-record the artifacts."""
    manifest = read_manifest(root, check=False)
    manifest.update(fields)
    manifest.pop("artifacts", None)
    manifest.pop("format_version", None)
    write_manifest(root, manifest)
    return read_manifest(root, check=False)
