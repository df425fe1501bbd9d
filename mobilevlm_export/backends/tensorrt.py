"""TensorRT backend: engine build plans made from the graph contracts, the equivalent ``trtexec`` script, and an
engine builder and runner on the real ``tensorrt`` Python API.

The plan (``build_plan.json``) lists per graph the ONNX file TensorRT parses, the engine to write, whether the
network is strongly typed (Q/DQ graphs: the ONNX types decide every precision) or built with the FP16 flag, the
workspace limit, and its optimization profiles, each input's min/opt/max shape computed from the contract's dim
ranges. The decoder gets two profiles, prefill (past = 0, seq up to the longest prompt) and decode (seq = 1, past
up to the context), because one profile over both makes TensorRT tune for shapes neither phase runs.

``build_engines.sh`` is the same plan as ``trtexec`` commands in trtexec 10.x's option grammar: an engine of
several profiles gives each one ``--profile=N`` directly followed by its ``--minShapes/--optShapes/--maxShapes``
(trtexec refuses a repeated shape flag without ``--profile``); a one-profile engine passes its one group alone,
which trtexec makes profile 0. ``tests/trtexec_grammar.py`` checks the script against trtexec 10.3's parser.

Building needs ``tensorrt`` (JetPack's python3-libnvinfer on a Jetson) and a CUDA device, imported inside the
function, so this module imports without them; running engines is ``tensorrt_runtime``'s. Nothing here imports
torch.
"""

from __future__ import annotations

import json
import posixpath
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobilevlm_export.backends.tensorrt_runtime import import_tensorrt
from mobilevlm_export.errors import CheckFailed, UserError
from mobilevlm_export.graphs.contracts import DimRange, GraphContract

PLAN = "build_plan.json"
SCRIPT = "build_engines.sh"
ENGINES_DIR = "engines"
TIMING_CACHE = "engines/timing.cache"
MIB = 1 << 20


@dataclass(frozen=True)
class ProfileShapes:
    """One optimization profile: input name -> {"min", "opt", "max"} shapes."""

    name: str
    shapes: dict[str, dict[str, list[int]]]


@dataclass
class EnginePlan:
    graph: str
    onnx: str    # relative to DIR: the file TensorRT parses
    engine: str  # relative to DIR: the engine to write
    strongly_typed: bool
    fp16: bool   # BuilderFlag.FP16 (weakly typed networks only)
    profiles: list[ProfileShapes]
    contract: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EnginePlan:
        return cls(**{**d, "profiles": [ProfileShapes(**p) for p in d["profiles"]]})


@dataclass
class BuildPlan:
    tensorrt: str
    device: str
    workspace_bytes: int
    engines: list[EnginePlan] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"tensorrt": self.tensorrt, "device": self.device, "workspace_bytes": self.workspace_bytes,
                "engines": [e.to_dict() for e in self.engines]}

    @classmethod
    def from_dict(cls, d: dict) -> BuildPlan:
        return cls(d["tensorrt"], d["device"], int(d["workspace_bytes"]),
                   [EnginePlan.from_dict(e) for e in d["engines"]])


def decoder_profiles(contract: GraphContract) -> list[tuple[str, dict[str, DimRange]]]:
    """The decoder's two profiles from its ranges: prefill (past 0, seq over the prompt range) and decode (seq 1,
    past over the cache range)."""
    r = contract.ranges
    return [("prefill", {**r, "past": DimRange(0, 0, 0)}),
            ("decode", {**r, "seq": DimRange(1, 1, 1)})]


def profile_shapes(contract: GraphContract, name: str, ranges: dict[str, DimRange]) -> ProfileShapes:
    """Each input's min/opt/max shape under ``ranges`` (a ``past+seq`` dim sums its parts)."""
    sizes = {k: {s: getattr(r, k) for s, r in ranges.items()} for k in ("min", "opt", "max")}
    return ProfileShapes(name, {t.name: {k: list(t.shape(sizes[k])) for k in sizes} for t in contract.inputs})


def engine_plan(contract: GraphContract, onnx_file: str, strongly_typed: bool) -> EnginePlan:
    profiles = decoder_profiles(contract) if contract.name == "decoder" else [("default", contract.ranges)]
    return EnginePlan(contract.name, onnx_file, f"{ENGINES_DIR}/{contract.name}.engine", strongly_typed,
                      not strongly_typed, [profile_shapes(contract, n, r) for n, r in profiles], contract.to_dict())


def write_plan(plan: BuildPlan, root: Path) -> None:
    (root / PLAN).write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
    (root / SCRIPT).write_text(trtexec_script(plan))
    (root / SCRIPT).chmod(0o755)


def read_plan(root: Path) -> BuildPlan:
    path = Path(root) / PLAN
    if not path.is_file():
        raise UserError(f"{root}: no {PLAN} (not an orin bundle)")
    try:
        return BuildPlan.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a valid build plan ({type(exc).__name__}: {exc})") from None


def _dims(shape: list[int]) -> str:
    return "x".join(str(d) for d in shape)


