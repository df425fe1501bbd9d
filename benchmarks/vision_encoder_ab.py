"""The vision encoder method at MobileVLM_V2-1.7B's vision dims (CLIP ViT-L/14-336 + LDPv2 to 2048), before and
after it was written to stay in the XNNPACK delegate, timed as a paired A/B in one process.

- before: the form the snapdragon target lowered until 2026-12-06 (commit ba59773): the checkpoint's own CLIP
  modules (``graphs.vision.VisionEncoder``) and LDPv2 projector, with that commit's partitioners (a per-op
  dynamic-quant XnnpackPartitioner, then a stock one).
- after: today's ``split_static`` form (``DelegableVisionEncoder`` + ``delegable_projector``) with the target's
  partitioners.

Both from one synthetic checkpoint (random fp16 weights, vision dims of MobileVLM_V2-1.7B, the decoder cut to one
layer: it is not in this method), the image encoder's linears quantized as the default recipe snapdragon-8da4w
quantizes them (8da4w, group 64; the two forms share the quantized modules). Each pair times one image through both
programs, who goes first alternating; the result is the per-pair ratio after / before (median, its 95 % CI by
``benchsuite.ab.median_ci95``), each side's median ms and its GEMM GOPS against the host's int8 GEMM roof
(``benchsuite.roof``), the delegation of each method and its build seconds. Writes JSON to OUT.

    PYTHONPATH=$PWD python benchmarks/vision_encoder_ab.py OUT.json [--vision-layers 24] [--pairs 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--vision-layers", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default=None, help="folder for the checkpoint and programs (default: a temporary one)")
    args = ap.parse_args()

    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()
    import torch

    from mobilevlm_export.backends.executorch import export_program, load_program, set_threads
    from mobilevlm_export.benchsuite.ab import median_ci95
    from mobilevlm_export.benchsuite.roof import gemm_roof, vision_fraction
    from mobilevlm_export.checkpoint.model import load_checkpoint
    from mobilevlm_export.checkpoint.records import model_dims
    from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, write_checkpoint
    from mobilevlm_export.graphs.vision import (
        DelegableVisionEncoder,
        ImageEncoder,
        Projector,
        VisionEncoder,
        delegable_projector,
    )
    from mobilevlm_export.quantize.torchao import quantize_linears
    from mobilevlm_export.targets import registry

    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="mvlm-vision-ab-"))
    work.mkdir(parents=True, exist_ok=True)
    dims = dataclasses.replace(MOBILEVLM_V2_1_7B, layers=1, vocab=0, vision_layers=args.vision_layers)
    t0 = time.perf_counter()
    if not (work / "ckpt" / "config.json").is_file():
        write_checkpoint(work / "ckpt", dims, projector="ldpnetv2", shards=1, seed=0, dtype=torch.float16)
    ckpt = load_checkpoint(work / "ckpt")
    checkpoint_s = time.perf_counter() - t0
    model = ckpt.model
    patches = model_dims(ckpt).patches
    vision = VisionEncoder(model.vision_tower, model.select_layer, model.select_feature)
    forms = {
        "before": ImageEncoder(vision, Projector(model.projector)).eval(),
        "after": ImageEncoder(DelegableVisionEncoder(vision), Projector(delegable_projector(model.projector,
                                                                                            patches))).eval(),
    }
    linears = [m for m in forms["after"].modules() if isinstance(m, torch.nn.Linear)]
    vision_ops = 2.0 * sum(m.weight.numel() for m in linears) * patches
    log = quantize_linears(forms["after"], "8da4w", 64, "affine", "image_encoder")  # (shared with "before")
    pixels = torch.randn(1, 3, 336, 336)
    with torch.no_grad():
        same = torch.nn.functional.cosine_similarity(forms["before"](pixels).flatten(),
                                                     forms["after"](pixels).flatten(), dim=0).item()

    def before_partitioners(method):
        from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT, per_op_mode=True),
                XnnpackPartitioner()]

    partitioners = {"before": before_partitioners, "after": registry()["snapdragon"].partitioners}
    built, programs, methods = {}, {}, {}
    for name in ("before", "after"):
        path = work / f"vision-{name}.pte"
        t = time.perf_counter()
        info = export_program({"vision_encoder": forms.pop(name)}, {"vision_encoder": (pixels,)}, {}, path, {},
                              False, partitioners[name])
        (report,) = info.methods
        built[name] = {"seconds": round(time.perf_counter() - t, 1), "export_seconds": info.export_seconds,
                       "lower_seconds": info.lower_seconds, "bytes": info.bytes,
                       "delegation": dataclasses.asdict(report)}
        print(name, built[name], flush=True)
    del model, ckpt, vision
    for name in ("before", "after"):
        programs[name] = load_program(work / f"vision-{name}.pte", args.threads)
        methods[name] = programs[name].load_method("vision_encoder")
        methods[name].execute([pixels])  # (warm-up)
    times = {"before": [], "after": []}
    for i in range(args.pairs):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        for name in order:
            t = time.perf_counter()
            methods[name].execute([pixels])
            times[name].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times["after"], times["before"], strict=True)]
    del methods, programs
    roof = gemm_roof(args.threads)
    sides = {}
    for name in ("before", "after"):
        ms = statistics.median(times[name]) * 1e3
        sides[name] = {"median_ms": round(ms, 1), "samples_ms": [round(x * 1e3, 1) for x in times[name]],
                       "gemm": vision_fraction(vision_ops, ms, roof), **built[name]}
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    result = {
        "what": __doc__.split("\n\n")[0].replace("\n", " "),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dims": {"vision_hidden": dims.vision_hidden, "vision_layers": dims.vision_layers,
                 "vision_heads": dims.vision_heads, "vision_intermediate": dims.vision_intermediate,
                 "projector": "ldpnetv2 -> 2048", "patches": patches, "image": 336},
        "quantization": log, "vision_gemm_ops": vision_ops, "threads": args.threads, "pairs": args.pairs,
        "outputs_cosine_before_vs_after": round(same, 6), "checkpoint_seconds": round(checkpoint_s, 1),
        "ratio_after_over_before": {"median": round(statistics.median(ratios), 3),
                                    "ci95": [round(x, 3) for x in median_ci95(ratios) or []],
                                    "pairs_after_faster": sum(r < 1 for r in ratios)},
        "sides": sides, "int8_gemm_roof": {k: v for k, v in roof.items() if k != "samples_ms"},
        "host": {"machine": platform.machine(), "cpu_flags_of_interest": sorted(
            f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c"))},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ratio_after_over_before", "outputs_cosine_before_vs_after")}))
    print({n: (s["median_ms"], s["gemm"]) for n, s in sides.items()})


if __name__ == "__main__":
    main()
