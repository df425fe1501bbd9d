"""The vision encoder method at MobileVLM_V2-1.7B's vision dims (CLIP ViT-L/14-336 + LDPv2 to 2048), before and
after it was written to stay in the XNNPACK delegate, timed as a paired A/B in one process.

- before: the form the snapdragon target lowered until 2026-12-06 (commit ba59773): the checkpoint's own CLIP
  modules (``graphs.vision.VisionEncoder``) and LDPv2 projector, with that commit's partitioners (a per-op
  dynamic-quant XnnpackPartitioner, then a stock one).
- after: today's ``split_static`` form (``DelegableVisionEncoder`` + ``delegable_projector``) with the target's
  partitioners.

Both from one synthetic checkpoint (random fp16 weights, vision dims of MobileVLM_V2-1.7B, the decoder cut to one
layer: it is not in this method), the image encoder's linears quantized as the default recipe snapdragon-8da4w
quantizes them (8da4w, group 64), or as ``--variants`` says (other forms and schemes: 8da8w, fp32; each variant its
own copy of the weights). Each pair times one image through every program, the order rotating; the result is each
variant's per-pair ratio to the first (median, its 95 % CI by ``benchsuite.ab.median_ci95``), each one's median ms,
its GEMM GOPS against the host's int8 GEMM roof (``benchsuite.roof``), its output's cosine to the first's, its
delegation and its build seconds. Writes JSON to OUT.

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
    ap.add_argument("--variants", default="before=checkpoint:8da4w,after=delegable:8da4w",
                    help="NAME=FORM:SCHEME[:GROUP],... (FORM: checkpoint, delegable, unfolded: delegable with the "
                         "softmax scale a product over the scores, or sdpa: delegable with attention as ExecuTorch's "
                         "llama.custom_sdpa; SCHEME: 8da4w (GROUP, default 64), 8da8w, "
                         "fp32); ratios are to the first")
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
        Attention,
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
    pixels = torch.randn(1, 3, 336, 336)

    def form(kind: str) -> torch.nn.Module:
        """A fresh copy of the tower and projector (fp32) in the ``kind`` form."""
        import copy

        tower, projector = copy.deepcopy(model.vision_tower), copy.deepcopy(model.projector)
        vision = VisionEncoder(tower, model.select_layer, model.select_feature)
        if kind == "checkpoint":
            return ImageEncoder(vision, Projector(projector)).eval()
        encoder = DelegableVisionEncoder(vision)
        if kind == "sdpa":
            for layer in encoder.layers:
                layer.self_attn.__class__ = SdpaAttention
        if kind == "unfolded":  # the softmax scale as a product over the scores, as before it was folded
            for layer, own in zip(encoder.layers, vision.layers, strict=True):
                layer.self_attn.q_proj, layer.self_attn.scale = own.self_attn.q_proj, float(own.self_attn.scale)
                layer.self_attn.__class__ = UnfoldedAttention
        return ImageEncoder(encoder, Projector(delegable_projector(projector, patches))).eval()

    class UnfoldedAttention(Attention):
        def forward(self, x):
            b, t, c = x.shape
            q = self.q_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
            k = self.k_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
            v = self.v_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
            probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * self.scale, dim=-1)
            return self.out_proj(torch.bmm(probs, v).transpose(0, 1).reshape(b, t, c))

    class SdpaAttention(Attention):
        """The same attention as ExecuTorch's custom_sdpa (flash attention on its optimized kernels, outside
        the delegate): q, k, v [1, T, heads, D], not causal, over all T positions."""

        def forward(self, x):
            import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401

            b, t, c = x.shape
            q = self.q_proj(x).view(1, t, self.heads, self.head_dim)
            k = self.k_proj(x).view(1, t, self.heads, self.head_dim)
            v = self.v_proj(x).view(1, t, self.heads, self.head_dim)
            out = torch.ops.llama.custom_sdpa(q, k, v, 0, None, 0, False, 1.0)  # (q_proj is scaled)
            return self.out_proj(out.reshape(b, t, c))

    def before_partitioners(method):
        from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return [XnnpackPartitioner(config_precisions=ConfigPrecisionType.DYNAMIC_QUANT, per_op_mode=True),
                XnnpackPartitioner()]

    variants = dict(v.split("=", 1) for v in args.variants.split(","))  # name -> FORM:SCHEME
    names = list(variants)
    built, programs, methods, log, vision_ops, reference = {}, {}, {}, {}, None, None
    for name in names:
        kind, scheme, *group = variants[name].split(":")
        module = form(kind)
        if vision_ops is None:
            vision_ops = 2.0 * sum(m.weight.numel() for m in module.modules()
                                   if isinstance(m, torch.nn.Linear)) * patches
        if scheme != "fp32":
            log[name] = quantize_linears(module, scheme, int(group[0]) if group else 64, "affine", "image_encoder")
        with torch.no_grad():
            out = module(pixels).flatten()
        reference = out if reference is None else reference
        cosine = torch.nn.functional.cosine_similarity(reference, out, dim=0).item()
        path = work / f"vision-{name}.pte"
        t = time.perf_counter()
        info = export_program({"vision_encoder": module}, {"vision_encoder": (pixels,)}, {}, path, {}, False,
                              before_partitioners if kind == "checkpoint" else registry()["snapdragon"].partitioners)
        (report,) = info.methods
        built[name] = {"form": kind, "scheme": scheme, "group_size": int(group[0]) if group else None,
                       "seconds": round(time.perf_counter() - t, 1),
                       "export_seconds": info.export_seconds, "lower_seconds": info.lower_seconds, "bytes": info.bytes,
                       "cosine_vs_first": round(cosine, 6), "delegation": dataclasses.asdict(report)}
        print(name, built[name], flush=True)
        del module
    model = ckpt = None  # (the fp32 weights freed before timing)
    for name in names:
        programs[name] = load_program(work / f"vision-{name}.pte", args.threads)
        methods[name] = programs[name].load_method("vision_encoder")
        methods[name].execute([pixels])  # (warm-up)
    times = {name: [] for name in names}
    for i in range(args.pairs):
        order = names[i % len(names):] + names[:i % len(names)]  # (each variant first as often)
        for name in order:
            t = time.perf_counter()
            methods[name].execute([pixels])
            times[name].append(time.perf_counter() - t)
    base = names[0]

    def ratio(name: str) -> dict:
        rs = [a / b for a, b in zip(times[name], times[base], strict=True)]
        return {"median": round(statistics.median(rs), 3), "ci95": [round(x, 3) for x in median_ci95(rs) or []],
                "faster_than_first": sum(r < 1 for r in rs)}

    del methods, programs
    roof = gemm_roof(args.threads)
    sides = {}
    for name in names:
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
        "checkpoint_seconds": round(checkpoint_s, 1),
        "ratio_over_first": {name: ratio(name) for name in names[1:]},
        "sides": sides, "int8_gemm_roof": {k: v for k, v in roof.items() if k != "samples_ms"},
        "host": {"machine": platform.machine(), "cpu_flags_of_interest": sorted(
            f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "fma", "f16c"))},
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["ratio_over_first"]))
    print({n: (s["median_ms"], s["gemm"]) for n, s in sides.items()})


if __name__ == "__main__":
    main()
