"""The split: a loaded checkpoint -> exportable graphs, each a torch module with its contract and sample inputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mobilevlm_export.checkpoint.model import LoadedCheckpoint
from mobilevlm_export.graphs.contracts import GraphContract, ModelDims, graph_contracts
from mobilevlm_export.graphs.decoder import DynamicKVDecoder, StaticKVDecoder
from mobilevlm_export.graphs.vision import EmbedTokens, ImageEncoder, Projector, VisionEncoder

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64}
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16"}
# sizes of the symbolic dims in sample inputs: distinct and > 1 so tracing keeps them symbolic
SAMPLE_SIZES = {"batch": 2, "seq": 3, "past": 5, "max_cache": 16}


@dataclass
class Graph:
    contract: GraphContract
    module: nn.Module

    @property
    def name(self) -> str:
        return self.contract.name

    def sample_inputs(self, sizes: dict[str, int] = SAMPLE_SIZES, seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs of the contract's shapes (ids and positions valid for the model)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for t in self.contract.inputs:
            shape = t.shape(sizes)
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(3, 100, shape).astype(np.int64)
            elif t.name == "attention_mask":
                feeds[t.name] = np.ones(shape, np.int64)
            elif t.name == "position_ids":
                feeds[t.name] = np.broadcast_to(np.arange(sizes["past"], sizes["past"] + shape[1]), shape).copy()
            elif t.name == "input_pos":
                feeds[t.name] = np.arange(shape[0], dtype=np.int64)
            elif t.name == "pixel_values" and "batch" not in t.dims:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds


def split(ckpt: LoadedCheckpoint, precision: str = "fp32", fused_image_encoder: bool = False) -> list[Graph]:
    """The dynamic-KV graphs (ONNX/TensorRT) of ``ckpt`` in ``precision``. Modules share the model's weights
    in fp32; for fp16 they are copies (the reference stays fp32)."""
    dtype = PRECISION_DTYPES[precision]
    model = ckpt.model
    vision = VisionEncoder(model.vision_tower, model.select_layer, model.select_feature)
    projector = Projector(model.projector)
    modules: dict[str, nn.Module] = {
        "vision_encoder": vision,
        "projector": projector,
        "image_encoder": ImageEncoder(vision, projector),
        "embed_tokens": EmbedTokens(model.language_model.get_input_embeddings()),
        "decoder": DynamicKVDecoder(model.language_model),
    }
    contracts = graph_contracts(ModelDims.from_checkpoint(ckpt), dtype, "dynamic", fused_image_encoder)
    graphs = []
    for c in contracts:
        module = modules[c.name].eval()
        if precision == "fp16":
            import copy

            module = copy.deepcopy(module).half()
        graphs.append(Graph(c, module))
    return graphs


def split_static(ckpt: LoadedCheckpoint, max_cache: int, custom_ops: bool, last_logits: bool = False) -> list[Graph]:
    """The static-KV graphs (ExecuTorch) of ``ckpt``, fp32: ``image_encoder`` (vision + projector fused),
    ``embed_tokens`` and ``decoder`` with its cache as buffers of ``max_cache`` positions. The modules share the
    model's weights (quantization in place quantizes the model too)."""
    model = ckpt.model
    vision = VisionEncoder(model.vision_tower, model.select_layer, model.select_feature)
    modules: dict[str, nn.Module] = {
        "image_encoder": ImageEncoder(vision, Projector(model.projector)),
        "embed_tokens": EmbedTokens(model.language_model.get_input_embeddings()),
        "decoder": StaticKVDecoder(model.language_model, max_cache, custom_ops, last_logits),
    }
    contracts = graph_contracts(ModelDims.from_checkpoint(ckpt), "float32", "static", fused_image_encoder=True,
                                last_logits=last_logits)
    return [Graph(c, modules[c.name].eval()) for c in contracts]
