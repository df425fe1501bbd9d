"""Where a decode step's time goes: ExecuTorch's own per-operator profile (ETDump) of our text decoder, and of an
export_llm program beside it, in one process.

    .venv/bin/python benchmarks/op_profile.py /tmp/bench/snapdragon-8da4w-g32 \
        [--peer /tmp/bench/export_llm_8da4w_g32/llama_8da4w_g32.pte] [--threads 2] [--prompt 64] [--rounds 6]

Each program prefills the same number of random tokens, then the two alternate bursts of 8 decode steps at the
same cache positions (who goes first alternates). The runtime records every instruction (delegate calls, portable
kernels and the XNNPACK operators inside each delegate call) with its start and end; per decode step this sums
the time of each event name and prints, per program, the medians over steps in ms (``Method::execute`` is the
whole step, ``DELEGATE_CALL`` contains the XNNPACK operators) and the median time of one call of each portable
kernel. Profiling adds overhead of its own; compare programs within one run of this script, not with
``ab_decoder.py``'s tokens/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

BURST = 8


def _steps(etdump: Path, skip: int) -> tuple[list[dict[str, float]], dict[str, list[float]]]:
    """Per run (one method execution) the total ms per event name, and every single call's ms per event name;
    the first ``skip`` runs (prefill) are left out."""
    from executorch.devtools.etdump.serialize import deserialize_from_etdump_flatcc

    dump = deserialize_from_etdump_flatcc(etdump.read_bytes())
    steps, calls = [], defaultdict(list)
    runs = [r for r in dump.run_data if r.name == "Execute"]
    for run in runs[skip:]:
        totals: dict[str, float] = defaultdict(float)
        for ev in run.events:
            p = ev.profile_event
            # runtime events carry a name, XNNPACK's operators a debug string such as "Add (ND) #3"
            name = p and (p.name or (p.delegate_debug_id_str or "").split(" #")[0])
            if not name:
                continue
            ms = (p.end_time - p.start_time) / 1e6
            totals[name] += ms
            calls[name].append(ms)
        if totals:
            steps.append(totals)
    return steps, calls


def _summary(steps: list[dict[str, float]], calls: dict[str, list[float]], top: int = 10) -> dict:
    names = {n for s in steps for n in s}
    per_step = {n: statistics.median(s.get(n, 0.0) for s in steps) for n in names}
    ranked = sorted(per_step.items(), key=lambda kv: -kv[1])[:top]
    return {"decode_steps": len(steps),
            "ms_per_step": {n: round(v, 3) for n, v in ranked},
            "calls_per_step": {n: round(len(calls[n]) / len(steps), 1) for n, _ in ranked},
            "ms_per_call": {n: round(statistics.median(calls[n]), 4) for n, _ in ranked}}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ours", type=Path, help="a `build --target snapdragon` output directory")
    ap.add_argument("--peer", type=Path, help="an export_llm .pte of the same decoder shape")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=6, help="decode bursts of 8 steps per program")
    args = ap.parse_args(argv)

    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401  (llama.* kernels)
    import executorch.kernels.quantized  # noqa: F401  (quantized embeddings)
    import torch
    from executorch.extension.pybindings import portable_lib

    from mobilevlm_export.backends.executorch import set_threads

    manifest = json.loads((args.ours / "manifest.json").read_text())
    dims = manifest["model"]["dims"]
    if args.prompt + BURST > manifest["graphs"]["decoder"]["contract"]["ranges"]["seq"]["max"]:
        raise SystemExit(f"--prompt {args.prompt} + {BURST} decode steps exceed the cache")
    set_threads(args.threads)
    ours = portable_lib._load_for_executorch(str(args.ours / "model.pte"), enable_etdump=True)
    peer = portable_lib._load_for_executorch(str(args.peer), enable_etdump=True) if args.peer else None
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, dims["vocab"], (1, args.prompt), generator=gen)

    def run_ours(pos: int, count: int) -> None:
        emb = torch.randn(1, count, dims["hidden"], generator=gen)
        ours.run_method("text_decoder", (emb, torch.arange(pos, pos + count)))

    def run_peer(pos: int, count: int) -> None:
        tokens = ids if count > 1 else torch.tensor([[int(ids[0, pos % args.prompt])]])
        peer.run_method("forward", (tokens, torch.tensor([pos])))

    programs = [("ours", ours, run_ours)] + ([("export_llm", peer, run_peer)] if peer else [])
    for _, _, run in programs:
        run(0, args.prompt)
    for r in range(args.rounds):
        for _, _, run in (programs if r % 2 == 0 else programs[::-1]):
            for i in range(BURST):
                run(args.prompt + i, 1)
    out = {"ours": str(args.ours), "export_llm": str(args.peer) if peer else None, "threads": args.threads,
           "prompt_tokens": args.prompt, "rounds": args.rounds}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module, _ in programs:
            path = Path(tmp) / f"{name}.etdp"
            module.write_etdump_result_to_file(str(path))
            out[name] = _summary(*_steps(path, skip=1))
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
