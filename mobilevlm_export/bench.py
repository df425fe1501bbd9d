"""Latency of an artifact directory on this host, and the target device's figures predicted from its profile.

Measured (medians over ``repeats``): vision encoder ms, prefill tokens/s for a ``prompt_tokens``-long prompt
(time to first token = vision + prefill), decode tokens/s over ``decode_tokens`` steps, and the process's peak
RSS. Predicted: a roofline per device profile (``profiles.DeviceProfile.predict``) from the model's dims and the
decoder's weight bytes per token.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from mobilevlm_export.export import peak_rss_mb


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure(art, threads: int | None = None, prompt_tokens: int = 64, decode_tokens: int = 32,
            repeats: int = 3) -> dict:
    """Measure the artifacts' stages with synthetic inputs (greedy decode feeds back each argmax)."""
    pipe = art.pipeline(art.runners(threads))
    dims = art.manifest["model"]["dims"]
    rng = np.random.default_rng(0)
    size = dims["image_size"]
    pixels = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    capacity = pipe.decoder.capacity
    prompt_tokens = min(prompt_tokens, capacity - decode_tokens - 1)
    ids = rng.integers(3, dims["vocab"], prompt_tokens).tolist()
    pipe.image_embeds(pixels)  # warm up
    vision_ms = _median_ms(lambda: pipe.image_embeds(pixels), repeats)
    embeds = pipe.embed(ids)
    prefill_ms = _median_ms(lambda: pipe.decoder.prefill(embeds), repeats)

    def decode() -> float:
        logits = pipe.decoder.prefill(embeds)[-1]
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            logits = pipe.decoder.step(pipe.embed([int(logits.argmax())]))[-1]
        return time.perf_counter() - t0

    decode_s = statistics.median(decode() for _ in range(repeats))
    return {"threads": threads, "vision_ms": round(vision_ms, 2), "prompt_tokens": prompt_tokens,
            "prefill_ms": round(prefill_ms, 2), "prefill_tokens_per_s": round(prompt_tokens / prefill_ms * 1e3, 1),
            "ttft_ms": round(vision_ms + prefill_ms, 2), "decode_tokens": decode_tokens,
            "decode_tokens_per_s": round(decode_tokens / decode_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


BYTES_PER_WEIGHT = {"fp32": lambda g: 4.0, "8da8w": lambda g: 1.0, "8da4w": lambda g: 0.5 + 2.0 / g}  # + bf16 scales


def model_costs(modules: dict, q, image_tokens_in: int) -> dict:
    """Per-token weight bytes and ops (2 per multiply-add) of the decoder's linears, and the vision encoder's
    linear ops per image (``image_tokens_in`` = patch positions it runs on); attention's own matmuls are left out.
    Computed from the fp32 modules and the recipe's schemes, before quantization."""
    from torch import nn

    def linears(m: nn.Module):
        return [x for x in m.modules() if isinstance(x, nn.Linear)]

    dec = modules["text_decoder"]
    head = dec.lm_head.weight.numel()
    body = sum(x.weight.numel() for x in linears(dec)) - head
    weight_bytes = body * BYTES_PER_WEIGHT[q.linear](q.group_size) + head * BYTES_PER_WEIGHT[q.lm_head](q.group_size)
    vision = sum(x.weight.numel() for x in linears(modules["vision_encoder"]))
    return {"decoder_bytes_per_token": weight_bytes, "decoder_ops_per_token": 2.0 * (body + head),
            "vision_ops": 2.0 * vision * image_tokens_in}


def bench_artifacts(art, threads: int | None, profile) -> dict:
    """Host measurement plus the profile's prediction, as recorded in a build's manifest."""
    result = {"host": measure(art, threads)}
    costs = art.manifest.get("program", {}).get("costs")
    if costs and profile is not None:
        result["predicted"] = profile.predict(**costs)
    return result
