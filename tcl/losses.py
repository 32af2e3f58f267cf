"""Text-grounded contrastive losses (paper Sec. 3.3, App. A), named as the paper names them.

Every function works in one process and across data-parallel workers: embeddings that serve as
negatives are all-gathered *with* gradient (torch.distributed.nn), each worker computes the loss
of its own rows with global labels, and DDP's gradient averaging then gives the gradient of the
mean loss. Batches must have the same size on every worker (drop the last partial batch).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class LossConfig:
    tcl_weight: float = 0.1  # lambda_TCL, on both the image-level and the feature-level loss
    area_weight: float = 0.4  # lambda_area, on both the positive and the negative area loss
    tv_weight: float = 1.0  # lambda_tv, on the TV of the masks and of the dense embedding
    positive_area_prior: float = 0.4  # p+ (Eq. 10)
    negative_area_prior: float = 0.0  # p-
    gumbel_tau: float = 1.0
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every worker's gradient for this worker's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each worker's loss contributes to every slice
        return grad.chunk(dist.get_world_size(), dim=0)[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x from all workers along dim 0; gradients flow back to every worker's x."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return x
    return _GatherWithGrad.apply(x)


def global_labels(batch_size: int, device: torch.device) -> torch.Tensor:
    """Index of each local sample's positive among the gathered samples of all workers."""
    rank, _ = rank_and_world_size()
    return torch.arange(batch_size, device=device) + batch_size * rank


def info_nce(image_embedding: torch.Tensor, text_embedding: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (Eq. 7) over all workers' pairs. Embeddings [B, C], un-normalised."""
    image_embedding = F.normalize(image_embedding, dim=-1)
    text_embedding = F.normalize(text_embedding, dim=-1)
    labels = global_labels(image_embedding.shape[0], image_embedding.device)
    logits_per_image = logit_scale * image_embedding @ gather_with_grad(text_embedding).t()
    logits_per_text = logit_scale * text_embedding @ gather_with_grad(image_embedding).t()
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))


