"""A/B of two snapdragon builds' methods in one process, interleaved: vision_encoder (one image) and text_decoder
prefill (64 random embeddings from position 0), 2 runtime threads, OMP_NUM_THREADS=1.

    PYTHONPATH=$PWD python benchmarks/ab_snapdragon_methods.py BEFORE.pte AFTER.pte [ROUNDS]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    import executorch.kernels.quantized  # noqa: F401
    import torch
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    from executorch.runtime import Runtime, Verification

    _unsafe_reset_threadpool(2)
    paths = {"before": sys.argv[1], "after": sys.argv[2]}
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    rt = Runtime.get()
    progs = {k: rt.load_program(p, verification=Verification.Minimal) for k, p in paths.items()}
    methods = {k: (p.load_method("vision_encoder"), p.load_method("text_decoder")) for k, p in progs.items()}
    hidden = progs["before"].metadata("text_decoder").input_tensor_meta(0).sizes()[-1]
    pixels, tokens = torch.randn(1, 3, 336, 336), 64
    times = {k: {"vision_encoder": [], "prefill": []} for k in paths}
    for vision, _ in methods.values():
        vision.execute([pixels])
    for r in range(rounds):
        for k in ("before", "after") if r % 2 == 0 else ("after", "before"):
            vision, decoder = methods[k]
            t = time.perf_counter()
            vision.execute([pixels])
            times[k]["vision_encoder"].append(time.perf_counter() - t)
            embeds, pos = torch.randn(1, tokens, hidden), torch.arange(tokens)
            t = time.perf_counter()
            decoder.execute([embeds, pos])
            times[k]["prefill"].append(time.perf_counter() - t)
    print(json.dumps({k: {m: {"median_ms": round(1000 * statistics.median(v), 3), "min_ms": round(1000 * min(v), 3),
                              "n": len(v)} for m, v in per.items()} for k, per in times.items()}))


if __name__ == "__main__":
    main()
