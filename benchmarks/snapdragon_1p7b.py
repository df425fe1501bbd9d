"""The Snapdragon-target benchmark at MobileVLM_V2-1.7B dims (random weights) on this host.

    .venv/bin/python benchmarks/snapdragon_1p7b.py --out /tmp/bench [--recipes snapdragon-8da4w-g32 ...]
        [--skip-peers] [--threads 2] [--rounds 3] [--build-only]

For each recipe: `mvlm-export build` in a subprocess (its export wall time and peak RSS are the child's own).
Beside them, at the same decoder shape: ExecuTorch's own LLM export flow (`export_llm`, 8da4w, group size 32) and
PyTorch eager fp32 (`benchmarks/peers.py`). Timings run in interleaved rounds, each program in a fresh process
(`mvlm-export bench`, `peers.py --pte`; 2 threads; medians of 3 inside a round), the order reversed every other
round: the host's run-to-run spread (±20 %) is larger than the differences being measured, so the result is the
median over rounds and, per recipe, the ratio to export_llm in each round. Prints one JSON object and writes it
to OUT/results.json.

Builds resume: a recipe whose OUT/<recipe>/manifest.json exists, or an export_llm .pte with its record, is not
built again. `--build-only` builds and stops, so builds (single-threaded Python for most of their time) can run
side by side and the timings then run alone: `--recipes A --build-only --skip-peers` and `--recipes --build-only`
in parallel, then the full command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "mobilevlm_export.cli"]


def make_checkpoint(root: Path) -> Path:
    import torch

    from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, write_checkpoint

    ckpt = root / "ckpt"
    if not (ckpt / "config.json").is_file():
        write_checkpoint(ckpt, MOBILEVLM_V2_1_7B, projector="ldpnetv2", shards=2, dtype=torch.float16)
    return ckpt


def _child(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``; (result, wall seconds, the child's peak RSS in MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return res, wall, (peak if peak > before else float("nan")) / 1024


def build_ours(ckpt: Path, root: Path, recipe: str, threads: int) -> dict:
    """Build ``recipe`` into ROOT/<recipe> unless it is there; the build's record (sizes, wall time, peak RSS)."""
    out = root / recipe
    if not (out / "manifest.json").is_file():
        res, wall, rss = _child([*CLI, "build", str(ckpt), "--target", "snapdragon", "--recipe", recipe, "-o",
                                 str(out), "--force", "--no-bench", "--threads", str(threads), "--json"])
        if res.returncode not in (0, 1):  # 1 = parity below the recipe's bounds (random weights): still timed
            raise SystemExit(f"build {recipe} failed ({res.returncode}): {res.stderr[-2000:]}")
        (out / "build.log").write_text(json.dumps({"wall_s": wall, "peak_rss_mb": rss, "rc": res.returncode}))
    built = json.loads((out / "build.log").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    pte = next(a for a in manifest["artifacts"] if a["path"] == "model.pte")
    return {"recipe": recipe, "pte_bytes": pte["bytes"], "export_wall_s": round(built["wall_s"], 1),
            "export_peak_rss_mb": round(built["peak_rss_mb"], 1), "parity_passed": built["rc"] == 0,
            "token_agreement": manifest["verification"]["token_agreement"],
            "quantization": manifest["compile"]["log"], "versions": manifest["versions"]}


def time_ours(root: Path, recipe: str, threads: int, prompt: int, decode: int) -> dict:
    """`mvlm-export bench` on ROOT/<recipe> in a fresh process: vision ms, prefill and decode tokens/s."""
    res = subprocess.run([*CLI, "bench", str(root / recipe), "--threads", str(threads), "--prompt-tokens",
                          str(prompt), "--decode-tokens", str(decode), "--text-only", "--json"],
                         capture_output=True, text=True,
                         check=True)
    host = json.loads(res.stdout)["host"]
    return {"vision_ms": host["vision_ms"], "prefill_tok_s": host["prefill_tokens_per_s"],
            "decode_tok_s": host["decode_tokens_per_s"], "load_avg": list(os.getloadavg())}


def time_export_llm(pte: Path, threads: int, prompt: int, decode: int) -> dict:
    """``peers.py --pte`` on export_llm's program in a fresh process (the same loop shape as ours)."""
    res = subprocess.run([sys.executable, str(HERE / "peers.py"), "--pte", str(pte), "--skip-eager", "--threads",
                          str(threads), "--prompt-len", str(prompt), "--decode-tokens", str(decode)],
                         capture_output=True, text=True, check=True)
    r = json.loads(res.stdout)["export_llm_pte"]
    return {"prefill_tok_s": r["prefill_tok_s"], "decode_tok_s": r["decode_tok_s"], "load_avg": list(os.getloadavg())}


def summarize(rounds: list[dict], names: list[str]) -> dict:
    """Per program: the median over rounds of each timing; per recipe: how it fared against export_llm round by
    round (ratio of tokens/s, ours / export_llm)."""
    med = {n: {k: round(statistics.median(r[n][k] for r in rounds), 2) for k in rounds[0][n] if k != "load_avg"}
           for n in names}
    versus = {}
    for n in names if "export_llm" in names else []:  # --skip-peers: no ratios
        if n == "export_llm":
            continue
        v = {}
        for k in ("prefill_tok_s", "decode_tok_s"):
            ratios = [r[n][k] / r["export_llm"][k] for r in rounds]
            v[k] = {"median_ratio": round(statistics.median(ratios), 3), "rounds_ahead": sum(x >= 1 for x in ratios),
                    "ratios": [round(x, 3) for x in ratios]}
        versus[n] = v
    return {"median": med, "versus_export_llm": versus}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--recipes", nargs="*", default=["snapdragon-8da4w-g32", "snapdragon-8da4w", "snapdragon-fp32"])
    ap.add_argument("--build-only", action="store_true", help="build what is missing, measure nothing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the host is noisy)")
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.out)
    builds = {r: build_ours(ckpt, args.out, r, args.threads) for r in args.recipes}
    sys.path.insert(0, str(HERE))
    import peers

    exported = None
    if not args.skip_peers:
        record = args.out / "export_llm_8da4w_g32" / "export.json"
        if not record.is_file():
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(peers.export_llm(record.parent, group_size=32, max_seq_len=512)))
        exported = json.loads(record.read_text())
    if args.build_only:
        return
    rounds = []
    order = list(args.recipes) + (["export_llm"] if exported else [])
    for i in range(args.rounds):
        row = {}
        for name in order if i % 2 == 0 else order[::-1]:  # alternate who goes first
            if name == "export_llm":
                row[name] = time_export_llm(Path(exported["pte"]), args.threads, args.prompt_tokens,
                                            args.decode_tokens)
            else:
                row[name] = time_ours(args.out, name, args.threads, args.prompt_tokens, args.decode_tokens)
        rounds.append(row)
        print(json.dumps({"round": i, **row}), file=sys.stderr, flush=True)
    names = list(rounds[0])
    results = {"host_threads": args.threads, "prompt_tokens": args.prompt_tokens,
               "decode_tokens": args.decode_tokens, "ours": builds, "export_llm": exported,
               "rounds": rounds, **summarize(rounds, names)}
    if exported:
        results["eager_fp32"] = peers.measure_eager(args.prompt_tokens, 16, args.threads)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
