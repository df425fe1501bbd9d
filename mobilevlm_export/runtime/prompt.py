"""Conversation template "v1", the tokenization of a prompt around ``<image>`` (id -200), and answer text.

Shared by the PyTorch reference and the artifact runtime. A tokenizer here is anything with
``encode(text) -> ids`` (special tokens added as the tokenizer adds them), ``decode(ids, skip_special_tokens)``
and ``bos_token_id``: transformers' tokenizers on the build side, ``runtime.tokenizer.Tokenizer`` on a device.
"""

from __future__ import annotations

from collections.abc import Sequence

from mobilevlm_export.errors import UserError

IMAGE_TOKEN_INDEX = -200
# the image special tokens a checkpoint's config may add to its tokenizer (mm_use_im_patch_token, use_im_start_end)
IM_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"
IMAGE_TAG = "<image>"
STOP_STRING = "</s>"
SYSTEM_V1 = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def conversation_v1(question: str) -> str:
    """The prompt for one user turn: ``system USER: <image>\\n{question} ASSISTANT:``.

    The image tag is put first, as the original's inference script does, unless the question has one already.
    """
    if IMAGE_TAG not in question:
        question = f"{IMAGE_TAG}\n{question}"
    return f"{SYSTEM_V1} USER: {question} ASSISTANT:"


def tokenize_with_images(tokenizer, prompt: str, num_images: int = 1, source: str = "--prompt") -> list[int]:
    """Token ids of ``prompt`` with ``IMAGE_TOKEN_INDEX`` where each ``<image>`` stood.

    Each chunk between tags is tokenized on its own; the BOS of the first chunk is kept once. ``source`` (the flag
    or the file and key the prompt came from) is named in a ``UserError``.
    """
    tags = prompt.count(IMAGE_TAG)
    if tags != num_images:
        raise UserError(
            f"{source} has {tags} '{IMAGE_TAG}' tag(s) but {num_images} image(s) were given"
        )
    chunks = [list(tokenizer.encode(chunk)) for chunk in prompt.split(IMAGE_TAG)]
    bos = tokenizer.bos_token_id
    offset = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
    ids: list[int] = [chunks[0][0]] if offset else []
    for i, chunk in enumerate(chunks):
        if i > 0:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk[offset:])
    return ids


def prompt_length(input_ids: Sequence[int], image_tokens: int) -> int:
    """Positions a prompt takes in the decoder: its text tokens plus ``image_tokens`` for each image sentinel."""
    images = sum(1 for t in input_ids if t == IMAGE_TOKEN_INDEX)
    return len(input_ids) - images + images * image_tokens


def segments(input_ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """Split ids at the image sentinel: ``[("text", ids), ("image", [k]), ...]`` with k the image index.

    Both the reference and the runtime build the embedding sequence from this one plan.
    """
    out: list[tuple[str, list[int]]] = []
    text: list[int] = []
    k = 0
    for t in input_ids:
        if t == IMAGE_TOKEN_INDEX:
            if text:
                out.append(("text", text))
                text = []
            out.append(("image", [k]))
            k += 1
        else:
            text.append(int(t))
    if text:
        out.append(("text", text))
    return out


def build_prompt_ids(tokenizer, prompt: str, raw_prompt: bool = False, num_images: int = 1,
                     source: str = "--prompt") -> list[int]:
    """Apply the conversation template (unless ``raw_prompt``) and tokenize around ``<image>``. ``UserError``
    naming ``source`` (the flag, or the file and key, the prompt came from) for a prompt that is not valid text
    (bytes that were not UTF-8 reach Python as lone surrogates; a JSON file can hold them as escapes)."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:  # exc.start: an index into the str, a character, not a byte
        raise UserError(f"{source}: not valid UTF-8 text (at character {exc.start}, counted from 0)") from None
    return tokenize_with_images(tokenizer, prompt if raw_prompt else conversation_v1(prompt), num_images, source)


def decode_text(tokenizer, ids: list[int], eos_id: int) -> str:
    """The answer's text: special tokens and the stop string dropped."""
    text = tokenizer.decode([t for t in ids if t != eos_id], skip_special_tokens=True).strip()
    return text.removesuffix(STOP_STRING).strip()