def trtexec_command(e: EnginePlan, workspace_bytes: int) -> list[str]:
    """``trtexec`` arguments equivalent to ``build_engine(e)``. Each profile is one group of
    ``--minShapes/--optShapes/--maxShapes``; with more than one profile each group follows its ``--profile=N``
    (trtexec 10.x takes the shape flags in the three arguments after ``--profile=N`` as profile N, and refuses a
    repeated shape flag outside such a group). The workspace is given in MiB, or in bytes when not whole MiB."""
    pool = f"{workspace_bytes // MIB}M" if workspace_bytes % MIB == 0 else f"{workspace_bytes}B"
    cmd = ["trtexec", f"--onnx={e.onnx}", f"--saveEngine={e.engine}", f"--timingCacheFile={TIMING_CACHE}",
           f"--memPoolSize=workspace:{pool}", "--skipInference"]
    cmd.append("--stronglyTyped" if e.strongly_typed else "--fp16")
    for i, p in enumerate(e.profiles):
        for name in p.shapes:
            if any(c in name for c in ",'*"):
                raise UserError(f"{e.graph}: input {name!r} cannot be named in a trtexec shape spec (trtexec splits "
                                "specs at ',', drops \"'\" and reads '*' as a wildcard)")
        if len(e.profiles) > 1:
            cmd.append(f"--profile={i}")
        for k in ("min", "opt", "max"):
            cmd.append(f"--{k}Shapes=" + ",".join(f"{name}:{_dims(s[k])}" for name, s in p.shapes.items()))
    return cmd


def trtexec_script(plan: BuildPlan) -> str:
    lines = ["#!/usr/bin/env bash",
             "# Build the TensorRT engines of this bundle with trtexec (JetPack ships it: /usr/src/tensorrt/bin).",
             "# Equivalent to `mvlm-export trt-build DIR` (same profiles, flags and workspace). Then run",
             "# `mvlm-export trt-build DIR --record-only`: it records the engines' sha256 in manifest.json, and",
             "# `mvlm-export verify` and `run` on DIR use only recorded engines.",
             f"# TensorRT {plan.tensorrt}, device profile {plan.device}. Run from the bundle directory.",
             "set -euo pipefail", 'cd "$(dirname "$0")"', f"mkdir -p {ENGINES_DIR}",
             'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"']
    for e in plan.engines:
        cmd = trtexec_command(e, plan.workspace_bytes)
        lines.append(" \\\n    ".join(['"$TRTEXEC"', *map(shlex.quote, cmd[1:])]))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# the real TensorRT API: the engine builder


def build_engine(e: EnginePlan, root: Path, workspace_bytes: int, log=print) -> dict:
    """Parse ``e.onnx``, build with the plan's profiles and flags, write ``e.engine`` and update the timing cache.
    Returns the engine's record (file, bytes, seconds). ``CheckFailed`` when the parser or builder refuses."""
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if e.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    if not parser.parse_from_file(str(root / e.onnx)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CheckFailed(f"{e.onnx}: TensorRT's ONNX parser refused it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if e.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_path = root / TIMING_CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for p in e.profiles:
        prof = builder.create_optimization_profile()
        for name, s in p.shapes.items():
            prof.set_shape(name, s["min"], s["opt"], s["max"])
        config.add_optimization_profile(prof)
    log(f"building {e.engine} ({len(e.profiles)} profile(s), "
        f"{'strongly typed' if e.strongly_typed else 'fp16 flag'})")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CheckFailed(f"{e.onnx}: TensorRT could not build an engine (see its log above)")
    out = root / e.engine
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"graph": e.graph, "file": e.engine, "bytes": out.stat().st_size,
            "seconds": round(time.perf_counter() - t0, 1)}


def build_bundle_engines(root: Path, log=print, record_only: bool = False) -> list[dict]:
    """On the device (or any machine with the bundle's TensorRT and a GPU): build every engine of a bundle from
    its ``build_plan.json`` with the TensorRT API (an orin build's on-device step, ``OrinTarget.device_build``), and
    record them in the manifest (sha256 included), so ``verify``, ``run`` and ``bench`` use them. ``record_only``:
    build nothing; record the engines ``build_engines.sh`` (trtexec) built, each of which must exist. Torch-free.
    ``UserError`` for a corrupt bundle, no TensorRT/GPU here (when building), or a missing engine (when recording).
    Every recorded file is checked against its sha256 but the plan's engines and the timing cache, which the
    engine builders rewrite and this call (re)records: after ``build_engines.sh`` is run again, the engines an
    earlier call recorded differ, and that is no corruption."""
    from mobilevlm_export.backends.tensorrt_runtime import import_tensorrt, tensorrt_available
    from mobilevlm_export.manifest import check_artifacts, read_manifest, update_manifest

    manifest = read_manifest(root, check=False)
    artifacts = manifest["artifacts"]
    check_artifacts(root, [a for a in artifacts if a["path"] == PLAN])  # the plan first: it names the engines
    plan = read_plan(root)
    rewritten = {posixpath.normpath(e.engine) for e in plan.engines} | {TIMING_CACHE}
    check_artifacts(root, [a for a in artifacts if a["path"] not in rewritten])
    if record_only:
        missing = [e.engine for e in plan.engines if not (Path(root) / e.engine).is_file()]
        if missing:
            raise UserError(f"{root}: {missing[0]} does not exist: run build_engines.sh first (or trt-build without "
                            "--record-only to build with the TensorRT API)")
        built = [{"graph": e.graph, "file": e.engine, "bytes": (Path(root) / e.engine).stat().st_size,
                  "seconds": None, "builder": "build_engines.sh"} for e in plan.engines]
    else:
        import_tensorrt()
        why = tensorrt_available()
        if why:
            raise UserError(f"{root}: cannot build engines here: {why}")
        built = [build_engine(e, Path(root), plan.workspace_bytes, log) for e in plan.engines]
    graphs = manifest["graphs"]
    for e in built:
        graphs[e["graph"]]["engine"] = e["file"]
    update_manifest(Path(root), graphs=graphs, compile={**manifest["compile"], "engines": built})
    return built
