"""Decode speed of the dynamic-KV decoder on ONNX Runtime: the session that keeps the cache in IO-bound ping-pong
buffers (``runtime.sessions.BoundKVSession``, what run/verify/bench use) against the numpy round trip it replaced
(every call's ``present.*`` returned as numpy arrays and fed back as the next ``past_key_values.*``), on the same
build and the same runner, interleaved in one process.

    .venv/bin/python benchmarks/kv_binding.py --out build/kv-binding [--layers 4] [--rounds 5]

Builds (once, cached in --out) MobileVLM_V2-1.7B-width checkpoints with --layers decoder layers (random weights) for
``onnx-fp32`` and ``orin-int4``, then per build: prefill of --prompt positions and --decode steps, alternating the
two sessions for --rounds rounds. Writes ``kv-binding.json`` (every step time, the medians, the ratio, the CPU
flags) under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from mobilevlm_export.graphs.contracts import kv_names
from mobilevlm_export.runtime.artifacts import open_artifacts
from mobilevlm_export.runtime.sessions import BoundKVSession


class NumpyRoundTripSession:
    """The replaced session (as it was at 4cb6b9b): the whole cache goes through numpy between calls."""

    def __init__(self, runner, layers: int, capacity: int) -> None:
        self.runner, self.layers, self.capacity = runner, layers, capacity
        spec = next(t for t in runner.contract.inputs if t.name == kv_names(0)[0])
        self._dtype, self._dims = spec.dtype, spec.dims
        self._past: dict[str, np.ndarray] = {}
        self._length = 0

    def _run(self, embeds: np.ndarray) -> np.ndarray:
        b, s = embeds.shape[:2]
        feeds = {"inputs_embeds": embeds, "attention_mask": np.ones((b, self._length + s), np.int64),
                 "position_ids": np.broadcast_to(np.arange(self._length, self._length + s), (b, s)).copy(),
                 **self._past}
        out = self.runner.run(feeds)
        for i in range(self.layers):
            pk, pv, ok, ov = kv_names(i)
            self._past[pk], self._past[pv] = out[ok], out[ov]
        self._length += s
        return out["logits"][0]

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        shape = tuple(0 if d == "past" else embeds.shape[0] if d == "batch" else d for d in self._dims)
        self._past = {n: np.zeros(shape, self._dtype) for i in range(self.layers) for n in kv_names(i)[:2]}
        self._length = 0
        return self._run(embeds)

    def step(self, embeds: np.ndarray) -> np.ndarray:
        return self._run(embeds)


def checkpoint(out: Path, layers: int) -> Path:
    from mobilevlm_export.checkpoint.synthetic import MOBILEVLM_V2_1_7B, write_checkpoint

    path = out / f"ckpt-1.7b-{layers}l"
    if not (path / "config.json").is_file():
        import torch

        # the decoder at full width; a 2-layer vision tower (not timed here)
        dims = replace(MOBILEVLM_V2_1_7B, layers=layers, vision_layers=2)
        write_checkpoint(path, dims, shards=2, dtype=torch.float16)
    return path


def build(ckpt: Path, out: Path, target: str, recipe: str) -> Path:
    path = out / recipe
    if not (path / "manifest.json").is_file():
        cmd = [str(Path(sys.executable).with_name("mvlm-export")), "build", str(ckpt), "--target", target,
               "--recipe", recipe, "-o", str(path), "--no-bench", "--threads", "2", "--force"]
        rc = subprocess.run(cmd).returncode
        if rc not in (0, 1) or not (path / "manifest.json").is_file():  # 1: parity on random weights; still built
            raise SystemExit(f"{' '.join(cmd)}: exit {rc}")
    return path


def decode_steps(session, embeds: np.ndarray, steps: np.ndarray) -> list[float]:
    session.prefill(embeds)
    times = []
    for x in steps:
        t0 = time.perf_counter()
        session.step(x[None, None])
        times.append(time.perf_counter() - t0)
    return times


def measure(path: Path, prompt: int, decode: int, rounds: int, threads: int) -> dict:
    art = open_artifacts(path)
    runners = art.runners(threads)
    dec = runners["decoder"]
    dims = art.manifest["model"]["dims"]
    ranges = dec.contract.ranges
    dtype = dec.contract.inputs[0].dtype
    rng = np.random.default_rng(0)
    embeds = rng.standard_normal((1, prompt, dims["hidden"])).astype(dtype)
    steps = rng.standard_normal((decode, dims["hidden"])).astype(dtype)
    sessions = {"io_binding": BoundKVSession(dec, dims["layers"], ranges["past"].max + 1, ranges["seq"].max),
                "numpy_round_trip": NumpyRoundTripSession(dec, dims["layers"], ranges["past"].max + 1)}
    # same logits from both (the same graph and inputs)
    a, b = (s.prefill(embeds) for s in sessions.values())
    same = float(np.max(np.abs(np.asarray(a[-1], np.float64) - b[-1])))
    decode_steps(sessions["io_binding"], embeds, steps[:4])  # warm-up, both
    decode_steps(sessions["numpy_round_trip"], embeds, steps[:4])
    times: dict[str, list[list[float]]] = {k: [] for k in sessions}
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(sessions)[::-1]
        for name in order:
            times[name].append(decode_steps(sessions[name], embeds, steps))
    tok_s = {k: [len(t) / sum(t) for t in v] for k, v in times.items()}
    med = {k: float(np.median(v)) for k, v in tok_s.items()}
    return {"build": path.name, "target": art.manifest["target"], "layers": dims["layers"],
            "hidden": dims["hidden"], "cache_dtype": dtype, "prompt_positions": prompt, "decode_steps": decode,
            "rounds": rounds, "threads": threads, "prefill_logits_max_abs_diff": same,
            "decode_tokens_per_s": {k: [round(x, 3) for x in v] for k, v in tok_s.items()},
            "median_decode_tokens_per_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_io_binding_over_numpy": round(med["io_binding"] / med["numpy_round_trip"], 3),
            "rounds_io_binding_faster": sum(x > y for x, y in zip(tok_s["io_binding"], tok_s["numpy_round_trip"],
                                                                  strict=True))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/kv-binding"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=208)  # 144 image tokens + 64 text
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint(args.out, args.layers)
    paths = [build(ckpt, args.out, target, recipe) for target, recipe in (("onnx", "onnx-fp32"), ("orin", "orin-int4"))]
    results = []
    for path, recipe in zip(paths, ("onnx-fp32", "orin-int4"), strict=True):
        results.append(measure(path, args.prompt, args.decode, args.rounds, args.threads))
        print(json.dumps(results[-1]["median_decode_tokens_per_s"]), recipe,
              "ratio", results[-1]["ratio_io_binding_over_numpy"], flush=True)
    from mobilevlm_export.bench import environment

    record = {"what": __doc__.splitlines()[0], "environment": environment(args.threads),
              "python": platform.python_version(), "results": results}
    (args.out / "kv-binding.json").write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
