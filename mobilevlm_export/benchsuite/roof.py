"""The host's int8 GEMM roof: what XNNPACK's dynamically quantized GEMM computes per second on this CPU, the
compute counterpart of the memory bandwidth roof (``bench.memory_bandwidth``).

One ``nn.Linear`` of a CLIP ViT-L/14-336 MLP (``K`` = 1024 in, ``N`` = 4096 out) over ``M`` = 577 rows (one image's
tokens), quantized 8da8w (int8 activations quantized per row at run time, int8 per-channel weights: the kernel a
vision encoder's 8da8w linears run, and the int8 half of 8da4w's) as the build quantizes (``quantize.torchao``),
lowered as the snapdragon target lowers (its partitioners), and run by the ExecuTorch runtime on ``threads``
threads: ``2 * M * K * N`` operations per call, the best and the median of ``repeats`` timed calls after
``warmup``. A row's vision encoder is then measured against it: its GEMM operations per image
(``costs.vision_ops``) / its vision time, as a fraction of the roof (``vision_fraction``).

Runs in a fresh process (the suite's ``worker``, task ``gemm_roof``): the threadpool is sized before the program
loads.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from mobilevlm_export.errors import UserError

SHAPE = {"m": 577, "k": 1024, "n": 4096}  # CLIP ViT-L/14-336's MLP fc1 over an image's 577 tokens
SCHEME = "8da8w"


def gemm_roof(threads: int, repeats: int = 20, warmup: int = 3, m: int = SHAPE["m"], k: int = SHAPE["k"],
              n: int = SHAPE["n"]) -> dict:
    """``{"gops", "gops_median", "samples_ms", "shape", "scheme", "threads", "method", ...}`` of one
    ``[m, k] x [k, n]`` 8da8w GEMM in XNNPACK. ``UserError`` when an argument is below 1."""
    if min(threads, repeats, m, k, n) < 1 or warmup < 0:
        raise UserError(f"gemm roof: threads {threads}, repeats {repeats}, warmup {warmup}, shape {m}x{k}x{n}: "
                        "each must be at least 1 (warmup at least 0)")
    import torch
    from torch import nn

    from mobilevlm_export.backends.executorch import export_program, load_program
    from mobilevlm_export.quantize.torchao import quantize_linears
    from mobilevlm_export.targets import registry

    torch.manual_seed(0)
    linear = nn.Sequential(nn.Linear(k, n, bias=False)).eval()
    quantize_linears(linear, SCHEME, 0, "affine", "roof")
    x = torch.randn(m, k)
    target = registry()["snapdragon"]
    with tempfile.TemporaryDirectory(prefix="mvlm-roof-") as tmp:
        path = Path(tmp) / "gemm.pte"
        t0 = time.perf_counter()
        info = export_program({"gemm": linear}, {"gemm": (x,)}, {}, path, {}, False, target.partitioners)
        build_s = time.perf_counter() - t0
        (report,) = info.methods
        if set(report.portable_ops) - {"getitem"} or report.delegated_subgraphs != 1:  # (getitem: its output)
            raise RuntimeError(f"the roof's GEMM is not one XNNPACK delegate: {report}")
        program = load_program(path, threads)  # (sizes the threadpool first)
        method = program.load_method("gemm")
        for _ in range(warmup):
            method.execute([x])
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            method.execute([x])
            samples.append(time.perf_counter() - t)
        del method, program
    ops = 2.0 * m * k * n
    return {"gops": _sig(ops / min(samples) / 1e9), "gops_median": _sig(ops / statistics.median(samples) / 1e9),
            "samples_ms": [_sig(s * 1e3) for s in samples], "shape": {"m": m, "k": k, "n": n}, "scheme": SCHEME,
            "threads": threads, "repeats": repeats, "warmup": warmup, "build_s": round(build_s, 2),
            "method": f"one [{m}, {k}] x [{k}, {n}] {SCHEME} linear lowered to XNNPACK, run by the ExecuTorch "
                      "runtime; 2*M*K*N ops / the best of the timed calls"}


def vision_fraction(vision_ops: float | None, vision_ms: float | None, roof: dict | None) -> dict | None:
    """A row's vision encoder against the roof: ``{"gops": its GEMM operations per image / its vision time,
    "fraction": of the roof's best}``; None where a figure is missing."""
    if not vision_ops or not vision_ms or not roof or not roof.get("gops"):
        return None
    gops = vision_ops / (vision_ms / 1e3) / 1e9
    return {"gops": _sig(gops), "fraction": round(gops / roof["gops"], 3)}


def _sig(x: float) -> float:
    return float(f"{x:.4g}")
