"""The grounder: text-grounded masks for (images, texts), and TCL, the grounder with its losses.

    frozen CLIP blocks 1..L-1 -> copy of block L (self-only attention, trainable)
        -> grounding decoder (x4) -> copy of CLIP's ln_post + proj -> dense embedding [B, C, 4h, 4w]
    mask (Eq. 5) = sigmoid(w * cos(text, pixel) + b)
    at inference (Eq. 15): mask = (1 - w_kp) * mask + w_kp * sigmoid((cos_CLIP - 0.25) * 10)
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from tcl.clip import CLIPConfig, FrozenCLIP, project_tokens, self_only_attention_block
from tcl.decoder import GroundingDecoder
from tcl.images import normalize
from tcl.losses import LossConfig, TCLLoss, gather_with_grad

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def cosine_similarity_maps(dense_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
    """cos(text, pixel) for every text and pixel. [B, C, H, W] x [N, C] -> [B, N, H, W].

    The same as F.normalize on both sides (the pixel norm clamped at 1e-12 as there), but the
    pixels are divided by their norms after the product, on N maps instead of C: the [B, C, H, W]
    map is read twice (norm, product) and never rewritten normalised."""
    text = F.normalize(text_embedding, dim=-1).to(dense_embedding.dtype)
    accumulate = torch.promote_types(dense_embedding.dtype, torch.float32)  # bf16 maps: norms in float32
    norms = torch.linalg.vector_norm(dense_embedding, dim=1, keepdim=True, dtype=accumulate).clamp_min(1e-12)
    similarity = torch.einsum("bchw,nc->bnhw", dense_embedding, text)
    # in the product's dtype: in bf16 training the [B, N, h, w] maps and everything the losses build
    # from them stay half the size of float32 ones
    return (similarity / norms).to(similarity.dtype)


@dataclasses.dataclass
class GrounderConfig:
    clip: CLIPConfig = dataclasses.field(default_factory=CLIPConfig)
    decoder_stages: int = 2
    decoder_kernel_size: int = 3
    mask_init_weight: float = 10.0  # w in Eq. 5
    mask_init_bias: float = -2.5  # b in Eq. 5
    kp_threshold: float = 0.25  # Eq. 15: sigmoid((cos - 0.25) * 10)
    kp_temperature: float = 10.0
    # The official code normalises with ImageNet statistics (not CLIP's) for training and evaluation.
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD


class Grounder(nn.Module):
    """Everything that turns an image and texts into masks. Only the copied block, the decoder,
    the copied ln_post/proj and w, b are trainable; the CLIP inside stays frozen."""

    def __init__(self, config: GrounderConfig, clip: FrozenCLIP | None = None):
        super().__init__()
        self.config = config
        self.clip = clip if clip is not None else FrozenCLIP(config.clip)
        visual = self.clip.visual
        self.self_only_block = copy.deepcopy(self.clip.last_block)
        self.grounding_decoder = GroundingDecoder(self.clip.width, config.decoder_stages, config.decoder_kernel_size)
        self.ln_post = copy.deepcopy(visual.ln_post)
        self.proj = nn.Parameter(visual.proj.detach().clone()) if visual.proj is not None else None
        self.mask_weight = nn.Parameter(torch.tensor(config.mask_init_weight))
        self.mask_bias = nn.Parameter(torch.tensor(config.mask_init_bias))
        for module in (self.self_only_block, self.grounding_decoder, self.ln_post):
            module.requires_grad_(True)

    @property
    def patch_size(self) -> int:
        return self.clip.patch_size

    @property
    def output_stride(self) -> int:
        """Input pixels per mask pixel."""
        return self.patch_size // self.grounding_decoder.upsample_factor

    def set_block_trainable(self, trainable: bool) -> None:
        self.self_only_block.requires_grad_(trainable)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] RGB, uint8 or float in [0, 1] -> model input (tcl.images.normalize)."""
        return normalize(images, self.config.image_mean, self.config.image_std)

    def grounded_embedding(self, penultimate: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The grounder's dense embedding from CLIP's penultimate tokens. [B, C, h*4, w*4]."""
        x = self.clip._batch_first(penultimate, lambda t: self_only_attention_block(self.self_only_block, t))
        # [B, D, h, w] with channels innermost in memory: the first upsample keeps that layout, so the
        # decoder runs cuDNN's NHWC convolutions (seen in a profile on an H100; forcing it changed nothing).
        x = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        x = self.grounding_decoder(x)
        x = project_tokens(x.permute(0, 2, 3, 1), self.ln_post, self.proj)
        return x.permute(0, 3, 1, 2)

    def mask_logits(self, dense_embedding: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """Eq. 5 before the sigmoid: w * cos(text, pixel) + b. [B, C, H, W] x [N, C] -> [B, N, H, W]."""
        return self.mask_weight * cosine_similarity_maps(dense_embedding, text_embedding) + self.mask_bias

    def knowledge_preservation_masks(self, penultimate: torch.Tensor, grid: tuple[int, int], text_embedding: torch.Tensor) -> torch.Tensor:
        """Masks from frozen CLIP's own dense features (Eq. 15's KP term). [B, N, h, w]."""
        clip_dense = self.clip.dense_embedding(penultimate, grid)
        similarity = cosine_similarity_maps(clip_dense, text_embedding)
        return torch.sigmoid((similarity - self.config.kp_threshold) * self.config.kp_temperature)

    @torch.no_grad()
    def predict_masks(
        self,
        images: torch.Tensor,
        text_embedding: torch.Tensor,
        kp_weight: float = 0.3,
        refine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Soft masks at the decoder's resolution. images: normalised [B, 3, H, W], H and W
        multiples of the patch size; text_embedding [N, C]. Returns [B, N, H/s, W/s], s = output_stride.

        `refine(images, masks)` (PAMR) acts on the grounder's masks before the KP mix, as in the
        official code. kp_weight=1 is the baseline: frozen CLIP's dense features alone.
        """
        penultimate, grid = self.clip.penultimate_tokens(images)
        out_size = (grid[0] * self.grounding_decoder.upsample_factor, grid[1] * self.grounding_decoder.upsample_factor)
        if kp_weight >= 1.0:
            masks = F.interpolate(self.knowledge_preservation_masks(penultimate, grid, text_embedding), size=out_size, mode="bilinear")
            return refine(images, masks) if refine is not None else masks
        masks = torch.sigmoid(self.mask_logits(self.grounded_embedding(penultimate, grid), text_embedding))
        if refine is not None:
            masks = refine(images, masks)
        if kp_weight > 0:
            kp_masks = F.interpolate(self.knowledge_preservation_masks(penultimate, grid, text_embedding), size=out_size, mode="bilinear")
            masks = kp_weight * kp_masks + (1.0 - kp_weight) * masks
        return masks


