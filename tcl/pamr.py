"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), as the TCL evaluation uses
it: 10 iterations over 3x3 neighbourhoods at dilations 1, 2, 4, 8, 12, 24.

Each iteration replaces every mask value by an average of its neighbours' values, weighted by
how similar the neighbours' colours are (softmax over neighbours of -|I_i - I_j| / (0.1 * local
std)); masks therefore snap to image edges. A constant mask stays constant (weights sum to 1)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _neighbour_offsets() -> torch.Tensor:
    """3x3 one-hot kernels picking each of the 8 neighbours. [8, 1, 3, 3]."""
    kernels = torch.zeros(8, 1, 3, 3)
    positions = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for k, (r, c) in enumerate(positions):
        kernels[k, 0, r, c] = 1.0
    return kernels


class PAMR(nn.Module):
    def __init__(self, num_iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)):
        super().__init__()
        self.num_iterations = num_iterations
        self.dilations = tuple(dilations)
        self.register_buffer("neighbours", _neighbour_offsets(), persistent=False)
        centre = torch.zeros(1, 1, 3, 3)
        centre[0, 0, 1, 1] = 1.0
        # the 3x3 window including the centre, for the local standard deviation
        self.register_buffer("window", torch.cat([self.neighbours[:4], centre, self.neighbours[4:]]), persistent=False)

    def _gather(self, x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Values at every kernel offset and dilation. [B, K, H, W] -> [B, K, P, H, W]."""
        batch, channels, height, width = x.shape
        flat = x.reshape(batch * channels, 1, height, width)
        gathered = [
            F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernels.to(x.dtype), dilation=d) for d in self.dilations
        ]
        return torch.cat(gathered, dim=1).reshape(batch, channels, -1, height, width)

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised neighbour weights from the image. [B, 3, H, W] -> [B, 1, P, H, W], summing to 1 over P."""
        local_std = self._gather(image, self.window).std(dim=2, keepdim=True)
        distance = (self._gather(image, self.neighbours) - image.unsqueeze(2)).abs()
        logits = (-distance / (1e-8 + 0.1 * local_std)).mean(dim=1, keepdim=True)
        return logits.softmax(dim=2)

    def _propagate(self, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One iteration: each value replaced by its neighbours' weighted average. [B, C, H, W].
        Summed a dilation at a time, so the [B, C, 8, H, W] neighbour values of one dilation are
        all that is held (not the 48 of all six)."""
        batch, channels, height, width = masks.shape
        flat = masks.reshape(batch * channels, 1, height, width)
        kernels = self.neighbours.to(masks.dtype)
        out = torch.zeros_like(masks)
        for k, d in enumerate(self.dilations):
            values = F.conv2d(F.pad(flat, [d] * 4, mode="replicate"), kernels, dilation=d).view(batch, channels, 8, height, width)
            out += (values * weights[:, :, 8 * k:8 * (k + 1)]).sum(dim=2)
        return out

    @torch.no_grad()
    def forward(self, image: torch.Tensor, masks: torch.Tensor, chunk_elements: int = 1 << 23) -> torch.Tensor:
        """image [B, 3, H, W] (any resolution: resized to the masks'); masks [B, N, h, w] -> refined
        [B, N, h, w]. Texts are refined `chunk_elements` floats of neighbour values at a time, so
        memory does not grow with the number of texts."""
        image = F.interpolate(image.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        weights = self.affinity(image)
        masks = masks.float()
        batch, channels, height, width = masks.shape
        per_chunk = max(1, chunk_elements // (batch * 8 * height * width))
        refined = []
        for start in range(0, channels, per_chunk):
            chunk = masks[:, start:start + per_chunk]
            for _ in range(self.num_iterations):
                chunk = self._propagate(chunk, weights)
            refined.append(chunk)
        return torch.cat(refined, dim=1) if len(refined) > 1 else refined[0]
