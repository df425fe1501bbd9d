"""Scale-only HQQ on MobileVLM_V2-1.7B's weight shapes: torchao's ``_choose_qparams_and_quantize_scale_only_hqq``
against ``quantize.hqq.scale_only_hqq`` (the same bits, checked on every weight), interleaved in one process.

    .venv/bin/python benchmarks/hqq_speed.py --out benchmarks/results/DATE-hqq-speed.json [--rounds 3]

Random fp32 weights (std 0.02) of the decoder's shapes in groups of 128 (int4) and the vision tower's per channel
(int8); each round times torchao then ours (the order reversed every other round). Writes every time, the medians,
the ratio per shape and the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mobilevlm_export.bench import cpu_info
from mobilevlm_export.quantize.hqq import BLOCK_BYTES, scale_only_hqq

# (what, [out, in], group, bits): the decoder's q/o and gate/up/down projections, the vision tower's fc1
SHAPES = [("decoder q_proj", (2048, 2048), 128, 4), ("decoder gate_proj", (5632, 2048), 128, 4),
          ("decoder down_proj", (2048, 5632), 128, 4), ("vision fc1 per channel", (4096, 1024), 1024, 8)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from torchao.quantization.quant_primitives import _choose_qparams_and_quantize_scale_only_hqq as torchao_hqq

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for what, shape, group, bits in SHAPES:
        weight = torch.randn(shape) * 0.02
        qmin, qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        times: dict[str, list[float]] = {"torchao": [], "ours": []}
        for r in range(args.rounds):
            for name in (("torchao", "ours") if r % 2 == 0 else ("ours", "torchao")):
                t = time.perf_counter()
                if name == "torchao":
                    want = torchao_hqq(weight, [1, group], qmin, qmax)
                else:
                    got = scale_only_hqq(weight, group, qmin, qmax)
                times[name].append(round(time.perf_counter() - t, 4))
            if not (torch.equal(got[0], want[0].to(torch.int8)) and torch.equal(got[1], want[1])):
                raise SystemExit(f"{what}: not the same bits as torchao's")
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"weight": what, "shape": list(shape), "group": group, "bits": bits, "seconds": times,
                     "median_s": med, "ours_over_torchao": round(med["ours"] / med["torchao"], 4), "same_bits": True})
        print(f"{what:26} {shape}: torchao {med['torchao']:.3f} s, ours {med['ours']:.3f} s "
              f"({med['ours'] / med['torchao']:.3f})")
    model, flags = cpu_info()
    result = {"what": __doc__.splitlines()[0], "threads": args.threads, "rounds": args.rounds,
              "block_bytes": BLOCK_BYTES, "torch": torch.__version__, "cpu": model, "cpu_flags": flags, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
