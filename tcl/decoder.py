"""Grounding decoder (paper Eq. 14): upsamples the grounder's dense features x4 with gated
residual convolutions. Every block's output is scaled by tanh(gate) with the gate at 0, so at
initialisation the decoder is the identity (after nearest-neighbour upsampling): training starts
from CLIP's own dense features and the decoder only adds what helps."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a [B, C, H, W] map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedConvBlock(nn.Module):
    """Pre-activation residual branch: LayerNorm2d -> GELU -> 3x3 conv, scaled by tanh(gate)."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.activation = nn.GELU()
        self.conv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.gate) * self.conv(self.activation(self.norm(x)))


class UpsampleStage(nn.Module):
    """Nearest-neighbour x2 upsample, then two gated residual conv blocks."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        self.block1 = GatedConvBlock(channels, kernel_size)
        self.block2 = GatedConvBlock(channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.block2(self.block1(x))


class GroundingDecoder(nn.Sequential):
    """`num_stages` x2 stages: [B, C, h, w] -> [B, C, h * 2^stages, w * 2^stages]."""

    def __init__(self, channels: int, num_stages: int = 2, kernel_size: int = 3):
        super().__init__(*[UpsampleStage(channels, kernel_size) for _ in range(num_stages)])
        self.upsample_factor = 2 ** num_stages
