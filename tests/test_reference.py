"""The PyTorch reference: preprocessing, prompt template, image splicing, generation with and without KV cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CHECKPOINT_KINDS
from PIL import Image

from mobilevlm_export.checkpoint.model import load_checkpoint
from mobilevlm_export.checkpoint.reference import Reference
from mobilevlm_export.errors import UserError
from mobilevlm_export.generation import SamplingParams
from mobilevlm_export.runtime.preprocess import ImagePreprocess
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX, SYSTEM_V1, build_prompt_ids, conversation_v1


def _image(w=300, h=200, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("size,mode", [((336, 252), "RGB"), ((500, 333), "RGBA"), ((40, 64), "L"),
                                       ((1600, 1200), "RGB"), ((336, 336), "P"), ((7, 5), "RGB")])
def test_preprocess_is_bit_identical_to_hf_processor(size, mode):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    hf = CLIPImageProcessorPil(size=336, crop_size=336, resample=3)
    pre = ImagePreprocess(pad_to_square=True)
    img = _image(*size, mode=mode)
    ours = pre(img)
    # the original: expand2square with the mean colour, then the CLIP processor
    rgb = img.convert("RGB")
    side = max(rgb.size)
    square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in hf.image_mean))
    square.paste(rgb, ((side - rgb.size[0]) // 2, (side - rgb.size[1]) // 2))
    want = hf(images=square, return_tensors="np")["pixel_values"][0]
    assert ours.shape == (3, 336, 336) and ours.dtype == np.float32
    np.testing.assert_array_equal(ours, want)


def test_conversation_template_v1():
    assert conversation_v1("What is it?") == f"{SYSTEM_V1} USER: <image>\nWhat is it? ASSISTANT:"
    assert conversation_v1("<image>\nWhat?") == f"{SYSTEM_V1} USER: <image>\nWhat? ASSISTANT:"


def test_prompt_ids_put_the_image_where_the_tag_was(tiny_loaded):
    tok = tiny_loaded.tokenizer
    ids = build_prompt_ids(tok, "What color is the shape?")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    k = ids.index(IMAGE_TOKEN_INDEX)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1
    assert ids[:k] == tok(f"{SYSTEM_V1} USER: ").input_ids
    assert ids[k + 1:] == tok("\nWhat color is the shape? ASSISTANT:").input_ids[1:]
    with pytest.raises(UserError, match="2 '<image>' tag"):
        build_prompt_ids(tok, "<image> and <image>")


def test_splice_places_image_tokens_exactly(tiny_loaded):
    ref = Reference(tiny_loaded)
    ids = build_prompt_ids(ref.tokenizer, "What shape is this?")
    k = ids.index(IMAGE_TOKEN_INDEX)
    image_embeds = ref.image_embeds(tiny_loaded.preprocess(_image()))
    n = image_embeds.shape[1]
    embeds = ref.splice(ids, image_embeds)
    text = [t for t in ids if t != IMAGE_TOKEN_INDEX]
    with torch.inference_mode():
        text_embeds = tiny_loaded.model.embed_tokens(torch.tensor(text))
    assert embeds.shape == (1, len(text) + n, text_embeds.shape[-1])
    assert torch.equal(embeds[0, :k], text_embeds[:k])
    assert torch.equal(embeds[0, k:k + n], image_embeds[0])
    assert torch.equal(embeds[0, k + n:], text_embeds[k:])


@pytest.mark.parametrize("projector,fmt,shards", CHECKPOINT_KINDS[::2])
def test_greedy_with_kv_cache_equals_without(ckpt_factory, projector, fmt, shards):
    ref = Reference(load_checkpoint(ckpt_factory(projector, fmt, shards)))
    img = _image(seed=3)
    params = SamplingParams(max_new_tokens=12)
    with_cache = ref.generate(img, "How many shapes are there?", params, use_cache=True)
    without = ref.generate(img, "How many shapes are there?", params, use_cache=False)
    assert len(with_cache.output_ids) >= 1
    assert with_cache.output_ids == without.output_ids
    assert with_cache.image_tokens == {"ldpnetv2": 144, "ldpnet": 144}.get(projector, 576)


def test_kv_logits_match_full_forward(tiny_loaded):
    """Each decode step's logits (seq=1, growing cache) equal the full-sequence forward's last position."""
    ref = Reference(tiny_loaded)
    llm = tiny_loaded.model.language_model
    embeds = ref.splice(build_prompt_ids(ref.tokenizer, "What?"), ref.image_embeds(tiny_loaded.preprocess(_image())))
    with torch.inference_mode():
        out = llm(inputs_embeds=embeds[:, :-4], use_cache=True)
        past = out.past_key_values
        for i in range(4, 0, -1):
            step = llm(inputs_embeds=embeds[:, -i:embeds.shape[1] - i + 1], past_key_values=past, use_cache=True)
            past = step.past_key_values
            full = llm(inputs_embeds=embeds[:, :embeds.shape[1] - i + 1], use_cache=False)
            torch.testing.assert_close(step.logits[0, -1], full.logits[0, -1], rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded(tiny_loaded):
    ref = Reference(tiny_loaded)
    img = _image(seed=4)
    runs = [ref.generate(img, "Describe.", SamplingParams(max_new_tokens=10, temperature=1.0, top_p=0.9, seed=s))
            for s in (1, 1, 2)]
    assert runs[0].output_ids == runs[1].output_ids
    greedy = ref.generate(img, "Describe.", SamplingParams(max_new_tokens=10))
    assert {tuple(r.output_ids) for r in runs + [greedy]} != {tuple(greedy.output_ids)}


def test_prompt_longer_than_context_is_a_user_error(tiny_loaded):
    ref = Reference(tiny_loaded)
    with pytest.raises(UserError, match="context"):
        ref.generate(_image(), "word " * 2000, SamplingParams(max_new_tokens=4))
