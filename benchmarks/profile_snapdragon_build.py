"""Per-phase timing of a snapdragon build of the demo checkpoint (or of a synthetic checkpoint of MobileVLM_V2-1.7B's
widths with ``--layers N`` decoder and vision layers, to separate a build's fixed costs from its per-layer ones), in
one process.

Runs the real pipeline (``pipeline.build``) with timers wrapped around the phases' public entry points (nothing
else changes): quantize (``quantize_graphs``), torch.export (``torch.export.export``), to_edge + partition
(``to_edge_transform_and_lower`` less what the two below take), XNNPACK partition (``XnnpackPartitioner.partition``)
and preprocess (``XnnpackBackend.preprocess``, inside to_edge_transform_and_lower), to_executorch + serialize, and
verify. Writes JSON (phases, per-method delegation by op, CPU flags) to the path given.

    PYTHONPATH=$PWD python benchmarks/profile_snapdragon_build.py OUT.json [--recipe NAME] [--label TEXT]
        [--layers N --work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

phases: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)
inside: list[str] = []  # the phases being timed, outermost first


def timed(owner, attr: str, phase: str) -> None:
    fn = getattr(owner, attr)
    static = isinstance(owner.__dict__.get(attr), staticmethod) if isinstance(owner, type) else False
    cls_m = isinstance(owner.__dict__.get(attr), classmethod) if isinstance(owner, type) else False

    def wrapper(*a, **kw):
        # a phase timed inside XNNPACK's preprocess is recorded as part of it (e.g. its pattern graphs' to_edge)
        name = f"{phase}_in_preprocess" if "xnnpack_preprocess" in inside and phase != "xnnpack_preprocess" else phase
        inside.append(phase)
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            inside.pop()
            phases[name] += time.perf_counter() - t
            calls[name] += 1

    if static:
        wrapper = staticmethod(wrapper)
    elif cls_m:
        fn = owner.__dict__[attr].__func__

        def cwrapper(cls, *a, **kw):
            t = time.perf_counter()
            try:
                return fn(cls, *a, **kw)
            finally:
                phases[phase] += time.perf_counter() - t
                calls[phase] += 1
        wrapper = classmethod(cwrapper)
    setattr(owner, attr, wrapper)


def cpu_flags() -> dict:
    info = {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name") and "model" not in info:
                info["model"] = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                info["flags"] = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--recipe", default=None)
    ap.add_argument("--label", default="")
    ap.add_argument("--layers", type=int, default=None,
                    help="build a synthetic checkpoint of MobileVLM_V2-1.7B's widths with N decoder layers and N "
                         "vision layers (random fp16 weights, written once under --work) instead of the demo's")
    ap.add_argument("--work", default="build/profile-ckpts")
    args = ap.parse_args()
    cpu = cpu_flags()

    import executorch.exir as exir
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir import program as exir_program
    from executorch.exir.program._program import EdgeProgramManager, ExecutorchProgramManager

    import mobilevlm_export.quantize.torchao as qt
    import mobilevlm_export.verify as verify
    from mobilevlm_export import pipeline
    from mobilevlm_export.targets import snapdragon  # noqa: F401

    timed(qt, "quantize_graphs", "quantize")
    timed(torch.export, "export", "torch_export")
    timed(exir, "to_edge_transform_and_lower", "to_edge_transform_and_lower")
    timed(exir_program, "to_edge_transform_and_lower", "to_edge_transform_and_lower")
    timed(XnnpackPartitioner, "partition", "xnnpack_partition")
    timed(XnnpackBackend, "preprocess", "xnnpack_preprocess")
    timed(EdgeProgramManager, "to_executorch", "to_executorch")
    timed(ExecutorchProgramManager, "write_to_file", "serialize_write")
    timed(verify, "verify_artifacts", "verify")
    # inside to_edge_transform_and_lower: ExecuTorch's decompositions (run_decompositions, called per partitioner),
    # and the XNNPACK passes' pattern graphs (built once per process by the first preprocess)
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa
    timed(torch.export.ExportedProgram, "run_decompositions", "run_decompositions")
    timed(sdpa, "get_graphs", "xnnpack_pattern_graphs_sdpa")
    timed(bilinear_2d, "get_graphs_dict", "xnnpack_pattern_graphs_bilinear")

    from mobilevlm_export.checkpoint.synthetic import demo_checkpoint_dir
    from mobilevlm_export.pipeline import BuildConfig
    ckpt = demo_checkpoint_dir()
    if args.layers:
        import dataclasses

        from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, write_checkpoint

        dims = dataclasses.replace(MOBILEVLM_V2_1_7B, layers=args.layers, vision_layers=args.layers)
        ckpt = Path(args.work) / f"1.7b-width-{args.layers}-layers"
        if not (ckpt / "config.json").is_file():
            write_checkpoint(ckpt, dims, projector="ldpnetv2", shards=1, seed=0, dtype=torch.float16)
    out = Path(tempfile.mkdtemp(prefix="spd-prof-")) / "build"
    cfg = BuildConfig(ckpt=ckpt, target="snapdragon", out=out, recipe=args.recipe, force=True,
                      bench=False, threads=2)
    t0 = time.perf_counter()
    result = pipeline.build(cfg)
    total = time.perf_counter() - t0
    m = result.manifest
    print(json.dumps({"total": total, "phases": phases}), flush=True)
    ph = {k: round(v, 2) for k, v in phases.items()}
    ph["to_edge_other"] = round(phases["to_edge_transform_and_lower"] - phases["xnnpack_partition"]
                                - phases["xnnpack_preprocess"] - phases["run_decompositions"], 2)
    pattern = sum(v for k, v in phases.items() if k.startswith("xnnpack_pattern_graphs"))
    ph["xnnpack_preprocess_less_pattern_graphs"] = round(phases["xnnpack_preprocess"] - pattern, 2)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    rec = {
        "label": args.label, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
        "recipe": args.recipe or "snapdragon-8da4w", "checkpoint": str(ckpt), "layers": args.layers,
        "total_seconds": round(total, 2), "stages": m["build"]["stages"],
        "phases": ph, "phase_calls": dict(calls), "peak_rss_mb": m["build"]["peak_rss_mb"],
        "delegation": m["compile"]["methods"], "verification_passed": result.report.passed,
        "verification": {"metrics": m["verification"].get("metrics"),
                         "token_agreement": m["verification"].get("token_agreement")},
        "pte": next((a for a in m.get("artifacts", []) if a.get("path") == "model.pte"), None),
        "torch_threads": torch.get_num_threads(), "cpu": {**cpu, "loadavg_end": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rec, indent=1) + "\n")
    print(json.dumps({k: rec[k] for k in ("total_seconds", "stages", "phases")}, indent=1))
    for d in rec["delegation"]:
        print(d["method"], d["delegated_nodes"], d["portable_nodes"], d["delegated_subgraphs"], d["portable_ops"])
    import shutil

    shutil.rmtree(out.parent, ignore_errors=True)  # (the build itself is not kept)


if __name__ == "__main__":
    main()
