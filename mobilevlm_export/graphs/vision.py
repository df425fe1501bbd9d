"""Vision graphs: the CLIP tower cut at ``mm_vision_select_layer``, the projector, and both fused."""

from __future__ import annotations

import torch
from torch import nn


class VisionEncoder(nn.Module):
    """pixel_values [B, 3, H, W] -> image_features [B, P, Dv]: the hidden state the reference selects.

    Layers after the selected one are not run (the reference computes and discards them).
    """

    def __init__(self, tower: nn.Module, select_layer: int, select_feature: str) -> None:
        super().__init__()
        n = len(tower.encoder.layers)
        keep = select_layer % (n + 1)  # hidden_states has n + 1 entries: embeddings, then each layer
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        self.layers = nn.ModuleList(tower.encoder.layers[:keep])
        self.drop_cls = select_feature == "patch"

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            out = layer(h, None)
            h = out[0] if isinstance(out, tuple) else out
        return h[:, 1:] if self.drop_cls else h


class Projector(nn.Module):
    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.projector(image_features)


class ImageEncoder(nn.Module):
    """The fused vision encoder + projector: pixel_values -> image_embeds."""

    def __init__(self, vision: VisionEncoder, projector: Projector) -> None:
        super().__init__()
        self.vision = vision
        self.projector = projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.vision(pixel_values))


class EmbedTokens(nn.Module):
    """input_ids [B, S] int64 -> inputs_embeds [B, S, H]."""

    def __init__(self, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)
