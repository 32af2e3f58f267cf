"""Segmenter: images + free-form texts -> per-pixel labels and probabilities. The one inference
API that evaluation, serving and batch segmentation call.

The protocol follows the official TCL evaluation: resize so the short side is 448 (long side at
most 2048, aspect kept), slide a 448 window with stride 224, average the windows' mask scores,
resize back to the original size, optionally add a constant background score (0.4 with PAMR),
then argmax (Eq. 13). Windows of all images in a call are batched together.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tcl.clip import TextEmbeddingCache
from tcl.model import Grounder
from tcl.pamr import PAMR

ImageLike = Union[Image.Image, np.ndarray]


# The background's constant score (Eq. 13): 0.4 with PAMR, 0.5 without, as the official evaluation
# ("PAMR tends to reduce the foreground area": kakaobrain/tcl README and configs/eval.yml).
BACKGROUND_THRESHOLD = {True: 0.4, False: 0.5}


def background_threshold(setting: float | str | None, pamr: bool) -> float | None:
    """The threshold a setting means: "auto" is the protocol's for this PAMR setting, None is no
    background (every pixel gets one of the texts), a number is itself."""
    if setting == "auto":
        return BACKGROUND_THRESHOLD[bool(pamr)]
    if setting is None:
        return None
    if isinstance(setting, bool) or not isinstance(setting, (int, float)) or not 0.0 <= setting <= 1.0:
        raise ValueError(f"background_threshold must be a number in [0, 1], 'auto' or None, got {setting!r}")
    return float(setting)


@dataclasses.dataclass
class SegmenterConfig:
    short_side: int = 448
    max_long_side: int = 2048
    window: int = 448
    stride: int = 224
    background_threshold: float | str | None = "auto"  # see background_threshold(); None: every pixel gets a text
    pamr: bool = True
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    kp_weight: float = 0.3  # 1.0 = the frozen-CLIP baseline (KP branch only)
    windows_per_batch: int = 16
    precision: str = "fp32"  # or "bf16" (autocast; GPU)


@dataclasses.dataclass
class Segmentation:
    """labels [H, W] int64 indices into class_names; probabilities [K, H, W] float32 (K = len(class_names)).
    With a background threshold, class 0 is "background" and text i is class i + 1."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    class_names: list[str]


def to_image_tensor(image: ImageLike) -> torch.Tensor:
    """PIL RGB image or [H, W, 3] array -> [3, H, W]: uint8 stays uint8 (the official evaluation
    resizes 8-bit images), float arrays must hold values in [0, 1]; clear errors otherwise."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"image mode is {image.mode!r}, expected 'RGB' (use tcl.images.to_rgb(image))")
        array = np.asarray(image)
    elif isinstance(image, np.ndarray):
        array = image
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"image array has shape {array.shape}, expected [H, W, 3] RGB")
    else:
        raise TypeError(f"image must be a PIL image or a numpy array, got {type(image).__name__}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image has zero size {array.shape[1]}x{array.shape[0]}")
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image array dtype {array.dtype} not supported (uint8 or float in [0, 1])")
    tensor = torch.from_numpy(np.array(array, copy=True)).permute(2, 0, 1)  # PIL arrays are read-only
    return tensor if array.dtype == np.uint8 else tensor.float()


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, 3, H, W] uint8, or float in [0, 1] -> float [B, 3, *size] in [0, 1], bilinear.

    As the official evaluation resizes (mmcv's imrescale: OpenCV's bilinear filter on the 8-bit
    image, 8 bits out), an 8-bit image is resized on the 0-255 scale and rounded back to whole
    levels. OpenCV computes with 11-bit fixed-point weights; what remains between the two is at
    most one grey level (mean 0.13 on natural images; tests/test_segment.py compares with OpenCV).
    """
    if image.dtype == torch.uint8:
        pixels = image.float()
        if tuple(size) != tuple(pixels.shape[-2:]):
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
        return pixels / 255.0
    if tuple(size) != tuple(image.shape[-2:]):
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
    return image


def resized_shape(height: int, width: int, short_side: int, max_long_side: int) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: largest scale with short side <= short_side and long side <= max_long_side."""
    scale = min(short_side / min(height, width), max_long_side / max(height, width))
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def window_boxes(height: int, width: int, window: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Sliding windows (y1, y2, x1, x2) covering the image; the last row/column is flush with the edge."""
    def starts(size: int) -> list[tuple[int, int]]:
        count = max(size - window + stride - 1, 0) // stride + 1
        spans = []
        for i in range(count):
            end = min(i * stride + window, size)
            spans.append((max(end - window, 0), end))
        return spans

    return [(y1, y2, x1, x2) for y1, y2 in starts(height) for x1, x2 in starts(width)]