@dataclasses.dataclass
class TCLConfig:
    grounder: GrounderConfig = dataclasses.field(default_factory=GrounderConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    unfreeze_block_step: int = 30000  # the copied block is frozen before this step (paper: 30k of 50k)


class TCL(nn.Module):
    """The grounder with its losses: the module that training wraps in DDP."""

    def __init__(self, config: TCLConfig, grounder: Grounder | None = None):
        super().__init__()
        self.config = config
        self.grounder = grounder if grounder is not None else Grounder(config.grounder)
        self.criterion = TCLLoss(config.loss)
        self.apply_schedule(0)

    def apply_schedule(self, step: int) -> bool:
        """Freeze or unfreeze the copied block for `step`; True when that changed which parameters
        train (a DDP wrapper must then be rebuilt, since DDP fixes its parameter set at construction)."""
        trainable = step >= self.config.unfreeze_block_step
        changed = any(p.requires_grad != trainable for p in self.grounder.self_only_block.parameters())
        self.grounder.set_block_trainable(trainable)
        return changed

    def forward(self, images: torch.Tensor, text_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """images: normalised [B, 3, H, W]; text_tokens [B, L] (one caption per image)."""
        clip = self.grounder.clip
        with torch.no_grad():
            penultimate, grid = clip.penultimate_tokens(images)
            text_embedding = clip.encode_text(text_tokens).float()
        dense_embedding = self.grounder.grounded_embedding(penultimate, grid)
        mask_logits = self.grounder.mask_logits(dense_embedding, gather_with_grad(text_embedding))
        return self.criterion(images, dense_embedding, mask_logits, text_embedding, clip.encode_image)
