"""A loaded checkpoint's records for the build: its dims, the manifest's ``model`` and ``checkpoint`` entries, and
its tokenizer written as the runtime reads it."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from mobilevlm_export.checkpoint.projector import image_token_count
from mobilevlm_export.graphs.contracts import ModelDims
from mobilevlm_export.runtime.prompt import IMAGE_TOKEN_INDEX


def model_dims(ckpt) -> ModelDims:
    """The dims of a loaded checkpoint (``checkpoint.model.load_checkpoint``) that size its graphs' contracts."""
    cfg = ckpt.config
    tc = ckpt.model.language_model.config
    vc = ckpt.model.vision_tower.config
    grid = vc.image_size // vc.patch_size
    patches = grid * grid + (0 if cfg.select_feature == "patch" else 1)
    heads = tc.num_attention_heads
    return ModelDims(
        image_size=vc.image_size, patches=patches, vision_hidden=vc.hidden_size,
        image_tokens=image_token_count(cfg.projector_type, patches), hidden=tc.hidden_size,
        intermediate=tc.intermediate_size, layers=tc.num_hidden_layers, heads=heads,
        kv_heads=tc.num_key_value_heads or heads,
        head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
        vocab=ckpt.model.language_model.get_input_embeddings().weight.shape[0],
        max_context=tc.max_position_embeddings,
    )


def model_record(ckpt, dims) -> dict:
    """The manifest's ``model``: what the artifact side needs besides the graphs."""
    return {"dims": dims.__dict__, "eos_token_id": ckpt.eos_token_id,
            "bos_token_id": ckpt.tokenizer.bos_token_id, "image_token_index": IMAGE_TOKEN_INDEX,
            "preprocess": ckpt.preprocess.to_dict(), "vision_tower_source": ckpt.report.tower,
            "projector": ckpt.config.projector_type}


def checkpoint_record(ckpt) -> dict:
    return {"path": str(ckpt.config.path.resolve()),
            "config_sha256": hashlib.sha256((ckpt.config.path / "config.json").read_bytes()).hexdigest()}


def write_tokenizer(ckpt, out: Path) -> None:
    """The checkpoint's tokenizer as the runtime (``runtime.tokenizer``) and ExecuTorch's C++ runner read it."""
    ckpt.tokenizer.save_pretrained(str(out))
    sp_model = ckpt.config.path / "tokenizer.model"
    if sp_model.is_file():
        shutil.copyfile(sp_model, out / "tokenizer.model")