def gumbel_sigmoid_straight_through(logits: torch.Tensor, tau: float = 1.0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Binary mask sampled with Gumbel-sigmoid; the backward pass is the soft sample's (straight-through).

    The difference of two Gumbel variables is logistic, so one logistic sample log(u / (1 - u))
    is the noise. `noise` may be given to make the sample deterministic (tests).
    """
    if noise is None:
        uniform = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        noise = torch.log(uniform) - torch.log1p(-uniform)
    soft = torch.sigmoid((logits + noise) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly `hard` forward; soft gradient backward


def image_level_tcl(
    images: torch.Tensor,
    positive_hard_masks: torch.Tensor,
    text_embedding: torch.Tensor,
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    logit_scale: torch.Tensor,
) -> torch.Tensor:
    """Image-level TCL (Eq. 6): mask the image with its caption's binary mask, re-encode it with the
    frozen CLIP, contrast with the captions. images [B, 3, H, W], masks [B, 1, h, w]."""
    masks = F.interpolate(positive_hard_masks, size=images.shape[-2:], mode="nearest")
    masked_image_embedding = encode_image(images * masks)
    return info_nce(masked_image_embedding, text_embedding, logit_scale)


def masked_average_pool(dense_embedding: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Average of the dense embedding under each mask (Eq. 8). [B, C, H, W] x [B, N, H, W] -> [B, N, C]."""
    weights = masks / (masks.sum(dim=(2, 3), keepdim=True) + eps)
    return torch.einsum("bchw,bnhw->bnc", dense_embedding, weights)


def feature_level_tcl(
    dense_embedding: torch.Tensor, soft_masks: torch.Tensor, text_embedding: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Feature-level TCL (Eq. 8-9) over all image-text pairs: image i's region for text j,
    pooled from i's dense embedding under mask (i, j), is compared with text j.

    dense_embedding [B, C, H, W]; soft_masks [B, N, H, W] for the N = B * world_size gathered
    texts; text_embedding [B, C] (this worker's captions)."""
    batch_size = dense_embedding.shape[0]
    rank, _ = rank_and_world_size()
    region_embedding = F.normalize(masked_average_pool(dense_embedding, soft_masks), dim=-1)  # [B, N, C]
    text_embedding = F.normalize(text_embedding, dim=-1)
    labels = global_labels(batch_size, dense_embedding.device)
    # similarity[i, j]: image i's region for text j against text j.
    similarity = torch.einsum("bnc,nc->bn", region_embedding, gather_with_grad(text_embedding))  # [B, N]
    # Each local text is scored against every worker's images: gather the similarities (N x N
    # scalars), not the regions. (Gathering each worker's regions for its *own* texts, as the
    # official code does, pairs other workers' images with the wrong texts when world size > 1.)
    logits_per_text = gather_with_grad(similarity)[:, rank * batch_size:(rank + 1) * batch_size].t()  # [B_txt, N_img]
    loss_image = F.cross_entropy(logit_scale * similarity, labels)
    loss_text = F.cross_entropy(logit_scale * logits_per_text, labels)
    return 0.5 * (loss_image + loss_text)


def area_loss(masks: torch.Tensor, prior: float) -> torch.Tensor:
    """Area prior (Eq. 10): |mean mask value - p|."""
    return (masks.mean() - prior).abs()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation (Eq. 11), mean over every element. x [B, C, H, W]."""
    horizontal = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    vertical = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return horizontal + vertical


class TCLLoss(nn.Module):
    """All TCL losses with their learnable temperatures; returns every component and the total (Eq. 12)."""

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config or LossConfig()
        self.image_level_logit_scale = nn.Parameter(torch.tensor(self.config.logit_scale_init))
        self.feature_level_logit_scale = nn.Parameter(torch.tensor(self.config.logit_scale_init))

    def _scale(self, logit_scale: torch.Tensor) -> torch.Tensor:
        return logit_scale.exp().clamp(max=self.config.logit_scale_max)

    def forward(
        self,
        images: torch.Tensor,
        dense_embedding: torch.Tensor,
        mask_logits: torch.Tensor,
        text_embedding: torch.Tensor,
        encode_image: Callable[[torch.Tensor], torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W]; dense_embedding [B, C, h, w]; mask_logits [B, N, h, w] for all
        gathered texts (Eq. 5 before the sigmoid); text_embedding [B, C] of this worker's captions."""
        cfg = self.config
        batch_size, num_texts = mask_logits.shape[:2]
        positives = global_labels(batch_size, mask_logits.device)
        rows = torch.arange(batch_size, device=mask_logits.device)
        soft_masks = torch.sigmoid(mask_logits)
        is_positive = torch.zeros(batch_size, num_texts, dtype=torch.bool, device=mask_logits.device)
        is_positive[rows, positives] = True
        positive_soft = soft_masks[rows, positives]  # [B, h, w]
        negative_soft = soft_masks[~is_positive]  # [B * (N - 1), h, w]
        positive_hard = gumbel_sigmoid_straight_through(mask_logits[rows, positives], cfg.gumbel_tau).unsqueeze(1)

        losses = {
            "image_level_tcl": image_level_tcl(
                images, positive_hard, text_embedding, encode_image, self._scale(self.image_level_logit_scale)
            ),
            "feature_level_tcl": feature_level_tcl(
                dense_embedding, soft_masks, text_embedding, self._scale(self.feature_level_logit_scale)
            ),
            "area_positive": area_loss(positive_soft, cfg.positive_area_prior),
            "area_negative": area_loss(negative_soft, cfg.negative_area_prior),
            "tv_mask": total_variation(soft_masks),
            "tv_embedding": total_variation(dense_embedding),
        }
        losses["total"] = (
            cfg.tcl_weight * (losses["image_level_tcl"] + losses["feature_level_tcl"])
            + cfg.area_weight * (losses["area_positive"] + losses["area_negative"])
            + cfg.tv_weight * (losses["tv_mask"] + losses["tv_embedding"])
        )
        return losses
