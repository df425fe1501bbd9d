"""Paired A/B timing of our ExecuTorch decoder against export_llm's, both loaded in one process.

    .venv/bin/python benchmarks/ab_decoder.py /tmp/bench/snapdragon-8da4w-g32 \
        /tmp/bench/export_llm_8da4w_g32/llama_8da4w_g32.pte [--threads 2] [--pairs 30]

This host's speed drifts by ±20 % over minutes, more than the difference being measured, so separate runs
(`snapdragon_1p7b.py --rounds`) disagree from round to round. Here the two programs alternate within seconds:
each pair times one prefill of the same random prompt on both (who goes first alternates), then ``burst`` greedy
decode steps on both at the same cache positions. Both loops do what a generation loop does (ours: the
``token_embedding`` and ``text_decoder`` methods through our runtime pipeline, argmax on the host; export_llm's:
``forward(tokens, input_pos)``, argmax on the host). Prints one JSON object: per-pair tokens/s of each, the
medians, the median of the per-pair ratios ours / export_llm and in how many pairs ours was at least as fast.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", type=Path, help="a `build --target snapdragon` output directory")
    ap.add_argument("peer", type=Path, help="an export_llm .pte of the same decoder shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--burst", type=int, default=8, help="decode steps per program per pair")
    args = ap.parse_args(argv)

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import torch
    from executorch.runtime import Runtime, Verification
    from peers import last_argmax  # this script's directory is on sys.path when it runs

    from mobilevlm_export.runtime.artifacts import open_artifacts

    art = open_artifacts(args.ours)
    pipe = art.pipeline(art.runners(args.threads))
    peer = Runtime.get().load_program(args.peer, verification=Verification.Minimal).load_method("forward")
    vocab = art.manifest["model"]["dims"]["vocab"]
    ids = np.random.default_rng(0).integers(3, vocab, args.prompt).tolist()
    if args.prompt + args.burst + 1 > pipe.decoder.capacity:
        raise SystemExit(f"--prompt {args.prompt} + --burst {args.burst} exceed the cache ({pipe.decoder.capacity})")

    def ours() -> tuple[float, float]:
        t0 = time.perf_counter()
        token = int(pipe.decoder.prefill(pipe.embed(ids))[-1].argmax())
        t1 = time.perf_counter()
        for _ in range(args.burst):
            token = int(pipe.decoder.step(pipe.embed([token]))[-1].argmax())
        return t1 - t0, time.perf_counter() - t1

    def theirs() -> tuple[float, float]:
        def forward(tokens: list[int], pos: int) -> int:
            return int(last_argmax(peer.execute([torch.tensor([tokens]), torch.tensor([pos])])[0]))

        t0 = time.perf_counter()
        token = forward(ids, 0)
        t1 = time.perf_counter()
        for i in range(args.burst):
            token = forward([token], args.prompt + i)
        return t1 - t0, time.perf_counter() - t1

    ours(), theirs()  # warm up
    rows = []
    for i in range(args.pairs):
        a, b = (ours(), theirs()) if i % 2 == 0 else tuple(reversed((theirs(), ours())))
        rows.append({"ours_prefill": args.prompt / a[0], "ours_decode": args.burst / a[1],
                     "export_llm_prefill": args.prompt / b[0], "export_llm_decode": args.burst / b[1]})
    out = {"ours": str(args.ours), "export_llm": str(args.peer), "threads": args.threads, "pairs": args.pairs,
           "prompt_tokens": args.prompt, "burst": args.burst}
    for kind in ("prefill", "decode"):
        ratios = [r[f"ours_{kind}"] / r[f"export_llm_{kind}"] for r in rows]
        out[kind] = {"ours_tok_s_median": round(statistics.median(r[f"ours_{kind}"] for r in rows), 2),
                     "export_llm_tok_s_median": round(statistics.median(r[f"export_llm_{kind}"] for r in rows), 2),
                     "ratio_median": round(statistics.median(ratios), 3),
                     "pairs_ours_at_least_as_fast": sum(x >= 1 for x in ratios)}
    out["rows"] = [{k: round(v, 2) for k, v in r.items()} for r in rows]
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
