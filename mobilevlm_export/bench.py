"""Latency of a built directory on this host, and the target device's figures predicted from its profile.

One measurement path for every backend (ONNX Runtime, ExecuTorch, TensorRT): the runtime's own stages
(``runtime.generator.VLMGenerator``) on synthetic inputs, ``warmup`` untimed runs then ``runs`` timed ones, each run
a whole request: vision encoder, prefill, ``decode_tokens`` greedy decode steps (each feeding back the argmax), so
the decode loop is warmed like the rest.

Prefill, as ``run``'s timings report it: embedding the prompt's text tokens, splicing the image embeddings in, and
the decoder over every prompt position (one image's tokens, unless ``text_only``, plus ``prompt_tokens`` text
tokens) up to the first token's logits; prefill tokens/s counts those positions. Time to first token = vision +
prefill (of the same run). A text-only request runs no vision encoder: its vision time is 0 and time to first
token is its prefill.

Per metric (``METRICS``): p50, p90, min, max, mean and the spread, (p90 - p10) / p50; a note when a spread exceeds
``NOISY_SPREAD``. Percentiles are of each metric's own samples (for a rate, p90 is a fast run). Predicted: a
roofline per device profile (``profiles.DeviceProfile.predict``) from the costs the build recorded. Torch-free.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX, prompt_length

# synthetic prompt ids are drawn above the special ids (unk, bos, eos)
FIRST_TEXT_ID = 3
# metric -> label, in the order the table shows them
METRICS = {
    "vision_ms": "vision ms",
    "ttft_ms": "time to first token ms",
    "prefill_ms": "prefill ms",
    "prefill_tokens_per_s": "prefill tok/s",
    "decode_ms_per_token": "decode ms/token",
    "decode_tokens_per_s": "decode tok/s",
}
NOISY_SPREAD = 0.10  # a metric whose (p90 - p10) / p50 exceeds this gets a note
# ISA flags of interest, as /proc/cpuinfo names them (x86 "flags", ARM "Features"; asimddp is dotprod)
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "fma", "f16c",
             "asimd", "neon", "asimddp", "i8mm", "sve", "sve2")
BUILD_RUNS, BUILD_WARMUP = 3, 1  # a build's own measurement: small, so builds stay fast


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sig(x: float) -> float:
    """``x`` to 4 significant digits (fast stages of small models stay non-zero)."""
    return float(f"{x:.4g}")


def stats(samples: list[float]) -> dict[str, float]:
    """p50, p90, min, max, mean and spread = (p90 - p10) / p50 of ``samples`` (at least one; linear-interpolated
    percentiles), to 4 significant digits."""
    a = np.asarray(samples, np.float64)
    p10, p50, p90 = np.percentile(a, [10, 50, 90])
    return {"p50": _sig(p50), "p90": _sig(p90), "min": _sig(a.min()), "max": _sig(a.max()), "mean": _sig(a.mean()),
            "spread": _sig((p90 - p10) / p50) if p50 else 0.0}


def noisy(table: dict[str, dict[str, float]], limit: float = NOISY_SPREAD) -> list[str]:
    """One note per metric of ``table`` (metric -> ``stats``) whose spread exceeds ``limit``."""
    return [f"{m}: spread (p90 - p10) / p50 = {s['spread']:.1%} > {limit:.0%}, a noisy host: quiet it, raise --runs"
            for m, s in table.items() if s["spread"] > limit]


@dataclass(frozen=True)
class Workload:
    """One synthetic request: prompt ids (with an image placeholder unless text-only), pixels, decode steps."""

    ids: list[int]
    pixels: np.ndarray
    positions: int  # prefilled positions, image tokens included
    decode_tokens: int
    has_image: bool = True  # False (text-only): the vision encoder is not run


def workload(art, decoder, prompt_tokens: int, decode_tokens: int, text_only: bool) -> Workload:
    """DIR's synthetic request. ``UserError`` naming the flags when the prompt is longer than ``decoder`` (a
    ``runtime.sessions.DecoderSession``) takes in one prefill, or the prompt plus the decoded tokens do not fit
    its capacity (nothing is clamped)."""
    capacity = decoder.capacity
    dims = art.manifest["model"]["dims"]
    rng = np.random.default_rng(0)
    ids = rng.integers(FIRST_TEXT_ID, dims["vocab"], prompt_tokens).tolist()
    if not text_only:
        ids = [IMAGE_TOKEN_INDEX, *ids]
    positions = prompt_length(ids, dims["image_tokens"])
    image = "" if text_only else " with the image"
    if positions + decode_tokens > capacity:
        raise UserError(f"--prompt-tokens {prompt_tokens} ({positions} positions{image}) + --decode-tokens "
                        f"{decode_tokens} exceed the decoder's capacity of {capacity} positions")
    if positions > decoder.max_prompt:
        key = getattr(decoder, "limit_key", None)
        raise UserError(f"--prompt-tokens {prompt_tokens} ({positions} positions{image}) exceeds the "
                        f"{decoder.max_prompt} positions the decoder takes in one prefill"
                        + (f" (recipe key {key})" if key else ""))
    size = dims["image_size"]
    pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    return Workload(ids, pixels, positions, decode_tokens, has_image=not text_only)


def one_run(pipe, w: Workload) -> dict[str, float]:
    """Time one request on ``pipe``: every metric of ``METRICS`` for this run (vision 0 without an image)."""
    t0 = time.perf_counter()
    image = pipe.image_embeds(w.pixels) if w.has_image else None
    t1 = time.perf_counter() if w.has_image else t0
    logits = pipe.prefill(w.ids, image)
    t2 = time.perf_counter()
    for _ in range(w.decode_tokens):
        logits = pipe.step(int(logits.argmax()))
    t3 = time.perf_counter()
    vision, prefill, decode = t1 - t0, t2 - t1, (t3 - t2) / w.decode_tokens
    return {"vision_ms": vision * 1e3, "ttft_ms": (vision + prefill) * 1e3, "prefill_ms": prefill * 1e3,
            "prefill_tokens_per_s": w.positions / prefill, "decode_ms_per_token": decode * 1e3,
            "decode_tokens_per_s": 1 / decode}


def measure(art, threads: int | None = None, prompt_tokens: int = 64, decode_tokens: int = 32, runs: int = 10,
            warmup: int = 2, text_only: bool = False) -> dict:
    """``warmup`` untimed then ``runs`` timed requests on DIR's runners (``one_run``); ``art`` has ``manifest``,
    ``runners(threads)``, ``generator(runners)`` and ``bench_notes()`` (``runtime.artifacts.ArtifactSet``, or the
    suite's peer programs). The ``host`` record: the ``threads`` the runtime ran on (the decoder runner's
    ``threads_used()``; ``threads_requested``: the flag's, None for the default), each
    metric's p50 under its historical key (``decode_ms_per_token`` only in ``stats``), ``stats`` (metric ->
    ``stats``), ``samples`` (metric -> every timed run's value, in order, for pooling over rounds), ``notes``
    (``noisy``), ``runs``, ``warmup``, the workload and the process's peak RSS.
    ``UserError`` when ``runs`` < 1, ``warmup`` < 0 or ``decode_tokens`` < 1, or the request does not fit."""
    if runs < 1 or warmup < 0 or decode_tokens < 1:
        raise UserError(f"--runs {runs}, --warmup {warmup}, --decode-tokens {decode_tokens}: need runs >= 1, "
                        "warmup >= 0 and decode tokens >= 1")
    runners = art.runners(threads)
    pipe = art.generator(runners)
    w = workload(art, pipe.decoder, prompt_tokens, decode_tokens, text_only)
    for _ in range(warmup):
        one_run(pipe, w)
    timed = [one_run(pipe, w) for _ in range(runs)]
    table = {m: stats([r[m] for r in timed]) for m in METRICS}  # from the raw values; the record rounded
    samples = {m: [_sig(r[m]) for r in timed] for m in METRICS}
    p50 = {m: s["p50"] for m, s in table.items()}
    runtime = runners.get("decoder", pipe)  # (the suite's peers: no runners, their generator knows)
    return {"backend": runtime.backend, "threads": runtime.threads_used(), "threads_requested": threads,
            "vision_ms": p50["vision_ms"],
            "prompt_tokens": prompt_tokens,
            "image_in_prompt": not text_only, "prefill_positions": w.positions, "prefill_ms": p50["prefill_ms"],
            "prefill_tokens_per_s": p50["prefill_tokens_per_s"], "ttft_ms": p50["ttft_ms"],
            "decode_tokens": decode_tokens, "decode_tokens_per_s": p50["decode_tokens_per_s"],
            "peak_rss_mb": round(peak_rss_mb(), 1), "runs": runs, "warmup": warmup, "stats": table,
            "samples": samples, "notes": noisy(table) + art.bench_notes()}


def _git(cwd: Path, *args: str) -> str | None:
    """``git ARGS`` in ``cwd``: its stdout, stripped; None when git is missing, fails or hangs."""
    try:
        res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def source_state(package: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout ``package`` (default: this package's directory) is tracked in; (None,
    None) when it is not (an installed copy) or git is missing. Dirty: any change ``git status`` shows, untracked
    files included. Never raises."""
    package = package or Path(__file__).resolve().parent
    if _git(package, "ls-files", "--error-unmatch", "__init__.py") is None:  # not the checkout's own source
        return None, None
    commit = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain")
    return commit, (bool(status) if status is not None else None)


def cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, list[str]]:
    """(model name, the ``CPU_FLAGS`` this CPU has) from ``cpuinfo`` where it exists (Linux), else
    (``platform.processor()`` or the machine, [])."""
    fields: dict[str, str] = {}
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    model = (fields.get("model name") or fields.get("hardware") or fields.get("model")
             or platform.processor() or platform.machine())
    have = set((fields.get("flags") or fields.get("features") or "").split())
    return model, [f for f in CPU_FLAGS if f in have]


