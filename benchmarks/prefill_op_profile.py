"""ExecuTorch's per-operator profile (ETDump) of a snapdragon build's prefill: where the time to first token's
second half goes.

Loads each given build's ``model.pte`` (its ``text_decoder`` method) with ETDump on and runs one warm-up and
``--prefills`` timed prefills of ``--positions`` random embeddings from cache position 0 (default: the image's
tokens from the build's manifest + a 64-token prompt, the suite's time-to-first-token request), then summarizes
per prefill (``opprofile.summarize``: the top event names by median ms per prefill, their calls per prefill and
median ms per call; XNNPACK's operators appear by their debug names inside ``DELEGATE_CALL``, portable kernels as
``native_call_*``, the LLM custom ops as ``llama::*``). Also reports each program's GEMM share and the decoder's
linear GOPS of the prefill (2 x positions x the decoder's linear weights, lm_head once). Profiling adds overhead
of its own: compare shares within one profile. The process gets ``backends.executorch.RUNTIME_PROCESS_ENV`` (one
OpenMP thread for PyTorch, whose MKL runs the custom ops' products in a Python host), as the suite's timings do.
Writes JSON to OUT.

    PYTHONPATH=$PWD python benchmarks/prefill_op_profile.py OUT.json NAME=BUILD_DIR ... [--prefills 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("programs", nargs="+", help="NAME=BUILD_DIR (a snapdragon build)")
    ap.add_argument("--prefills", type=int, default=3)
    ap.add_argument("--positions", type=int, default=None, help="default: the image's tokens + 64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()

    from mobilevlm_export.backends.executorch import prepare_runtime_process

    prepare_runtime_process()  # (before PyTorch loads)
    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels)
    import torch
    from executorch.extension.pybindings import portable_lib

    from mobilevlm_export.backends.executorch import set_threads
    from mobilevlm_export.benchsuite.opprofile import profile_method
    from mobilevlm_export.benchsuite.predict import decoder_linear_weights

    set_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    out = {"what": __doc__.split("\n\n")[0].replace("\n", " "),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": args.threads,
           "prefills": args.prefills, "machine": platform.machine(), "programs": {}}
    for spec in args.programs:
        name, build = spec.split("=", 1)
        manifest = json.loads((Path(build) / "manifest.json").read_text())
        dims = manifest["model"]["dims"]
        positions = args.positions or dims["image_tokens"] + 64
        weights = decoder_linear_weights(dims["hidden"], dims["intermediate"], dims["layers"], dims["heads"],
                                         dims["kv_heads"], 0)
        module = portable_lib._load_for_executorch(str(Path(build) / "model.pte"), enable_etdump=True)
        emb = torch.randn(1, positions, dims["hidden"], generator=gen)
        summary = profile_method(module, "text_decoder", (emb, torch.arange(positions)), args.prefills, args.top)
        summary["prefills"] = summary.pop("runs")
        total = summary["ms_per_step"].get("Method::execute")
        gemm = sum(v for k, v in summary["ms_per_step"].items() if "GEMM" in k)
        summary["positions"] = positions
        summary["gemm_share"] = round(gemm / total, 3) if total else None
        summary["decoder_linear_gops"] = round(2 * positions * weights / (total / 1e3) / 1e9, 1) if total else None
        recipe = manifest["recipe"]
        out["programs"][name] = {"build": build, "recipe": recipe["recipe"].get("name"),
                                 "decoder": recipe.get("quantize", {}).get("decoder"), **summary}
        print(name, positions, json.dumps(summary["ms_per_step"]), flush=True)
        del module
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
