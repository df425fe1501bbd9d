"""``python -m mobilevlm_export.benchsuite``: the suite's command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mobilevlm_export.benchsuite.cache import SHAPES
from mobilevlm_export.benchsuite.rows import BY_NAME
from mobilevlm_export.errors import UserError


def parser() -> argparse.ArgumentParser:
    from mobilevlm_export.benchsuite.suite import SuiteConfig

    d = SuiteConfig()
    ap = argparse.ArgumentParser(prog="python -m mobilevlm_export.benchsuite",
                                 description="Build and measure every backend x recipe (ours and the peers) in one "
                                             "run on this host; write results-<shape>.json and BENCHMARKS.md to --out.")
    ap.add_argument("--shape", choices=SHAPES, default=d.shape,
                    help="demo: the bundled trained checkpoint (all rows: ~15 min, cached after); tiny: tiny "
                         "random dims; 1.7b: MobileVLM_V2-1.7B dims, random weights (hours, >10 GB RAM). "
                         "Default %(default)s.")
    ap.add_argument("--only", default=None, help=f"rows, comma-separated (default all): {', '.join(BY_NAME)}")
    ap.add_argument("--rounds", type=int, default=d.rounds, help="interleaved rounds (default %(default)s)")
    ap.add_argument("--runs", type=int, default=d.runs, help="timed requests per row per round (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=d.warmup, help="untimed requests first (default %(default)s)")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: min(4, cores))")
    ap.add_argument("--out", type=Path, default=d.out, help="cache and results (default %(default)s)")
    ap.add_argument("--prompt-tokens", type=int, default=d.prompt_tokens)
    ap.add_argument("--decode-tokens", type=int, default=d.decode_tokens)
    ap.add_argument("--ab", action="store_true", help="paired A/B of ours vs export_llm at each group size, in one "
                                                      "process")
    ap.add_argument("--ab-pairs", type=int, default=d.ab_pairs)
    ap.add_argument("--profile-ops", action="store_true", help="ETDump per-operator profile of ours vs export_llm")
    ap.add_argument("--accuracy-samples", type=int, default=d.accuracy_samples,
                    help="held-out demo pairs per row (0: no accuracy; default %(default)s)")
    ap.add_argument("--bandwidth-mb", type=int, default=d.bandwidth_mb,
                    help="array size of the bandwidth copy (default %(default)s)")
    ap.add_argument("--roof-repeats", type=int, default=d.roof_repeats,
                    help="timed calls of the int8 GEMM roof (default %(default)s)")
    ap.add_argument("--no-plot", action="store_true", help="write no plot image")
    ap.add_argument("--build-only", action="store_true",
                    help="build what is missing (and measure accuracy), time nothing: run several with different "
                         "--only side by side, then the suite alone")
    ap.add_argument("--before", metavar="REF", default=None,
                    help="a git commit of this checkout: its default snapdragon program (its own recipe file), built "
                         "by its own code, timed and measured in the same rounds as today's, and a before / after "
                         "table of the two (use an even --rounds of at least 6 for confidence intervals)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()  # as the CLI does (MVLM_EXPORT_DEBUG=1 lets the libraries' notes through)
    from mobilevlm_export.benchsuite.suite import SuiteConfig, run_suite

    args = parser().parse_args(argv)
    cfg = SuiteConfig(shape=args.shape, only=args.only.split(",") if args.only else None, rounds=args.rounds,
                      runs=args.runs, warmup=args.warmup, threads=args.threads, out=args.out,
                      prompt_tokens=args.prompt_tokens, decode_tokens=args.decode_tokens, ab=args.ab,
                      ab_pairs=args.ab_pairs, profile_ops=args.profile_ops, accuracy_samples=args.accuracy_samples,
                      bandwidth_mb=args.bandwidth_mb, roof_repeats=args.roof_repeats, plot=not args.no_plot,
                      build_only=args.build_only, before=args.before)
    try:
        run_suite(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
