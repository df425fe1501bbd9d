"""Latency of a built directory on this host, and the target device's figures predicted from its profile.

Measured with the runtime's own stages (``runtime.pipeline.VLMPipeline``), medians over ``repeats`` after a
warm-up: vision encoder ms; prefill (embed + splice + decoder over the prompt: one image's tokens, unless
``text_only``, plus ``prompt_tokens`` text tokens) ms and positions/s; time to first token = vision + prefill;
greedy decode tokens/s over ``decode_tokens`` steps; the process's peak RSS. Predicted: a roofline per device
profile (``profiles.DeviceProfile.predict``) from the costs the build recorded. Torch-free.
"""

from __future__ import annotations

import resource
import statistics
import time

import numpy as np

from mobilevlm_export.errors import UserError
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX, prompt_length

# synthetic prompt ids are drawn above the special ids (unk, bos, eos)
FIRST_TEXT_ID = 3


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(art, threads: int | None = None, prompt_tokens: int = 64, decode_tokens: int = 32, repeats: int = 3,
            text_only: bool = False) -> dict:
    """Measure DIR's stages with synthetic inputs (greedy decode feeds back each argmax). ``UserError`` when the
    prompt and the decoded tokens do not fit the decoder's capacity (nothing is clamped)."""
    pipe = art.pipeline(art.runners(threads))
    dims = art.manifest["model"]["dims"]
    rng = np.random.default_rng(0)
    ids = rng.integers(FIRST_TEXT_ID, dims["vocab"], prompt_tokens).tolist()
    if not text_only:
        ids = [IMAGE_TOKEN_INDEX, *ids]
    positions = prompt_length(ids, dims["image_tokens"])
    if positions + decode_tokens > pipe.decoder.capacity:
        raise UserError(f"--prompt-tokens {prompt_tokens} ({positions} positions with the image) + --decode-tokens "
                        f"{decode_tokens} exceed the decoder's capacity of {pipe.decoder.capacity} positions")
    size = dims["image_size"]
    pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    image = pipe.image_embeds(pixels)  # warm-up
    pipe.prefill(ids, image)
    vision_ms = _median_ms(lambda: pipe.image_embeds(pixels), repeats)
    prefill_ms = _median_ms(lambda: pipe.prefill(ids, image), repeats)

    def decode() -> float:
        logits = pipe.prefill(ids, image)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = pipe.step(int(logits.argmax()))
        return time.perf_counter() - t0

    decode_s = statistics.median(decode() for _ in range(repeats))
    return {"threads": threads, "vision_ms": round(vision_ms, 2), "prompt_tokens": prompt_tokens,
            "image_in_prompt": not text_only, "prefill_positions": positions, "prefill_ms": round(prefill_ms, 2),
            "prefill_tokens_per_s": round(positions / prefill_ms * 1e3, 1),
            "ttft_ms": round(vision_ms + prefill_ms, 2), "decode_tokens": decode_tokens,
            "decode_tokens_per_s": round(decode_tokens / decode_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


def predict(art, profile) -> dict | None:
    """The profile's roofline prediction for DIR's recorded costs (None without costs or a profile)."""
    costs = art.manifest.get("costs")
    return profile.predict(**costs) if costs and profile is not None else None


def bench_artifacts(art, threads: int | None, profile) -> dict:
    """Host measurement plus the profile's prediction, as recorded in a build's manifest."""
    result = {"host": measure(art, threads)}
    predicted = predict(art, profile)
    if predicted:
        result["predicted"] = predicted
    return result
