"""Paired A/B of our ExecuTorch decoder against export_llm's, both loaded in one process.

This host's speed drifts by ±20 % over minutes, more than the differences being measured, so separate processes
(the suite's interleaved rounds) disagree from round to round. Here the two programs alternate within seconds:
each pair times one prefill of the same random prompt on both (who goes first alternates), then ``burst`` greedy
decode steps on both at the same cache positions. Both loops do what a generation loop does (ours: the
``token_embedding`` and ``text_decoder`` methods through our runtime pipeline, the argmax on the host;
export_llm's: ``forward(tokens, input_pos)``, the argmax on the host). The result: per-pair tokens/s of each, the
medians, the median of the per-pair ratios ours / export_llm with its 95 % confidence interval (``median_ci95``)
and in how many pairs ours was at least as fast.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from mobilevlm_export.bench import FIRST_TEXT_ID
from mobilevlm_export.errors import UserError


def median_ci95(values: list[float]) -> list[float] | None:
    """A distribution-free 95 % confidence interval of the median of ``values``: the order statistics
    ``x(k)`` and ``x(n+1-k)`` with the largest k for which a Binomial(n, 1/2) count falls below k with probability
    at most 2.5 %, so the interval covers the true median with probability at least 95 % whatever the
    distribution (pairs: 20 -> the 6th and 15th smallest). None under 6 values (no such k)."""
    from math import comb

    n = len(values)
    k, below = 0, 0.0
    while k < n and below + comb(n, k) / 2**n <= 0.025:
        below += comb(n, k) / 2**n
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return [ordered[k - 1], ordered[n - k]]


def paired_ab(ours: Path, peer: Path, threads: int | None = 2, pairs: int = 30, prompt: int = 64,
              burst: int = 8) -> dict:
    """``pairs`` alternating (prefill of ``prompt`` tokens + ``burst`` decode steps) on our build ``ours`` (a
    ``build --target snapdragon`` directory) and export_llm's ``peer`` .pte of the same decoder shape."""
    from mobilevlm_export.benchsuite.peers import ExportLlmProgram
    from mobilevlm_export.runtime.artifacts import open_artifacts

    if pairs < 1 or burst < 1 or prompt < 1:
        raise UserError(f"A/B: pairs {pairs}, burst {burst}, prompt {prompt}: each must be at least 1")
    art = open_artifacts(ours)
    pipe = art.generator(art.runners(threads))
    dims = art.manifest["model"]["dims"]
    program = ExportLlmProgram(peer, dims)
    theirs_pipe = program.generator(program.runners(threads))
    ids = np.random.default_rng(0).integers(FIRST_TEXT_ID, dims["vocab"], prompt).tolist()
    capacity = min(pipe.decoder.capacity, theirs_pipe.decoder.capacity)
    if prompt + burst + 1 > capacity:
        raise UserError(f"A/B: prompt {prompt} + burst {burst} exceed the cache ({capacity} positions)")

    def run(p) -> tuple[float, float]:
        t0 = time.perf_counter()
        token = int(p.prefill(ids, None).argmax())
        t1 = time.perf_counter()
        for _ in range(burst):
            token = int(p.step(token).argmax())
        return t1 - t0, time.perf_counter() - t1

    run(pipe), run(theirs_pipe)  # warm up
    rows = []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = run(pipe), run(theirs_pipe)
        else:
            b, a = run(theirs_pipe), run(pipe)
        rows.append({"ours_prefill": prompt / a[0], "ours_decode": burst / a[1],
                     "export_llm_prefill": prompt / b[0], "export_llm_decode": burst / b[1]})
    out = {"ours": str(ours), "export_llm": str(peer), "threads": threads, "pairs": pairs, "prompt_tokens": prompt,
           "burst": burst}
    for kind in ("prefill", "decode"):
        ratios = [r[f"ours_{kind}"] / r[f"export_llm_{kind}"] for r in rows]
        out[kind] = {"ours_tok_s_median": round(statistics.median(r[f"ours_{kind}"] for r in rows), 2),
                     "export_llm_tok_s_median": round(statistics.median(r[f"export_llm_{kind}"] for r in rows), 2),
                     "ratio_median": round(statistics.median(ratios), 3),
                     "ratio_ci95": [round(x, 3) for x in median_ci95(ratios) or []] or None,
                     "pairs_ours_at_least_as_fast": sum(x >= 1 for x in ratios)}
    out["rows"] = [{k: round(v, 2) for k, v in r.items()} for r in rows]
    return out
