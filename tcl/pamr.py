"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), as the TCL evaluation uses
it: 10 iterations over 3x3 neighbourhoods at dilations 1, 2, 4, 8, 12, 24.

Each iteration replaces every mask value by an average of its neighbours' values, weighted by
how similar the neighbours' colours are (softmax over neighbours of -|I_i - I_j| / (0.1 * local
std)); masks therefore snap to image edges. A constant mask stays constant (weights sum to 1).
Borders repeat the edge pixel (replicate padding), as in the official code.

The official code gathers neighbours with one-hot 3x3 convolutions, one padded copy per dilation,
and holds all 48 neighbour values of every pixel. Here a neighbour is a shifted view of one copy
padded by the largest dilation (replicate padding is index clamping, so every dilation reads the
same copy), and an iteration accumulates weight x view one neighbour at a time: the same sums
(tests/test_pamr.py checks against a direct clamped-index form), with no convolution arithmetic
and nothing held but the padded copy and the result.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The 8 neighbours of a 3x3 neighbourhood, row by row; the centre is excluded from propagation
# but part of the local standard deviation.
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
NEIGHBOURHOOD = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


class PAMR(nn.Module):
    def __init__(self, num_iterations: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)):
        super().__init__()
        self.num_iterations = num_iterations
        self.dilations = tuple(dilations)

    def _shifted(self, x: torch.Tensor, offsets: Sequence[tuple[int, int]]) -> Iterator[torch.Tensor]:
        """x at every offset and dilation (dilation-major, offsets in order), borders replicated:
        views of one padded copy, each [B, C, H, W]."""
        pad = max(self.dilations)
        height, width = x.shape[-2:]
        padded = F.pad(x, [pad] * 4, mode="replicate")
        for d in self.dilations:
            for dy, dx in offsets:
                top, left = pad + dy * d, pad + dx * d
                yield padded[..., top:top + height, left:left + width]

    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """Normalised neighbour weights from the image. [B, 3, H, W] -> [B, P, H, W], P = 8 x dilations,
        summing to 1 over P."""
        local_std = torch.stack(list(self._shifted(image, NEIGHBOURHOOD)), dim=2).std(dim=2)  # [B, 3, H, W]
        neighbours = torch.stack(list(self._shifted(image, NEIGHBOURS)), dim=2)  # [B, 3, P, H, W]
        distance = (neighbours - image.unsqueeze(2)).abs()
        logits = (-distance / (1e-8 + 0.1 * local_std.unsqueeze(2))).mean(dim=1)
        return logits.softmax(dim=1)

    def _propagate(self, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """One iteration: each value replaced by its neighbours' weighted average.
        masks [B, C, H, W], weights [B, P, H, W] -> [B, C, H, W]."""
        out = torch.zeros_like(masks)
        for k, neighbour in enumerate(self._shifted(masks, NEIGHBOURS)):
            out.addcmul_(neighbour, weights[:, k:k + 1])
        return out

    # Under torch.compile this loop is not traced (10 unrolled iterations took minutes to compile);
    # what it calls is, so one iteration compiles once into a fused pass and runs ten times.
    @torch.no_grad()
    @torch.compiler.disable(recursive=False)
    def forward(self, image: torch.Tensor, masks: torch.Tensor, chunk_elements: int = 1 << 24) -> torch.Tensor:
        """image [B, 3, H, W] (any resolution: resized to the masks'); masks [B, N, h, w] -> refined
        [B, N, h, w], float32. Texts are refined a chunk at a time, each chunk's padded copy at most
        `chunk_elements` floats, so memory does not grow with the number of texts."""
        image = F.interpolate(image.float(), size=masks.shape[-2:], mode="bilinear", align_corners=True)
        weights = self.affinity(image)
        masks = masks.float()
        batch, channels, height, width = masks.shape
        pad = 2 * max(self.dilations)
        per_chunk = max(1, chunk_elements // (batch * (height + pad) * (width + pad)))
        refined = []
        for start in range(0, channels, per_chunk):
            chunk = masks[:, start:start + per_chunk]
            for _ in range(self.num_iterations):
                chunk = self._propagate(chunk, weights)
            refined.append(chunk)
        return torch.cat(refined, dim=1) if len(refined) > 1 else refined[0]