def centered_padding(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding up to a multiple of the patch size, split evenly."""
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


class Segmenter:
    def __init__(self, grounder: Grounder, config: SegmenterConfig | None = None, device: str | torch.device | None = None):
        self.config = config or SegmenterConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.grounder = grounder.to(self.device).eval()
        self.text_embeddings = TextEmbeddingCache(self.grounder.clip)
        self._pamr: dict[tuple, PAMR] = {}

    @classmethod
    def from_checkpoint(cls, path: str, device: str | torch.device | None = None, **overrides) -> "Segmenter":
        from tcl.checkpoint import load_grounder

        return cls(load_grounder(path), SegmenterConfig(**overrides), device=device)

    def _refiner(self, config: SegmenterConfig) -> PAMR | None:
        if not config.pamr:
            return None
        key = (config.pamr_iterations, tuple(config.pamr_dilations))
        if key not in self._pamr:
            self._pamr[key] = PAMR(*key).to(self.device)
        return self._pamr[key]

    def class_names(self, texts: Sequence[str], **overrides) -> list[str]:
        """The classes a call with these texts and overrides labels: "background" first when
        there is a background threshold, then the texts."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        threshold = background_threshold(config.background_threshold, config.pamr)
        return (["background"] if threshold is not None else []) + list(texts)

    @torch.no_grad()
    def segment(
        self, images: ImageLike | Sequence[ImageLike], texts: Sequence[str], *, with_probabilities: bool = True, **overrides
    ) -> list[Segmentation]:
        """Segment each image into the given texts (plus background where a threshold is set).
        `overrides` replace SegmenterConfig fields for this call (e.g. pamr=False, background_threshold=None)."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        texts = validate_texts(texts)
        return self.segment_each(images, [texts] * len(images), with_probabilities=with_probabilities, **overrides)

    @torch.no_grad()
    def segment_each(
        self, images: Sequence[ImageLike], texts: Sequence[Sequence[str]], *, with_probabilities: bool = True, **overrides
    ) -> list[Segmentation]:
        """Segment image i into its own texts[i], all images in one pass: every text's mask is
        computed independently of the others (Eq. 5, the KP term and PAMR act per text), so the
        windows of all images go through the model together against the union of the texts, and
        each image keeps its own texts' masks. How the server batches requests with different texts."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} text lists")
        texts = [validate_texts(t) for t in texts]
        if not images:
            return []
        union = list(dict.fromkeys(t for image_texts in texts for t in image_texts))
        column = {text: i for i, text in enumerate(union)}
        text_embedding = self.text_embeddings(union).to(self.device)
        scores = self.mask_scores([to_image_tensor(image) for image in images], text_embedding, config)
        results = []
        threshold = background_threshold(config.background_threshold, config.pamr)
        for score, image_texts in zip(scores, texts):
            score = score[[column[t] for t in image_texts]]
            class_names = list(image_texts)
            if threshold is not None:  # Eq. 13 with a constant background score
                class_names = ["background", *class_names]
                score = torch.cat([torch.full_like(score[:1], threshold), score])
            results.append(Segmentation(
                labels=score.argmax(dim=0).cpu().numpy(),
                probabilities=score.cpu().numpy() if with_probabilities else None,
                class_names=class_names,
            ))
        return results

    def mask_scores(self, images: list[torch.Tensor], text_embedding: torch.Tensor, config: SegmenterConfig) -> list[torch.Tensor]:
        """Window-averaged mask scores at each image's original size. images: [3, H, W] uint8, or
        float in [0, 1] -> [N, H, W]."""
        num_texts = text_embedding.shape[0]
        resized = []
        for image in images:
            size = resized_shape(image.shape[1], image.shape[2], config.short_side, config.max_long_side)
            resized.append(self.grounder.normalize(resize_image(image.to(self.device).unsqueeze(0), size))[0])
        sums = [torch.zeros(num_texts, *im.shape[-2:], device=self.device) for im in resized]
        counts = [torch.zeros(1, *im.shape[-2:], device=self.device) for im in resized]

        # Group windows by padded shape so each batch is one tensor.
        groups: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]]] = defaultdict(list)
        for index, image in enumerate(resized):
            for box in window_boxes(image.shape[1], image.shape[2], config.window, config.stride):
                height, width = box[1] - box[0], box[3] - box[2]
                pad = centered_padding(height, width, self.grounder.patch_size)
                groups[(height + pad[2] + pad[3], width + pad[0] + pad[1])].append((index, box, pad))

        refine = self._refiner(config)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        for padded_shape, windows in groups.items():
            for start in range(0, len(windows), config.windows_per_batch):
                chunk = windows[start:start + config.windows_per_batch]
                batch = torch.stack([
                    F.pad(resized[i][:, y1:y2, x1:x2], pad) for i, (y1, y2, x1, x2), pad in chunk
                ])
                with autocast:
                    masks = self.grounder.predict_masks(batch, text_embedding, config.kp_weight, refine)
                masks = F.interpolate(masks.float(), size=padded_shape, mode="bilinear", align_corners=False)
                for mask, (i, (y1, y2, x1, x2), (left, _, top, _)) in zip(masks, chunk):
                    sums[i][:, y1:y2, x1:x2] += mask[:, top:top + y2 - y1, left:left + x2 - x1]
                    counts[i][:, y1:y2, x1:x2] += 1

        scores = []
        for image, total, count in zip(images, sums, counts):
            score = (total / count).unsqueeze(0)
            if score.shape[-2:] != image.shape[-2:]:
                score = F.interpolate(score, size=image.shape[-2:], mode="bilinear", align_corners=False)
            scores.append(score[0])
        return scores


def validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (did you mean [text]?)")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given: segmentation needs at least one text to ground")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string: {text!r}")
    return texts
