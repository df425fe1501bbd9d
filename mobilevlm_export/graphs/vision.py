"""Vision graphs: the CLIP tower cut at ``mm_vision_select_layer``, the projector, and both fused."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


class LayerNorm(nn.Module):
    """A checkpoint's LayerNorm (same weight, bias and eps) with its two means taken over the last two axes of a
    [..., C, 1] view: XNNPACK's mean reduces the last two axes of a 4-D tensor and it has no layer norm, so the
    norm stays in the delegate (``aten.native_layer_norm`` runs on portable kernels and splits it)."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, float(norm.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = x.unsqueeze(-1)
        d = x4 - x4.mean((-2, -1), keepdim=True)
        var = (d * d).mean((-2, -1), keepdim=True)
        y = (d * torch.rsqrt(var + self.eps)).view(x.shape)  # (a view XNNPACK takes; squeeze_copy it does not)
        return y * self.weight + self.bias


class Embeddings(nn.Module):
    """CLIP's patch embedding, class token and positions (same weights) for one image: the class token's row
    (class embedding + position 0) and the patches' positions as constants, added without an embedding lookup
    or an ``expand`` (neither of which XNNPACK takes)."""

    def __init__(self, emb: nn.Module) -> None:
        super().__init__()
        self.patch_embedding = emb.patch_embedding
        pos = emb.position_embedding.weight
        self.cls_row = nn.Parameter((emb.class_embedding + pos[0]).detach()[None, None], requires_grad=False)
        self.patch_pos = nn.Parameter(pos[1:].detach()[None], requires_grad=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))
        patches = patches.flatten(2).transpose(1, 2) + self.patch_pos
        b = patches.shape[0]
        return torch.cat([self.cls_row if b == 1 else self.cls_row.expand(b, -1, -1), patches], dim=1)


def scaled_linear(linear: nn.Linear, scale: float) -> nn.Linear:
    """A copy of ``linear`` whose outputs are ``scale`` times its own (weight and bias scaled; exact when ``scale``
    is a power of two, as CLIP's 1/sqrt(64) is)."""
    out = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    dtype=linear.weight.dtype, device=linear.weight.device)
    with torch.no_grad():
        out.weight.copy_(linear.weight * scale)
        if linear.bias is not None:
            out.bias.copy_(linear.bias * scale)
    return out.requires_grad_(False)


class Attention(nn.Module):
    """CLIP's self-attention (same projections) for a batch of one, as 3-D ``bmm`` over the heads (softmax over
    the last axis): every op one XNNPACK takes (4-D matmuls lower to ``expand_copy``/``view`` pairs and SDPA's
    decomposition to ops it does not). The softmax scale is folded into the query projection (``scaled_linear``),
    so no product over the [heads, T, T] scores is left: at ViT-L/14-336 that was 23 passes over 5.3 M scores per
    image."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.k_proj, self.v_proj, self.out_proj = attn.k_proj, attn.v_proj, attn.out_proj
        self.q_proj = scaled_linear(attn.q_proj, float(attn.scale))
        self.heads, self.head_dim = attn.num_heads, attn.head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q = self.q_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)  # [heads, T, D], scaled
        k = self.k_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
        v = self.v_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
        probs = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        return self.out_proj(torch.bmm(probs, v).transpose(0, 1).reshape(b, t, c))


class EncoderLayer(nn.Module):
    """A CLIP encoder layer (same weights) of ``LayerNorm`` and ``Attention`` above and the layer's own MLP."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer_norm1, self.layer_norm2 = LayerNorm(layer.layer_norm1), LayerNorm(layer.layer_norm2)
        self.self_attn, self.mlp = Attention(layer.self_attn), layer.mlp

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(self.layer_norm1(h))
        return h + self.mlp(self.layer_norm2(h))


class DelegableVisionEncoder(nn.Module):
    """``VisionEncoder``'s computation for one image in ops XNNPACK takes (``Embeddings``, ``LayerNorm``,
    ``EncoderLayer``), sharing its weights: what ExecuTorch lowers (``split_static``), so that no compute node of
    the tower runs on portable kernels."""

    def __init__(self, vision: VisionEncoder) -> None:
        super().__init__()
        self.embeddings = Embeddings(vision.embeddings)
        self.pre_layrnorm = LayerNorm(vision.pre_layrnorm)
        self.layers = nn.ModuleList(EncoderLayer(layer) for layer in vision.layers)
        self.drop_cls = vision.drop_cls

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            h = layer(h)
        return h[:, 1:] if self.drop_cls else h


class DelegableLDPNetV2(nn.Module):
    """An ``LDPNetV2`` projector (same weights) whose adaptive average pool is the plain ``avg_pool2d`` it equals
    when the pooled grid divides the patch grid (XNNPACK takes the latter, not the former)."""

    def __init__(self, projector: nn.Module, grid: int) -> None:
        super().__init__()
        self.mlp, self.peg = projector.mlp, projector.peg
        self.grid, self.kernel = grid, grid // projector.pooled_grid[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        x = self.mlp(x).transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        x = F.avg_pool2d(x, self.kernel, self.kernel)
        return self.peg(x.flatten(2).transpose(1, 2))


def delegable_projector(projector: nn.Module, patches: int) -> nn.Module:
    """``projector`` in ops XNNPACK takes where a rewrite is known (LDPv2 on a grid its pool divides), else
    itself."""
    from mobilevlm_export.checkpoint.projector import LDPNetV2

    grid = int(round(patches ** 0.5))
    pooled = getattr(projector, "pooled_grid", (0, 0))
    if isinstance(projector, LDPNetV2) and grid * grid == patches and pooled[0] == pooled[1] and grid % pooled[0] == 0:
        return DelegableLDPNetV2(projector, grid)
    return projector


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
