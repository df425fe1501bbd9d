"""MobileVLM projectors in plain torch, with the original state_dict key names.

``ldpnetv2`` (LDPv2): MLP -> 12x12 average pool -> depthwise-conv positional injection (residual).
``ldpnet`` (LDP v1): MLP -> two MobileNetV3 inverted-residual blocks (stride 1 then 2), channel LayerNorm.
``mlpNx_gelu`` / ``linear``: LLaVA-style, all patch tokens kept.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F


def _to_grid(x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    h = math.isqrt(n)
    return x.permute(0, 2, 1).reshape(b, c, h, h)


def _from_grid(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


class _FeatureIR(nn.Module):
    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))

    def forward(self, x):
        return self.mlp(x)


class _PosInject(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.peg = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=True, groups=channels))

    def forward(self, x):
        grid = _to_grid(x)
        return _from_grid(grid + self.peg(grid))


class LDPNetV2(nn.Module):
    """LDPv2: keys ``mlp.mlp.{0,2}``, ``peg.peg.0``. Output [B, 144, H]."""

    pooled_grid = (12, 12)

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = _FeatureIR(inc, ouc)
        self.peg = _PosInject(ouc)

    def forward(self, x):
        x = self.mlp(x)
        x = _from_grid(F.adaptive_avg_pool2d(_to_grid(x), self.pooled_grid))
        return self.peg(x)


class _ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (timm's LayerNorm2d without activation)."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class _SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s


class _InvertedResidual(nn.Module):
    """torchvision's layout with expansion 1: dw conv+LN+hardswish, SE, pw conv+LN; residual at stride 1."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.use_res = stride == 1
        self.block = nn.Sequential(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False),
                _ChannelLayerNorm(channels, eps=1e-5),
                nn.Hardswish(),
            ),
            _SqueezeExcitation(channels, _make_divisible(channels // 4, 8)),
            nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), _ChannelLayerNorm(channels, eps=1e-5)),
        )

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class _LDPBlock(nn.Module):
    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Identity(), nn.Linear(inc, ouc), nn.GELU(), nn.Linear(ouc, ouc))
        self.mb_block = nn.Sequential(nn.Identity(), _InvertedResidual(ouc, 1), _InvertedResidual(ouc, 2))

    def forward(self, x):
        return _from_grid(self.mb_block(_to_grid(self.mlp(x))))


class LDPNet(nn.Module):
    """LDP v1: keys ``model.mlp.{1,3}``, ``model.mb_block.{1,2}.block...``. Output [B, (grid/2)^2, H]."""

    def __init__(self, inc: int, ouc: int) -> None:
        super().__init__()
        self.model = _LDPBlock(inc, ouc)

    def forward(self, x):
        return self.model(x)


def build_projector(projector_type: str, mm_hidden: int, hidden: int) -> nn.Module:
    """The projector module for ``mm_projector_type`` (validated by the config reader)."""
    if projector_type == "ldpnetv2":
        return LDPNetV2(mm_hidden, hidden)
    if projector_type == "ldpnet":
        return LDPNet(mm_hidden, hidden)
    if projector_type == "linear":
        return nn.Linear(mm_hidden, hidden)
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if match:
        layers: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
        for _ in range(int(match.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(hidden, hidden)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector type {projector_type}")


def image_token_count(projector_type: str, patches: int) -> int:
    """How many image tokens the projector makes from ``patches`` patch features."""
    if projector_type == "ldpnetv2":
        return LDPNetV2.pooled_grid[0] * LDPNetV2.pooled_grid[1]
    if projector_type == "ldpnet":
        side = math.isqrt(patches)
        return ((side + 1) // 2) ** 2
    return patches
