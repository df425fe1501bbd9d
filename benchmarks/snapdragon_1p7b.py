"""The Snapdragon-target benchmark at MobileVLM_V2-1.7B dims (random weights) on this host.

    .venv/bin/python benchmarks/snapdragon_1p7b.py --out /tmp/bench [--recipes snapdragon-8da4w-g32 ...]
        [--skip-peers] [--threads 2] [--build-only]

For each recipe: `mvlm-export build` in a subprocess (its export wall time and peak RSS are the child's own),
then `mvlm-export bench` (2 threads: vision ms, prefill and decode tokens/s). Beside them, in the same run and at
the same decoder shape: ExecuTorch's own LLM export flow (`export_llm`, 8da4w, same group size) and PyTorch eager
fp32 (`benchmarks/peers.py`). Prints one JSON object and writes it to OUT/results.json.

Builds resume: a recipe whose OUT/<recipe>/manifest.json exists, or an export_llm .pte with its record, is not
built again. `--build-only` builds and stops, so builds (single-threaded Python for most of their time) can run
side by side and the timings then run alone: `--recipes A --build-only --skip-peers` and `--recipes --build-only`
in parallel, then the full command.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def ours(ckpt: Path, root: Path, recipe: str, threads: int, prompt: int, decode: int,
         build_only: bool = False) -> dict | None:
    out = root / recipe
    if not (out / "manifest.json").is_file():
        res, wall, rss = _child([*CLI, "build", str(ckpt), "--target", "snapdragon", "--recipe", recipe, "-o",
                                 str(out), "--force", "--no-bench", "--threads", str(threads), "--json"])
        if res.returncode not in (0, 1):  # 1 = parity below the recipe's bounds (random weights): still timed
            raise SystemExit(f"build {recipe} failed ({res.returncode}): {res.stderr[-2000:]}")
        (out / "build.log").write_text(json.dumps({"wall_s": wall, "peak_rss_mb": rss, "rc": res.returncode}))
    if build_only:
        return None
    built = json.loads((out / "build.log").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    res = subprocess.run([*CLI, "bench", str(out), "--threads", str(threads), "--prompt-tokens", str(prompt),
                          "--decode-tokens", str(decode), "--json"], capture_output=True, text=True, check=True)
    bench = json.loads(res.stdout)
    pte = next(a for a in manifest["artifacts"] if a["path"] == "model.pte")
    return {"recipe": recipe, "pte_bytes": pte["bytes"], "export_wall_s": round(built["wall_s"], 1),
            "export_peak_rss_mb": round(built["peak_rss_mb"], 1), "parity_passed": built["rc"] == 0,
            "token_agreement": manifest["verification"]["token_agreement"],
            "quantization": manifest["program"]["quantization"], **bench}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench"))
    ap.add_argument("--recipes", nargs="*", default=["snapdragon-8da4w-g32", "snapdragon-8da4w", "snapdragon-fp32"])
    ap.add_argument("--build-only", action="store_true", help="build what is missing, measure nothing")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(args.out)
    results: dict = {"host_threads": args.threads, "ours": []}
    for recipe in args.recipes:
        row = ours(ckpt, args.out, recipe, args.threads, args.prompt_tokens, args.decode_tokens, args.build_only)
        if row:
            results["ours"].append(row)
            print(json.dumps(row), file=sys.stderr)
    if not args.skip_peers:
        sys.path.insert(0, str(HERE))
        import peers

        peer_dir = args.out / "export_llm_8da4w_g32"
        record = peer_dir / "export.json"
        if not record.is_file():
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(peers.export_llm(peer_dir, group_size=32, max_seq_len=512)))
        if not args.build_only:
            exported = json.loads(record.read_text())
            results["export_llm"] = {**exported, **peers.measure_llama_pte(
                Path(exported["pte"]), args.prompt_tokens, args.decode_tokens, args.threads)}
            results["eager_fp32"] = peers.measure_eager(args.prompt_tokens, 16, args.threads)
    if args.build_only:
        return
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
