"""Where XNNPACK's preprocess spends a snapdragon build's time: per delegate subgraph (its call_function nodes and
seconds) and per XNNPACK pass (seconds summed over the subgraphs), on the demo checkpoint (default recipe,
--no-bench). Timers are wrapped around ``XnnpackBackend.preprocess`` and the ``_transform`` its pass manager calls
per pass (profiling only: nothing else changes). Writes JSON to OUT.

    PYTHONPATH=$PWD python benchmarks/profile_xnnpack_passes.py OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    out_json = Path(sys.argv[1])
    from executorch.backends.xnnpack import _passes as passes_module
    from executorch.backends.xnnpack import xnnpack_preprocess as xp

    preprocess = xp.XnnpackBackend.preprocess
    subgraphs, per_pass = [], {}

    def timed_preprocess(edge_program, compile_specs):
        nodes = sum(1 for n in edge_program.graph.nodes if n.op == "call_function")
        t = time.perf_counter()
        result = preprocess(edge_program, compile_specs)
        subgraphs.append({"nodes": nodes, "seconds": round(time.perf_counter() - t, 3)})
        return result

    transform = passes_module._transform

    def timed_transform(ep, p, *args, **kwargs):
        t = time.perf_counter()
        result = transform(ep, p, *args, **kwargs)
        name = type(p).__name__
        per_pass[name] = per_pass.get(name, 0.0) + time.perf_counter() - t
        return result

    xp.XnnpackBackend.preprocess = staticmethod(timed_preprocess)
    passes_module._transform = timed_transform
    from mobilevlm_export.cli import main as cli

    with tempfile.TemporaryDirectory() as tmp:
        sys.argv = ["mvlm-export", "build", "--target", "snapdragon", "-o", f"{tmp}/out", "--no-bench", "--threads",
                    "2", "--json"]
        t0 = time.perf_counter()
        try:
            cli()
        except SystemExit:
            pass
        wall = time.perf_counter() - t0
        record = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
    result = {"what": __doc__.split("\n\n")[0], "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "build_wall_s": round(wall, 1), "stages": record.get("build", {}).get("stages"),
              "preprocess_seconds": round(sum(s["seconds"] for s in subgraphs), 2), "subgraphs": subgraphs,
              "passes_seconds": {k: round(v, 2) for k, v in sorted(per_pass.items(), key=lambda kv: -kv[1])}}
    out_json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
