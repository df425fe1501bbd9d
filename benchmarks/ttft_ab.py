"""Time to first token of two builds of one checkpoint, each run by the code that built it, in interleaved rounds.

Each round runs ``mvlm-export bench DIR --json`` (image + ``--prompt-tokens`` text tokens, ``--decode-tokens``
steps, ``--warmup`` + ``--runs`` requests, ``--threads`` runtime threads) once per side in a fresh process, with
the package at that side's source folder first on ``PYTHONPATH`` (the before side's runtime is the code that wrote
it, as a user of that version had it), the two sides' order alternating every round. The ExecuTorch processes get
``backends.executorch.RUNTIME_PROCESS_ENV`` (one OpenMP thread for PyTorch beside the runtime's threadpool), as the
suite gives them. Per round: each side's p50 time to first token, vision and prefill ms; the result: per-round
ratios after / before of TTFT (median, its 95 % CI by ``benchsuite.ab.median_ci95``: at least 6 rounds), vision and
prefill, each side's pooled medians over every timed request and its vision share. Writes JSON to OUT.

    python benchmarks/ttft_ab.py OUT.json --before DIR:SRC --after DIR:SRC [--rounds 6] [--runs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def bench(build: Path, src: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mobilevlm_export.cli", "bench", str(build), "--prompt-tokens",
           str(args.prompt_tokens), "--decode-tokens", str(args.decode_tokens), "--runs", str(args.runs), "--warmup",
           str(args.warmup), "--threads", str(args.threads), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} (PYTHONPATH={src}): exit {res.returncode}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)["host"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--before", required=True, help="BUILD_DIR:SOURCE_DIR")
    ap.add_argument("--after", required=True, help="BUILD_DIR:SOURCE_DIR")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=4)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from mobilevlm_export.benchsuite.ab import median_ci95

    sides = {name: tuple(Path(p).resolve() for p in getattr(args, name).split(":")) for name in ("before", "after")}
    rounds = []
    for i in range(args.rounds):
        order = ("before", "after") if i % 2 == 0 else ("after", "before")
        rec = {"round": i, "order": list(order)}
        for name in order:
            build, src = sides[name]
            rec[name] = bench(build, src, args)
            print(f"round {i + 1}/{args.rounds} {name}: TTFT {rec[name]['ttft_ms']:.0f} ms (vision "
                  f"{rec[name]['vision_ms']:.0f}, prefill {rec[name]['prefill_ms']:.0f})", flush=True)
        rounds.append(rec)

    def ratio(metric: str) -> dict:
        rs = [r["after"][metric] / r["before"][metric] for r in rounds]
        return {"median": round(statistics.median(rs), 3), "ci95": [round(x, 3) for x in median_ci95(rs) or []],
                "rounds_after_faster": sum(x < 1 for x in rs), "per_round": [round(x, 3) for x in rs]}

    summary = {}
    for name in ("before", "after"):
        pooled = {m: statistics.median(x for r in rounds for x in r[name]["samples"][m])
                  for m in ("ttft_ms", "vision_ms", "prefill_ms")}
        summary[name] = {**{m: round(v, 1) for m, v in pooled.items()},
                         "vision_share": round(pooled["vision_ms"] / pooled["ttft_ms"], 3),
                         "peak_rss_mb": max(r[name]["peak_rss_mb"] for r in rounds),
                         "build": str(sides[name][0]), "source": str(sides[name][1])}
    flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    result = {"what": __doc__.split("\n\n")[0], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "settings": {k: v for k, v in vars(args).items() if k not in ("out", "before", "after")},
              "ttft_ratio_after_over_before": ratio("ttft_ms"), "vision_ratio": ratio("vision_ms"),
              "prefill_ratio": ratio("prefill_ms"), "sides": summary, "rounds": rounds,
              "cpu_flags_of_interest": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "fma"))}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("ttft_ratio_after_over_before", "vision_ratio", "prefill_ratio")}))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