def environment(threads: int | None) -> dict:
    """Where a measurement ran: source ``commit``/``dirty`` (``source_state``), package ``versions``, Python, OS,
    machine, CPU model and ISA flags (``cpu_info``), logical cores, the ``threads`` asked for (None: the backend's
    default), the process's ``OMP_NUM_THREADS`` (``backends.executorch.RUNTIME_PROCESS_ENV``) and the UTC date."""
    from mobilevlm_export.manifest import versions

    commit, dirty = source_state()
    model, flags = cpu_info()
    return {"commit": commit, "dirty": dirty, "versions": versions(), "python": platform.python_version(),
            "os": platform.platform(), "machine": platform.machine(), "cpu_model": model, "cpu_flags": flags,
            "logical_cores": os.cpu_count(), "threads": threads, "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def check_profile(art, profile, flag: str = "--predict") -> None:
    """``UserError`` naming ``flag``, the profile and both targets when ``profile`` (a ``profiles.DeviceProfile``,
    or None) is a device of another target than DIR's build, for a target built for devices (one with a default
    device profile: its artifacts run on that target's devices only, so another's roofline would predict a device
    the bundle cannot run on, a phone's figures for a TensorRT bundle). A portable build (onnx: no device of its
    own) may be predicted for any device."""
    target = art.manifest.get("target")
    for_devices = art.target.default_profile is not None
    if profile is not None and for_devices and profile.target != target:
        raise UserError(f"{flag} {profile.name}: is a {profile.target} device profile ({profile.source}), but "
                        f"{Path(art.root) / 'manifest.json'} is a build for target {target}; predict with a {target} "
                        "profile")


def predict(art, profile, prefill_positions: int | None = None) -> dict | None:
    """The profile's roofline prediction for DIR's recorded costs (None without costs or a profile), a prefill of
    ``prefill_positions`` (default: the profile's). ``UserError`` when the profile is of another target
    (``check_profile``)."""
    check_profile(art, profile)
    costs = art.manifest.get("costs")
    if not costs or profile is None:
        return None
    return profile.predict(**costs, prefill_positions=prefill_positions)


def bench_artifacts(art, threads: int | None, profile, prompt_tokens: int = 64, decode_tokens: int = 32,
                    runs: int = BUILD_RUNS, warmup: int = BUILD_WARMUP, text_only: bool = False) -> dict:
    """``{"host": measure(...), "predicted": ... (with a profile and recorded costs), "environment": ...}``: what
    ``bench`` prints and a build records in its manifest (with the build's small run counts by default).
    ``UserError`` before anything runs when ``profile`` is a device of another target (``check_profile``)."""
    check_profile(art, profile)
    result = {"host": measure(art, threads, prompt_tokens, decode_tokens, runs, warmup, text_only)}
    predicted = predict(art, profile, result["host"]["prefill_positions"])
    if predicted:
        result["predicted"] = predicted
    result["environment"] = environment(threads)
    return result


def memory_bandwidth(mb: int = 512, repeats: int = 5, threads: int = 1) -> dict:
    """The host's streaming memory bandwidth: the best of ``repeats`` copies of an ``mb``-MB array into another
    (``np.copyto``, which releases the GIL, on ``threads`` equal slices at once), in GB/s counting the bytes read
    plus the bytes written (STREAM's convention for copy). Both arrays are touched before timing. ``UserError``
    when an argument is below 1."""
    if mb < 1 or repeats < 1 or threads < 1:
        raise UserError(f"bandwidth: {mb} MB x {repeats} repeats on {threads} threads: each must be at least 1")
    from concurrent.futures import ThreadPoolExecutor

    n = mb * 2**20 // 8
    src = np.arange(n, dtype=np.float64)
    dst = np.empty_like(src)
    dst.fill(0.0)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    samples = []
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            t0 = time.perf_counter()
            list(pool.map(lambda s: np.copyto(dst[s], src[s]), slices))
            samples.append(2 * src.nbytes / (time.perf_counter() - t0) / 1e9)
    return {"gbps": _sig(max(samples)), "samples_gbps": [_sig(s) for s in samples], "array_mb": mb,
            "repeats": repeats, "threads": threads, "method": "numpy copy, best of repeats, (read + write) / s"}
