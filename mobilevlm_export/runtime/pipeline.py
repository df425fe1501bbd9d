"""preprocessed image -> vision -> projector -> embed + splice -> prefill -> decode loop, on any backend's runners.

Prefill, as ``run``'s timings and ``bench`` report it: embedding the prompt's text tokens, splicing the image
embeddings in, and the decoder over every prompt position (image tokens included), up to the first token's
logits. The image encoder is not part of it: time to first token = vision + prefill.

The loop talks to the decoder through a ``DecoderSession`` (prefill / step); ``DynamicKVSession`` carries the
cache between calls of a dynamic-KV graph (ONNX, TensorRT). A static-cache backend keeps its cache in place and
only needs positions, behind the same two methods.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mobilevlm_export.backends import Runner
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams, select_token
from mobilevlm_export.graphs.contracts import kv_names
from mobilevlm_export.runtime.prompt import prompt_length, segments


class DecoderSession(Protocol):
    capacity: int  # how many positions (prompt + answer) the session can hold

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Start a new sequence with ``embeds`` [1, S, H]; logits [S, vocab]."""

    def step(self, embeds: np.ndarray) -> np.ndarray:
        """Append ``embeds`` [1, 1, H]; logits [1, vocab]."""


class DynamicKVSession:
    """Runs a dynamic-KV decoder graph, feeding each call's ``present.*`` back as the next ``past_key_values.*``."""

    def __init__(self, runner: Runner, layers: int, capacity: int) -> None:
        self.runner = runner
        self.layers = layers
        self.capacity = capacity
        spec = next(t for t in runner.contract.inputs if t.name == kv_names(0)[0])
        self._cache_dtype = spec.dtype
        self._kv_shape = spec.dims
        self._past: dict[str, np.ndarray] = {}
        self._length = 0

    def _empty_past(self, batch: int) -> dict[str, np.ndarray]:
        shape = tuple(0 if d == "past" else batch if d == "batch" else d for d in self._kv_shape)
        return {name: np.zeros(shape, self._cache_dtype) for i in range(self.layers) for name in kv_names(i)[:2]}

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
        self._past = self._empty_past(embeds.shape[0])
        self._length = 0
        return self._run(embeds)

    def step(self, embeds: np.ndarray) -> np.ndarray:
        return self._run(embeds)


class StaticKVSession:
    """Runs a static-KV decoder (ExecuTorch): the cache lives in the method's buffers; each call passes the
    cache positions it writes. Prefill longer than ``max_prefill`` goes in chunks, as ExecuTorch's runner does."""

    def __init__(self, runner: Runner, capacity: int, max_prefill: int | None = None) -> None:
        self.runner = runner
        self.capacity = capacity
        self.max_prefill = max_prefill or capacity
        self._length = 0

    def _run(self, embeds: np.ndarray) -> np.ndarray:
        s = embeds.shape[1]
        if self._length + s > self.capacity:
            raise UserError(f"the static KV cache holds {self.capacity} positions; {self._length} used, {s} more "
                            "do not fit (shorten the prompt or lower --max-new-tokens)")
        pos = np.arange(self._length, self._length + s, dtype=np.int64)
        out = self.runner.run({"inputs_embeds": np.ascontiguousarray(embeds, np.float32), "input_pos": pos})
        self._length += s
        return out["logits"][0]

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        self._length = 0
        chunks = [self._run(embeds[:, i:i + self.max_prefill]) for i in range(0, embeds.shape[1], self.max_prefill)]
        return np.concatenate(chunks)

    def step(self, embeds: np.ndarray) -> np.ndarray:
        return self._run(embeds)


@dataclass
class Timings:
    vision_ms: float = 0.0
    prefill_ms: float = 0.0  # embed + splice + decoder over the prompt; time to first token = vision + prefill
    prompt_tokens: int = 0  # positions prefilled, image tokens included
    decode_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        decode = sum(self.decode_ms)
        return {
            "vision_ms": round(self.vision_ms, 3), "prefill_ms": round(self.prefill_ms, 3),
            "ttft_ms": round(self.vision_ms + self.prefill_ms, 3), "prompt_tokens": self.prompt_tokens,
            "prefill_tokens_per_s": round(self.prompt_tokens / self.prefill_ms * 1e3, 2) if self.prefill_ms else None,
            "decode_tokens": len(self.decode_ms),
            "decode_tokens_per_s": round(len(self.decode_ms) / decode * 1e3, 2) if decode else None,
        }


class VLMPipeline:
    """The runtime loop. ``runners``: ``embed_tokens`` and either ``image_encoder`` or ``vision_encoder`` +
    ``projector``; ``decoder``: a session over the decoder graph."""

    def __init__(self, runners: dict[str, Runner], decoder: DecoderSession, eos_id: int) -> None:
        self.runners = runners
        self.decoder = decoder
        self.eos_id = eos_id

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        if "image_encoder" in self.runners:
            return self.runners["image_encoder"].run({"pixel_values": pixel_values})["image_embeds"]
        feats = self.runners["vision_encoder"].run({"pixel_values": pixel_values})["image_features"]
        return self.runners["projector"].run({"image_features": feats})["image_embeds"]

    def embed(self, ids: list[int]) -> np.ndarray:
        return self.runners["embed_tokens"].run({"input_ids": np.asarray([ids], np.int64)})["inputs_embeds"]

    def splice(self, prompt_ids: list[int], image_embeds: np.ndarray) -> np.ndarray:
        """[1, L, H]: text embeddings with image k's tokens where the k-th -200 was (as the reference)."""
        parts = []
        for kind, ids in segments(prompt_ids):
            parts.append(image_embeds[ids[0]] if kind == "image" else self.embed(ids)[0])
        return np.concatenate(parts)[None]

    def prefill(self, prompt_ids: list[int], image_embeds: np.ndarray) -> np.ndarray:
        """Embed + splice + decoder over the whole prompt (a new sequence); the last position's logits."""
        return self.decoder.prefill(self.splice(prompt_ids, image_embeds))[-1]

    def step(self, token: int) -> np.ndarray:
        """One decode step: embed ``token``, run the decoder on it; its logits."""
        return self.decoder.step(self.embed([token]))[-1]

    def generate_ids(self, prompt_ids: list[int], pixel_values: np.ndarray,
                     params: SamplingParams = SamplingParams()) -> tuple[list[int], Timings]:
        """Generated ids (stop token included when produced) and the timings of each stage."""
        t = Timings()
        t0 = time.perf_counter()
        image = self.image_embeds(pixel_values[None] if pixel_values.ndim == 3 else pixel_values)
        t1 = time.perf_counter()
        length = prompt_length(prompt_ids, image.shape[1])
        if length + params.max_new_tokens > self.decoder.capacity:
            raise UserError(
                f"--prompt: {length} prompt tokens (image included) + {params.max_new_tokens} new tokens exceed "
                f"the decoder's capacity of {self.decoder.capacity} positions; shorten the prompt or lower "
                "--max-new-tokens"
            )
        logits = self.prefill(prompt_ids, image)
        t2 = time.perf_counter()
        t.vision_ms, t.prefill_ms, t.prompt_tokens = (t1 - t0) * 1e3, (t2 - t1) * 1e3, length
        rng = np.random.default_rng(params.seed)
        out: list[int] = []
        while True:
            token = select_token(logits, params, rng)
            out.append(token)
            if token == self.eos_id or len(out) >= params.max_new_tokens:
                return out, t
            s = time.perf_counter()
            logits = self.step(token)
            t.decode_ms.append((time.perf_counter() - s) * 1e3)
