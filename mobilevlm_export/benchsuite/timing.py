"""The suite's timings: every row in a fresh process per round (``worker``), the rows' order reversed every other
round (the host's speed drifts by more than the differences measured, so a row is never always first or last);
within a process ``bench.measure`` takes ``warmup`` untimed then ``runs`` timed requests. A row's figure is the
median of all its timed runs over all rounds (``rounds`` x ``runs``, ``summarize_row``); ours / export_llm pairs
are compared round by round (``ratios``)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from mobilevlm_export.backends.executorch import RUNTIME_PROCESS_ENV
from mobilevlm_export.benchsuite.rows import BEFORE, OURS, Row, timing_order

TEXT_METRICS = ("decode_tokens_per_s", "prefill_tokens_per_s")
IMAGE_METRICS = ("ttft_ms", "vision_ms", "prefill_ms")


def worker(task: dict, timeout: float | None = None) -> dict:
    """Run one ``worker`` task in a fresh process (``backends.executorch.RUNTIME_PROCESS_ENV`` added to the
    environment of one that runs ExecuTorch programs, ours and export_llm's alike); its result. ``RuntimeError`` with
    the stderr tail when it fails."""
    from mobilevlm_export.benchsuite.worker import uses_executorch

    env = {**os.environ, **RUNTIME_PROCESS_ENV} if uses_executorch(task) else None
    with tempfile.TemporaryDirectory(prefix="mvlm-bench-") as tmp:
        spec, result = Path(tmp) / "task.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({**task, "result": str(result)}, default=str))
        res = subprocess.run([sys.executable, "-m", "mobilevlm_export.benchsuite.worker", str(spec)],
                             capture_output=True, text=True, timeout=timeout, env=env)
        if res.returncode != 0 or not result.is_file():
            raise RuntimeError(f"suite task {task['task']} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
        return json.loads(result.read_text())


def timing_task(row: Row, prep: dict, cfg, threads: int, dims: dict) -> dict:
    """The worker task timing ``row``'s program (``prep``: ``prepare.prepare``'s) as ``cfg`` (a ``SuiteConfig``)
    says (a ``BEFORE`` row's as one of ours: today's runtime times every program alike)."""
    return {"task": "time", "kind": OURS if row.kind == BEFORE else row.kind, "path": prep["path"], "threads": threads,
            "prompt_tokens": cfg.prompt_tokens, "decode_tokens": cfg.decode_tokens, "runs": cfg.runs,
            "warmup": cfg.warmup, "ttft": not row.decoder_only, "ttft_decode_tokens": cfg.ttft_decode_tokens,
            "dims": dims}


def interleaved_rounds(rows: list[Row], prepared: dict, cfg, threads: int, dims: dict, log) -> list:
    """``cfg.rounds`` rounds, each row in a fresh process, in ``rows.timing_order`` (ours / export_llm pairs back
    to back), the order reversed every other round (so with an even number of rounds every row, and each side of a
    pair, is timed first as often as last)."""
    rounds, base = [], timing_order(rows)
    for i in range(cfg.rounds):
        order = base if i % 2 == 0 else base[::-1]
        result = {}
        for row in order:
            result[row.name] = worker(timing_task(row, prepared[row.name], cfg, threads, dims))
            text = result[row.name]["text"]
            log(f"round {i + 1}/{cfg.rounds} {row.name}: decode {text['decode_tokens_per_s']:.4g} tok/s, prefill "
                f"{text['prefill_tokens_per_s']:.4g} tok/s")
        rounds.append({"round": i, "order": [r.name for r in order], "rows": result})
    return rounds


def metric(values: list[float], run_spreads: list[float], pooled: list[float] | None = None) -> dict:
    """A row's figure over rounds: the median of every timed run of every round (``pooled``; without it, of the
    rounds' p50s), the spread of the rounds' p50s ((p90 - p10) / p50, None for one round), the median within-round
    spread, how many runs the median is over, and each round's p50."""
    from mobilevlm_export.bench import stats

    return {"p50": float(f"{statistics.median(pooled or values):.4g}"),
            "spread_rounds": stats(values)["spread"] if len(values) > 1 else None,
            "spread_runs": float(f"{statistics.median(run_spreads):.4g}"),
            "runs": len(pooled) if pooled else len(values), "rounds": values}


def summarize_row(name: str, rounds: list[dict]) -> dict:
    out = {}
    for part, names in (("text", TEXT_METRICS), ("image", IMAGE_METRICS)):
        records = [r["rows"][name][part] for r in rounds if r["rows"][name].get(part)]
        for m in names:
            pooled = ([x for rec in records for x in rec["samples"][m]]
                      if records and all("samples" in rec for rec in records) else None)
            out[m] = metric([rec["stats"][m]["p50"] for rec in records],
                            [rec["stats"][m]["spread"] for rec in records], pooled) if records else None
    out["vision_share"] = (round(out["vision_ms"]["p50"] / out["ttft_ms"]["p50"], 3)
                           if out["ttft_ms"] and out["ttft_ms"]["p50"] else None)
    out["peak_rss_mb"] = max(r["rows"][name]["peak_rss_mb"] for r in rounds)
    return out


def ratios(ours: str, peer: str, rounds: list[dict]) -> dict:
    """Per round, ours / peer tokens/s (text-only prefill and decode): the median ratio, in how many rounds ours
    was at least as fast, each round's ratio."""
    out = {}
    for kind, m in (("prefill", "prefill_tokens_per_s"), ("decode", "decode_tokens_per_s")):
        rs = [r["rows"][ours]["text"]["stats"][m]["p50"] / r["rows"][peer]["text"]["stats"][m]["p50"] for r in rounds]
        out[kind] = {"median_ratio": round(statistics.median(rs), 3), "rounds_ours_at_least_as_fast":
                     sum(x >= 1 for x in rs), "rounds": len(rs), "ratios": [round(x, 3) for x in rs]}
    return out


# the before / after comparison's metrics: (metric, the request it comes from, lower is better)
BEFORE_AFTER = (("ttft_ms", "image", True), ("vision_ms", "image", True), ("prefill_ms", "image", True),
                ("prefill_tokens_per_s", "text", False), ("decode_tokens_per_s", "text", False))


def before_after(before: str, after: str, rounds: list[dict]) -> dict:
    """Per round, row ``after`` / row ``before`` of each ``BEFORE_AFTER`` metric (each side's p50 in that round):
    the median ratio, its 95 % CI (``ab.median_ci95``; None under 6 rounds), in how many rounds after was faster
    (a lower time, a higher rate), each round's ratio. A metric neither row has in every round is left out."""
    from mobilevlm_export.benchsuite.ab import median_ci95

    out = {}
    for m, part, lower in BEFORE_AFTER:
        pairs = [(r["rows"][before].get(part), r["rows"][after].get(part)) for r in rounds]
        if not pairs or any(b is None or a is None for b, a in pairs):
            continue
        rs = [a["stats"][m]["p50"] / b["stats"][m]["p50"] for b, a in pairs]
        ci = median_ci95(rs)
        out[m] = {"median_ratio": round(statistics.median(rs), 3), "ci95": [round(x, 3) for x in ci] if ci else None,
                  "rounds_after_faster": sum((x < 1) if lower else (x > 1) for x in rs), "rounds": len(rs),
                  "ratios": [round(x, 3) for x in rs]}
    return out
