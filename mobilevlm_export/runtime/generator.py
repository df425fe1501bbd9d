"""preprocessed image -> vision -> projector -> embed + splice -> prefill -> decode loop, on any backend's runners.

Prefill, as ``run``'s timings and ``bench`` report it: embedding the prompt's text tokens, splicing the image
embeddings in, and the decoder over every prompt position (image tokens included), up to the first token's
logits. The image encoder is not part of it: time to first token = vision + prefill.

The loop talks to the decoder through a ``runtime.sessions.DecoderSession`` (prefill / step), which keeps the KV
cache where the backend computes it. A prompt longer than the session takes, or that leaves no room for the
answer, is refused before any graph runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mobilevlm_export.backends import Runner
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams, select_token
from mobilevlm_export.runtime.prompt import prompt_length, segments
from mobilevlm_export.runtime.sessions import DecoderSession


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


class VLMGenerator:
    """The runtime loop. ``runners``: ``embed_tokens`` and either ``image_encoder`` or ``vision_encoder`` +
    ``projector``; ``decoder``: a session over the decoder graph. ``vocab``: the model's vocabulary size (the
    manifest's ``model.dims.vocab``); every text token id is checked to lie in [0, vocab) before a graph sees it
    (an embedding lookup past its table reads out of bounds in a native runtime). None: not checked."""

    def __init__(self, runners: dict[str, Runner], decoder: DecoderSession, eos_id: int,
                 vocab: int | None = None) -> None:
        self.runners = runners
        self.decoder = decoder
        self.eos_id = eos_id
        self.vocab = vocab

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        if "image_encoder" in self.runners:
            return self.runners["image_encoder"].run({"pixel_values": pixel_values})["image_embeds"]
        feats = self.runners["vision_encoder"].run({"pixel_values": pixel_values})["image_features"]
        return self.runners["projector"].run({"image_features": feats})["image_embeds"]

    def check_ids(self, ids: list[int]) -> None:
        """``UserError`` for a text token id outside the model's vocabulary (the image placeholder aside)."""
        if self.vocab is None:
            return
        bad = next((t for kind, part in segments(ids) if kind == "text" for t in part
                    if not 0 <= t < self.vocab), None)
        if bad is not None:
            raise UserError(f"token id {bad} is outside the model's vocabulary of {self.vocab} (ids 0.."
                            f"{self.vocab - 1}, manifest.json model.dims.vocab): the tokenizer or the ids do not "
                            "belong to this build")

    def embed(self, ids: list[int]) -> np.ndarray:
        self.check_ids(ids)
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

    @property
    def image_tokens(self) -> int:
        """Image tokens per image, from the image graph's contract (``image_embeds [batch, tokens, hidden]``)."""
        graph = self.runners.get("image_encoder") or self.runners["projector"]
        return next(t for t in graph.contract.outputs if t.name == "image_embeds").dims[1]

    def check_length(self, prompt_ids: list[int], max_new_tokens: int) -> None:
        """``UserError`` (before any graph runs) for a prompt the decoder cannot take in one prefill, or that
        leaves too little room for ``max_new_tokens``."""
        length = prompt_length(prompt_ids, self.image_tokens)
        if length + max_new_tokens > self.decoder.capacity:
            raise UserError(
                f"--prompt: {length} prompt tokens (image included) + {max_new_tokens} new tokens exceed "
                f"the decoder's capacity of {self.decoder.capacity} positions; shorten the prompt or lower "
                "--max-new-tokens"
            )
        limit = self.decoder.max_prompt
        if length > limit:
            key = getattr(self.decoder, "limit_key", None)
            raise UserError(f"--prompt: {length} prompt tokens (image included) exceed the {limit} positions the "
                            "decoder takes in one prefill" + (f"; raise {key} in the recipe and rebuild, or shorten "
                                                              "the prompt" if key else "; shorten the prompt"))

    def generate_ids(self, prompt_ids: list[int], pixel_values: np.ndarray,
                     params: SamplingParams = SamplingParams(),
                     image: np.ndarray | None = None) -> tuple[list[int], Timings]:
        """Generated ids (stop token included when produced) and the timings of each stage. ``image``: the
        image's embeddings (``image_embeds`` of ``pixel_values``) where the caller has them already, as for a
        second question about the same image; the image graphs then do not run (``vision_ms`` 0)."""
        self.check_ids(prompt_ids)
        self.check_length(prompt_ids, params.max_new_tokens)
        t = Timings()
        t0 = time.perf_counter()
        if image is None:
            image = self.image_embeds(pixel_values[None] if pixel_values.ndim == 3 else pixel_values)
        t1 = time.perf_counter()
        length = prompt_length(prompt_ids, image.shape[1])
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
