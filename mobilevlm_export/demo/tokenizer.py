"""Train the demo's SentencePiece tokenizer (LLaMA conventions: unk 0, bos 1, eos 2, byte fallback)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from mobilevlm_export.demo.shapes import corpus

VOCAB_SIZE = 512


def build_tokenizer(out: Path) -> None:
    """Write tokenizer.model, tokenizer_config.json and special_tokens_map.json into ``out``. Deterministic."""
    import sentencepiece as spm

    lines = corpus()
    text = [" ".join(lines)] + [f"USER: <image>\n{q} ASSISTANT: {a}" for q in lines for a in lines[-11:]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 4), model_writer=model, vocab_size=VOCAB_SIZE, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, character_coverage=1.0,
        add_dummy_prefix=True, remove_extra_whitespaces=False, normalization_rule_name="identity",
        split_digits=True, num_threads=1, hard_vocab_limit=False, minloglevel=2,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "legacy": True, "model_max_length": 2048, "padding_side": "right", **special}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
