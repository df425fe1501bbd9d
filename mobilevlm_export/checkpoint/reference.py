"""The PyTorch reference pipeline: the oracle every backend is compared with.

image -> preprocess -> vision tower -> projector; prompt -> template -> ids with -200 -> embeddings with the
image tokens spliced in -> LLaMA prefill -> decode loop (KV cache, or full recompute) -> text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mobilevlm_export.checkpoint.model import LoadedCheckpoint
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams, select_token
from mobilevlm_export.runtime.prompt import build_prompt_ids, decode_text, segments


@dataclass
class GenerationResult:
    prompt_ids: list[int]  # with IMAGE_TOKEN_INDEX (-200) where the image goes
    output_ids: list[int]  # generated ids, the stop token included when it was produced
    text: str
    image_tokens: int

    def to_dict(self) -> dict:
        return {"prompt_ids": self.prompt_ids, "output_ids": self.output_ids, "text": self.text,
                "image_tokens": self.image_tokens}


class Reference:
    """The checkpoint's own model in fp32, with the helpers the verifier needs (features, embeds, logits)."""

    def __init__(self, ckpt: LoadedCheckpoint) -> None:
        self.ckpt = ckpt
        self.model = ckpt.model
        self.tokenizer = ckpt.tokenizer

    @property
    def max_context(self) -> int:
        return int(getattr(self.ckpt.config.text_config(), "max_position_embeddings", 2048))

    @torch.inference_mode()
    def image_embeds(self, pixel_values: np.ndarray) -> torch.Tensor:
        return self.model.image_embeds(torch.from_numpy(pixel_values).unsqueeze(0) if pixel_values.ndim == 3
                                       else torch.from_numpy(pixel_values))

    @torch.inference_mode()
    def splice(self, input_ids: list[int], image_embeds: torch.Tensor) -> torch.Tensor:
        """Embeddings [1, L, H] with image ``k``'s tokens where the k-th -200 was."""
        parts = []
        for kind, ids in segments(input_ids):
            if kind == "image":
                parts.append(image_embeds[ids[0]])
            else:
                parts.append(self.model.embed_tokens(torch.tensor(ids)))
        return torch.cat(parts).unsqueeze(0)

    def generate(self, image, prompt: str, params: SamplingParams = SamplingParams(),
                 raw_prompt: bool = False, use_cache: bool = True) -> GenerationResult:
        """Answer ``prompt`` about ``image`` (a PIL image). Stops at the eos id or after max_new_tokens."""
        ids = build_prompt_ids(self.tokenizer, prompt, raw_prompt)
        pixel_values = self.ckpt.preprocess(image)
        image_embeds = self.image_embeds(pixel_values)
        embeds = self.splice(ids, image_embeds)
        if embeds.shape[1] + params.max_new_tokens > self.max_context:
            raise UserError(
                f"--prompt: {embeds.shape[1]} prompt tokens (image included) + {params.max_new_tokens} new tokens "
                f"exceed the decoder's context of {self.max_context}"
            )
        out = self.generate_from_embeds(embeds, params, use_cache)
        return GenerationResult(ids, out, decode_text(self.tokenizer, out, self.ckpt.eos_token_id),
                                int(image_embeds.shape[1]))

    @torch.inference_mode()
    def generate_from_embeds(self, embeds: torch.Tensor, params: SamplingParams, use_cache: bool = True) -> list[int]:
        llm = self.model.language_model
        eos = self.ckpt.eos_token_id
        rng = np.random.default_rng(params.seed)
        out: list[int] = []
        past = None
        step_in = embeds
        for _ in range(params.max_new_tokens):
            if use_cache:
                res = llm(inputs_embeds=step_in, past_key_values=past, use_cache=True)
                past = res.past_key_values
            else:
                res = llm(inputs_embeds=embeds, use_cache=False)
            token = select_token(res.logits[0, -1].float().numpy(), params, rng)
            out.append(token)
            if token == eos:
                break
            new = self.model.embed_tokens(torch.tensor([[token]]))
            step_in = new
            embeds = torch.cat([embeds, new], dim=1)
        return out
