"""The build record, ``manifest.json``: artifacts with sha256 and size, contracts, versions, recipe, results."""

from __future__ import annotations

import json
import math
import os
import platform
import posixpath
from dataclasses import fields
from importlib import metadata
from pathlib import Path, PurePosixPath

from mobilevlm_export import __version__
from mobilevlm_export.errors import UserError
from mobilevlm_export.files import sha256, write_file_atomic
from mobilevlm_export.graphs.contracts import GraphContract, ModelDims
from mobilevlm_export.schema import (
    BOOL,
    COUNT,
    INT,
    NUMBER,
    OBJECT,
    RGB,
    SHA256,
    STR,
    Each,
    Kind,
    check_spec,
    is_int,
    is_number,
    item_key,
    short_json,
)

MANIFEST = "manifest.json"
TOOL = "mobilevlm_export"  # the manifest's "tool": marks a directory as a build of ours
FORMAT_VERSION = 2  # 2: one pipeline for every target (``target``, typed recipe, contract ranges)
LIBRARIES = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript", "onnxsim", "executorch", "torchao",
             "tensorrt", "numpy", "safetensors", "tokenizers")
TOKENIZER_DIR = "tokenizer"
GOLDEN_NPZ, E2E_JSON = "golden/golden.npz", "golden/e2e.json"  # the reference data verify reads
GRAPH_FILE_KEYS = ("file", "engine_onnx", "engine")  # the files of a graph record the runtime may open
# the graphs the runtime pipeline needs: a fused image encoder, or a vision encoder + projector
GRAPH_SETS = (("image_encoder", "embed_tokens", "decoder"), ("vision_encoder", "projector", "embed_tokens", "decoder"))
COST_KEYS = ("decoder_bytes_per_token", "decoder_ops_per_token", "vision_ops")
CONTRACT_DTYPES = ("float32", "float16", "int64", "int32", "int8", "uint8", "bool")  # numpy names


