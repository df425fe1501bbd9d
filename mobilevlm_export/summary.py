"""A summary of a loaded checkpoint: architecture, parameter counts, dims and the graphs a split makes."""

from __future__ import annotations

from mobilevlm_export.checkpoint.model import LoadedCheckpoint
from mobilevlm_export.checkpoint.records import model_dims
from mobilevlm_export.graphs.contracts import graph_contracts


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(ckpt: LoadedCheckpoint) -> dict:
    """JSON-ready description of ``ckpt``."""
    m = ckpt.model
    llm = m.language_model
    embed = llm.get_input_embeddings().weight.numel()
    lm_head = llm.get_output_embeddings().weight
    tied = lm_head.data_ptr() == llm.get_input_embeddings().weight.data_ptr()
    decoder = _count(llm) - embed - (0 if tied else lm_head.numel())
    counts = {"vision": _count(m.vision_tower), "projector": _count(m.projector), "decoder": decoder,
              "embeddings": embed, "lm_head": 0 if tied else lm_head.numel()}
    counts["total"] = sum(counts.values())
    d = model_dims(ckpt)
    cfg = ckpt.config
    return {
        "checkpoint": str(cfg.path),
        "architecture": {
            "model_type": cfg.raw.get("model_type"), "architectures": cfg.raw.get("architectures"),
            "projector": cfg.projector_type, "vision_tower": cfg.vision_tower_name,
            "vision_select_layer": cfg.select_layer, "vision_select_feature": cfg.select_feature,
            "image_aspect_ratio": cfg.image_aspect_ratio,
        },
        "vision_tower_source": ckpt.report.tower,
        "parameters": counts,
        "dims": d.__dict__,
        "stored_dtypes": ckpt.report.stored_dtypes,
        "weight_files": ckpt.report.weight_files,
        "ignored_tensors": ckpt.report.ignored,
        "special_tokens": {"bos": ckpt.tokenizer.bos_token_id, "eos": ckpt.tokenizer.eos_token_id,
                           "tokenizer_size": len(ckpt.tokenizer)},
        "preprocess": ckpt.preprocess.to_dict(),
        "graphs": [g.to_dict() for g in graph_contracts(d)],
        "load_seconds": round(ckpt.report.load_seconds, 3),
    }
