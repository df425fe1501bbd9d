"""The split: a loaded checkpoint -> exportable graphs, each a torch module with its contract and sample inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mobilevlm_export.checkpoint.model import LoadedCheckpoint
from mobilevlm_export.checkpoint.records import model_dims
from mobilevlm_export.graphs.contracts import SAMPLE_SIZES, GraphContract, KVCache, Limits, graph_contracts
from mobilevlm_export.graphs.decoder import DynamicKVDecoder, StaticKVDecoder
from mobilevlm_export.graphs.vision import (
    DelegableVisionEncoder,
    EmbedTokens,
    ImageEncoder,
    Projector,
    VisionEncoder,
    delegable_projector,
)
from mobilevlm_export.schema import Precision

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int32": torch.int32}
PRECISION_DTYPES = {Precision.FP32: "float32", Precision.FP16: "float16"}


@dataclass
class Graph:
    contract: GraphContract
    module: nn.Module

    @property
    def name(self) -> str:
        return self.contract.name

    def sample_inputs(self, sizes: dict[str, int] = SAMPLE_SIZES, seed: int = 0) -> dict[str, np.ndarray]:
        return self.contract.sample_inputs(sizes, seed)

    def sample_args(self, sizes: dict[str, int] = SAMPLE_SIZES) -> tuple[torch.Tensor, ...]:
        """Sample inputs as tensors in contract order (what ``torch.export`` traces with)."""
        feeds = self.sample_inputs(sizes)
        return tuple(torch.from_numpy(feeds[t.name]).to(TORCH_DTYPES[t.dtype]) for t in self.contract.inputs)


def split(ckpt: LoadedCheckpoint, precision: Precision = Precision.FP32, fused_image_encoder: bool = False,
          limits: Limits | None = None, last_logits: bool = False, index_dtype: str = "int64") -> list[Graph]:
    """The dynamic-KV graphs (ONNX/TensorRT) of ``ckpt`` in ``precision`` (fp32 or fp16), their contracts' ranges
    sized by ``limits``; ``last_logits``: the decoder returns the last position's logits only; ``index_dtype``: ids,
    mask and positions as int64 or int32. Modules share the model's weights; fp16 converts the model in place, so
    the fp32 reference is consumed (the pipeline computes golden data before the split)."""
    dtype = PRECISION_DTYPES[precision]
    model = ckpt.model
    vision = VisionEncoder(model.vision_tower, model.select_layer, model.select_feature)
    projector = Projector(model.projector)
    modules: dict[str, nn.Module] = {
        "vision_encoder": vision,
        "projector": projector,
        "image_encoder": ImageEncoder(vision, projector),
        "embed_tokens": EmbedTokens(model.language_model.get_input_embeddings()),
        "decoder": DynamicKVDecoder(model.language_model, last_logits),
    }
    contracts = graph_contracts(model_dims(ckpt), dtype, KVCache.DYNAMIC, fused_image_encoder,
                                last_logits, limits, index_dtype)
    graphs = []
    for c in contracts:
        module = modules[c.name].eval()
        if precision == Precision.FP16:
            module.half()  # in place: a full-size model is never held in both precisions
        graphs.append(Graph(c, module))
    return graphs


def split_static(ckpt: LoadedCheckpoint, limits: Limits, custom_ops: bool, last_logits: bool = False) -> list[Graph]:
    """The static-KV graphs (ExecuTorch) of ``ckpt``, fp32: ``image_encoder`` (vision + projector fused),
    ``embed_tokens`` and ``decoder`` with its cache as buffers of ``limits.max_context`` positions. The modules
    share the model's weights (quantization in place quantizes the model too). The image encoder is written in ops
    XNNPACK takes (``DelegableVisionEncoder``, ``delegable_projector``): the same computation as ``split``'s."""
    max_cache = limits.max_context
    model = ckpt.model
    vision = DelegableVisionEncoder(VisionEncoder(model.vision_tower, model.select_layer, model.select_feature))
    patches = model_dims(ckpt).patches
    modules: dict[str, nn.Module] = {
        "image_encoder": ImageEncoder(vision, Projector(delegable_projector(model.projector, patches))),
        "embed_tokens": EmbedTokens(model.language_model.get_input_embeddings()),
        "decoder": StaticKVDecoder(model.language_model, max_cache, custom_ops, last_logits),
    }
    contracts = graph_contracts(model_dims(ckpt), "float32", KVCache.STATIC, fused_image_encoder=True,
                                last_logits=last_logits, limits=limits)
    return [Graph(c, modules[c.name].eval()) for c in contracts]