def versions() -> dict[str, str]:
    out = {"mobilevlm_export": __version__, "python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def artifact_files(root: Path) -> list[Path]:
    """Every file under ``root`` but the manifest, in a stable order: what the manifest's ``artifacts`` lists."""
    return [p for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != MANIFEST]


def artifact_entries(root: Path) -> list[dict]:
    """Every artifact under ``root`` (``artifact_files``) with sha256 and size."""
    return [{"path": p.relative_to(root).as_posix(), "sha256": sha256(p), "bytes": p.stat().st_size}
            for p in artifact_files(root)]


def write_manifest(root: Path, manifest: dict, artifacts: list[dict] | None = None) -> None:
    """Write DIR/manifest.json as strict JSON (non-finite numbers recorded as null) with DIR's artifacts, atomically
    (``trt-build`` rewrites the manifest of a finished bundle in place: a kill never leaves half of one)."""
    artifacts = artifact_entries(root) if artifacts is None else artifacts
    manifest = {"format_version": FORMAT_VERSION, **manifest, "artifacts": artifacts}
    text = json.dumps(finite(manifest), indent=2, default=str, allow_nan=False) + "\n"
    write_file_atomic(Path(root) / MANIFEST, text.encode())


def finite(value):
    """``value`` with every NaN or infinity replaced by None, in nested dicts, lists and tuples (a metric of an
    output that is not finite, a shape-mismatch severity): JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def read_manifest(root: Path, check: bool = True) -> dict:
    """Read DIR/manifest.json and check its form (``check_manifest``); with ``check``, every artifact must also
    exist and match its size and sha256. ``UserError`` names the file and the key at fault."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise UserError(f"{root}: no such artifact directory")
    if not path.is_file():
        raise UserError(f"{path}: missing (not a mobilevlm_export artifact directory)")
    manifest = _parse(path)
    check_manifest(manifest, root)
    if check:
        check_artifacts(root, manifest["artifacts"])
    return manifest


def update_manifest(root: Path, rehash: bool = True, **fields) -> dict:
    """Set top-level fields (e.g. verification results) and re-record the artifacts. ``rehash=False``: keep the
    recorded sha256s when the same files with the same sizes are there (the build's second write, after verify and
    bench, which write no artifact: each artifact is hashed once)."""
    manifest = read_manifest(root, check=False)
    manifest.update(fields)
    recorded = manifest.pop("artifacts", None)
    manifest.pop("format_version", None)
    keep = None
    if not rehash and recorded is not None:
        now = [(p.relative_to(root).as_posix(), p.stat().st_size) for p in artifact_files(root)]
        keep = recorded if now == [(a["path"], a["bytes"]) for a in recorded] else None
    write_manifest(root, manifest, keep)
    return read_manifest(root, check=False)


# ---------------------------------------------------------------------------------------------------------------
# the manifest's form: a declarative spec checked by ``schema.check_spec``


def _is_contract(value) -> bool:
    """What ``GraphContract.from_dict`` reads, with integer ranges, tensor dtypes of ``CONTRACT_DTYPES``, and each
    input's and output's dims an integer >= 0 or symbols of the ranges (``past+seq``: each part)."""
    try:
        c = GraphContract.from_dict(value)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    specs = (*c.inputs, *c.outputs)
    return (all(is_int(v) for r in c.ranges.values() for v in (r.min, r.opt, r.max))
            and all(isinstance(t.name, str) and t.dtype in CONTRACT_DTYPES for t in (*specs, *c.state))
            and all((is_int(d) and d >= 0) or (isinstance(d, str) and all(s in c.ranges for s in d.split("+")))
                    for t in specs for d in t.dims))


CONTRACT = Kind(_is_contract, "a graph contract: typed inputs and outputs, an integer range per symbolic dim")
COSTS = Kind(lambda v: isinstance(v, dict) and sorted(v) == sorted(COST_KEYS) and
             all(is_number(x) and x > 0 for x in v.values()), f"an object of positive {', '.join(COST_KEYS)}")
STRINGS = Kind(lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
RECORD = Kind(lambda v: v is None or isinstance(v, dict), "an object or null")
PROFILE = Kind(lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name", ""), str)),
               "null or an object whose name is a string")

# a name ending in "?" is optional
MANIFEST_SPEC = {
    "target": Kind(lambda v: isinstance(v, str), "a registered target's name"),  # registered: checked on open
    "graphs": Each({"file": STR, "contract": CONTRACT, "engine_onnx?": STR, "engine?": STR, "method?": STR}, dict),
    "model": {"dims": {f.name: COUNT for f in fields(ModelDims)}, "eos_token_id": INT,
              "preprocess": {"crop_size": COUNT, "shortest_edge": COUNT, "mean": RGB, "std": RGB,
                             "rescale_factor": NUMBER, "resample": COUNT, "pad_to_square": BOOL}},
    "recipe": OBJECT,
    "artifacts": Each({"path": STR, "sha256": SHA256, "bytes": COUNT}),
    "compile": OBJECT,
    "verification?": RECORD,
    "profile?": PROFILE,
    "costs?": COSTS,
    "runtime_files?": STRINGS,  # the target's own files its runtime reads (``Target.runtime_files``)
}


def _parse(path: Path) -> dict:
    """The manifest's JSON object: valid JSON, finite numbers, this format version."""
    try:
        manifest = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: the top level must be an object (is {short_json(manifest)})")
    key = _nonfinite(manifest)
    if key is not None:
        raise UserError(f"{path}: {key} is NaN or infinite (a manifest holds finite numbers only)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version is {short_json(manifest.get('format_version'))}, expected "
                        f"{FORMAT_VERSION} (rebuild it with this version)")
    return manifest


def _nonfinite(value, key: str = "") -> str | None:
    """The key of the first NaN or infinity in the parsed JSON ``value``, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return key or "the top level"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        found = _nonfinite(v, item_key(key, k))
        if found is not None:
            return found
    return None


def check_manifest(manifest: dict, root: Path) -> None:
    """``UserError`` naming DIR/manifest.json and the key unless the manifest fits ``MANIFEST_SPEC``, its recipe
    is a valid recipe, its graphs are a set the runtime runs (the decoder's ranges sizing its KV cache), and
    every file the runtime opens lies inside DIR and is listed in ``artifacts`` (whose paths lie inside DIR too)."""
    source = str(Path(root) / MANIFEST)
    check_spec(manifest, MANIFEST_SPEC, source)
    if not any(set(names) <= manifest["graphs"].keys() for names in GRAPH_SETS):
        raise UserError(f"{source}: graphs holds {', '.join(manifest['graphs'])}; the runtime needs "
                        + " or ".join(" + ".join(names) for names in GRAPH_SETS))
    decoder = GraphContract.from_dict(manifest["graphs"]["decoder"]["contract"])
    cache = "seq" if decoder.state else "past"  # the KV session's length: a static cache's, a dynamic past's
    if cache not in decoder.ranges:
        raise UserError(f"{source}: graphs.decoder.contract.ranges.{cache} is missing (it sizes the KV cache)")
    needed = [(label, _inside(root, rel, label, source)) for label, rel in runtime_files(manifest, root)]
    listed = {_inside(root, e["path"], f"artifacts[{i}].path = {e['path']!r}", source)
              for i, e in enumerate(manifest["artifacts"])}
    for label, path in needed:
        if path not in listed:
            raise UserError(f"{source}: {label} is not listed in artifacts (every file the runtime opens must be, "
                            "with its sha256)")


def runtime_files(manifest: dict, root: Path) -> list[tuple[str, str]]:
    """(what names it, path relative to DIR) of every file the runtime may open: each graph record's files
    (``graphs.decoder.file = 'graphs/decoder.onnx'``), the golden data, everything under ``tokenizer/`` and the
    target's own files its build recorded (``runtime_files``)."""
    files = [(f"graphs.{name}.{k} = {g[k]!r}", g[k]) for name, g in manifest["graphs"].items()
             for k in GRAPH_FILE_KEYS if k in g]
    files += [(rel, rel) for rel in (GOLDEN_NPZ, E2E_JSON, *manifest.get("runtime_files", ()))]
    for dirpath, dirnames, filenames in os.walk(Path(root) / TOKENIZER_DIR):
        entries = [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]  # links: not followed
        files += [(rel, rel) for rel in ((Path(dirpath) / n).relative_to(root).as_posix() for n in sorted(entries))]
    return files


def _inside(root: Path, rel: str, label: str, source: str) -> str:
    """``rel`` normalized, when it names a path inside ``root``: relative, without ``..``, not leaving ``root``
    through a link. ``UserError`` naming ``label`` otherwise."""
    why = None
    if not rel or "\x00" in rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        why = f"must be a relative path inside {root}, without '..'"
    else:
        try:
            real = (Path(root) / rel).resolve()
            if not real.is_relative_to(Path(root).resolve()):
                why = f"resolves to {real}, outside {root} (through a link)"
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            why = f"cannot be resolved ({exc})"
    if why:
        raise UserError(f"{source}: {label} {why}")
    return posixpath.normpath(rel)


def check_artifacts(root: Path, artifacts: list[dict]) -> None:
    """Every artifact exists with its recorded size and sha256 (``UserError`` naming the file)."""
    for entry in artifacts:
        f = Path(root) / entry["path"]
        try:
            if not f.is_file():
                raise UserError(f"{f}: artifact listed in the manifest is missing")
            if f.stat().st_size != entry["bytes"] or sha256(f) != entry["sha256"]:
                raise UserError(f"{f}: corrupt artifact (sha256 does not match the manifest)")
        except OSError as exc:
            raise UserError(f"{f}: cannot read the artifact ({exc.strerror or exc})") from None
