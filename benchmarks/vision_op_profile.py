"""ExecuTorch's per-operator profile (ETDump) of a vision encoder program: where one image's time goes.

Loads each given ``.pte`` (its ``vision_encoder`` method, e.g. the two programs ``vision_encoder_ab.py`` wrote)
with ETDump on, runs one warm-up and ``--images`` timed images, and summarizes per image (``opprofile.summarize``:
the top event names by median ms per image, their calls per image and median ms per call; XNNPACK's operators
appear by their debug names, e.g. "Fully Connected (NC, QD8, F32, QC4W)", inside ``DELEGATE_CALL``). Profiling adds
overhead of its own: compare shares within one profile. Writes JSON to OUT.

    PYTHONPATH=$PWD python benchmarks/vision_op_profile.py OUT.json NAME=PROGRAM.pte ... [--images 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("programs", nargs="+", help="NAME=PATH.pte")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()

    from mobilevlm_export.quiet import quiet_libraries

    quiet_libraries()
    import torch
    from executorch.extension.pybindings import portable_lib

    from mobilevlm_export.backends.executorch import set_threads
    from mobilevlm_export.benchsuite.opprofile import profile_method

    set_threads(args.threads)
    pixels = torch.randn(1, 3, 336, 336)
    out = {"what": __doc__.split("\n\n")[0], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "threads": args.threads, "images": args.images, "programs": {}}
    for spec in args.programs:
        name, path = spec.split("=", 1)
        module = portable_lib._load_for_executorch(path, enable_etdump=True)
        summary = profile_method(module, "vision_encoder", (pixels,), args.images, args.top)
        summary["images"] = summary.pop("runs")
        out["programs"][name] = {"path": path, **summary}
        print(name, json.dumps(summary["ms_per_step"]), flush=True)
        del module
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
