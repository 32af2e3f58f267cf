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
    max_window_texts: int = 1024  # windows x texts per model call, at most: bounds memory for many texts
    precision: str = "fp32"  # or "bf16" (autocast; GPU)
    # torch.compile the model call and PAMR's iteration (fused element-wise passes; for GPUs). The
    # first calls compile (tens of seconds; again for new window-batch shapes); results equal eager's
    # to float rounding (a pixel at a tie between two classes can go either way).
    compile: bool = False


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
        self._compiled_predict_masks = None

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

    def _predict_masks(self, config: SegmenterConfig):
        if not config.compile:
            return self.grounder.predict_masks
        if self._compiled_predict_masks is None:
            self._compiled_predict_masks = torch.compile(self.grounder.predict_masks)
        return self._compiled_predict_masks

    def class_names(self, texts: Sequence[str], **overrides) -> list[str]:
        """The classes a call with these texts and overrides labels: "background" first when
        there is a background threshold, then the texts."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        return classes(texts, background_threshold(config.background_threshold, config.pamr))

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
        each image keeps its own texts' masks. How the server batches requests with different texts.

        Memory: the scores of an image are kept at the resized scale, for its own texts only; the
        labels at the original size are computed a band of rows at a time, and every image's stay on
        the device until the last is done (one byte a pixel up to 256 classes). Only
        `with_probabilities=True` holds [1 + N, H, W] floats at the original size."""
        config = dataclasses.replace(self.config, **overrides) if overrides else self.config
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} text lists")
        texts = [validate_texts(t) for t in texts]
        if not images:
            return []
        union = list(dict.fromkeys(t for image_texts in texts for t in image_texts))
        column = {text: i for i, text in enumerate(union)}
        text_embedding = self.text_embeddings(union).to(self.device)
        tensors = [to_image_tensor(image) for image in images]
        columns = [[column[t] for t in image_texts] for image_texts in texts]
        scores = self.resized_scores(tensors, text_embedding, columns, config)
        threshold = background_threshold(config.background_threshold, config.pamr)
        labels, probabilities = [], []
        for score, image, image_texts in zip(scores, tensors, texts):
            size = tuple(image.shape[-2:])
            # held on the device until every image's are done: one byte a pixel for up to 256 classes
            dtype = torch.uint8 if len(image_texts) < 256 else torch.int32
            if with_probabilities:  # [1 + N, H, W] floats: copied to the host one image at a time
                score = upsample(score, size)
                if threshold is not None:  # Eq. 13 with a constant background score
                    score = torch.cat([torch.full_like(score[:1], threshold), score])
                labels.append(score.argmax(dim=0).to(dtype))
                probabilities.append(score.cpu().numpy())
            else:
                labels.append(upsampled_labels(score, size, threshold, dtype=dtype))
                probabilities.append(None)
        # Every image's labels are queued on the device before the first copy waits for them, so a
        # GPU never idles between images while the host issues the next image's work.
        labels = [label.cpu().numpy().astype(np.int64) for label in labels]
        return [Segmentation(labels=label, probabilities=probability, class_names=classes(image_texts, threshold))
                for label, probability, image_texts in zip(labels, probabilities, texts)]

    def preprocess(self, images: list[torch.Tensor], config: SegmenterConfig, max_pixels: int = 1 << 24) -> list[torch.Tensor]:
        """Images [3, H, W] -> resized to the protocol's scale and normalised, on the device. Images of
        one shape go to the device and through resize and normalisation together, at most
        `max_pixels` source pixels at a time (the float copy of 16 M pixels is 192 MiB)."""
        resized: list[torch.Tensor | None] = [None] * len(images)
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            by_shape[(tuple(image.shape), image.dtype)].append(index)
        for ((_, height, width), _), indices in by_shape.items():
            size = resized_shape(height, width, config.short_side, config.max_long_side)
            per_group = max(1, max_pixels // (height * width))
            for start in range(0, len(indices), per_group):
                group = indices[start:start + per_group]
                batch = torch.stack([images[i] for i in group]).to(self.device)
                for i, image in zip(group, self.grounder.normalize(resize_image(batch, size))):
                    resized[i] = image
        return resized

    def resized_scores(self, images: list[torch.Tensor], text_embedding: torch.Tensor, columns: list[list[int]],
                       config: SegmenterConfig) -> list[torch.Tensor]:
        """Window-averaged mask scores at each image's resized scale, for its own texts:
        images [3, H, W] (uint8, or float in [0, 1]); columns[i] the rows of `text_embedding` that
        are image i's texts -> [len(columns[i]), h, w] each."""
        resized = self.preprocess(images, config)
        sums = [torch.zeros(len(cols), *im.shape[-2:], device=self.device) for cols, im in zip(columns, resized)]
        counts = [torch.zeros(1, *im.shape[-2:], device=self.device) for im in resized]
        selections = [torch.tensor(cols, device=self.device) for cols in columns]
        same_texts = all(cols == columns[0] for cols in columns)

        # Group windows by padded shape so each batch is one tensor.
        groups: dict[tuple[int, int], list[tuple[int, tuple[int, int, int, int], tuple[int, int, int, int]]]] = defaultdict(list)
        for index, image in enumerate(resized):
            for box in window_boxes(image.shape[1], image.shape[2], config.window, config.stride):
                height, width = box[1] - box[0], box[3] - box[2]
                pad = centered_padding(height, width, self.grounder.patch_size)
                groups[(height + pad[2] + pad[3], width + pad[0] + pad[1])].append((index, box, pad))

        refine, predict_masks = self._refiner(config), self._predict_masks(config)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        # windows x texts per model call is bounded, so many texts (a batch of requests with
        # different ones) cost more calls, not more memory
        per_call = max(1, min(config.windows_per_batch, config.max_window_texts // max(1, text_embedding.shape[0])))
        for padded_shape, windows in groups.items():
            for start in range(0, len(windows), per_call):
                chunk = windows[start:start + per_call]
                batch = torch.stack([F.pad(resized[i][:, y1:y2, x1:x2], pad) for i, (y1, y2, x1, x2), pad in chunk])
                with autocast:
                    masks = predict_masks(batch, text_embedding, config.kp_weight, refine)
                if same_texts:
                    masks = [F.interpolate(masks[:, selections[0]].float(), size=padded_shape, mode="bilinear", align_corners=False)]
                    masks = masks[0]
                else:
                    masks = [F.interpolate(mask[selections[i]].float().unsqueeze(0), size=padded_shape, mode="bilinear",
                                           align_corners=False)[0] for mask, (i, _, _) in zip(masks, chunk)]
                for mask, (i, (y1, y2, x1, x2), (left, _, top, _)) in zip(masks, chunk):
                    sums[i][:, y1:y2, x1:x2] += mask[:, top:top + y2 - y1, left:left + x2 - x1]
                    counts[i][:, y1:y2, x1:x2] += 1
        return [total / count for total, count in zip(sums, counts)]


BACKGROUND = "background"


def background_name(texts: Sequence[str]) -> str:
    """The threshold class's name: "background", unless a text is itself "background" (then the two
    are kept apart as "background (threshold)", and so on while the name is taken)."""
    name = BACKGROUND
    while name in texts:
        name += " (threshold)"
    return name


def classes(texts: Sequence[str], threshold: float | None) -> list[str]:
    """Class names in label order: the threshold class first where there is a threshold, then the texts."""
    return ([background_name(texts)] if threshold is not None else []) + list(texts)


def upsample(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, h, w] -> [N, *size], bilinear (align_corners=False), as the protocol resizes back."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores.unsqueeze(0), size=size, mode="bilinear", align_corners=False)[0]


def _source_positions(out_size: int, in_size: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each output position: the two input positions bilinear interpolation reads and the second's
    weight, by PyTorch's rule for align_corners=False (src = scale * (dst + 0.5) - 0.5, clamped at 0)."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    source = (scale * (torch.arange(out_size, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0).to(device)
    first = source.long().clamp(max=in_size - 1)
    second = torch.where(first < in_size - 1, first + 1, first)
    return first, second, source - first


def upsampled_labels(scores: torch.Tensor, size: tuple[int, int], threshold: float | None, band_elements: int = 1 << 20,
                     dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """argmax over [threshold; upsample(scores, size)] (Eq. 13) without holding the upsampled
    scores: a band of output rows at a time, with `band_elements` floats per band. [H, W] `dtype`."""
    num, height, width = scores.shape
    out_h, out_w = size
    y0, y1, wy = _source_positions(out_h, height, scores.device)
    x0, x1, wx = _source_positions(out_w, width, scores.device)
    labels = torch.empty(out_h, out_w, dtype=dtype, device=scores.device)
    band = max(1, band_elements // max(1, num * out_w))
    for r0 in range(0, out_h, band):
        r1 = min(out_h, r0 + band)
        if (height, width) == (out_h, out_w):
            values = scores[:, r0:r1]
        else:
            top, bottom = scores[:, y0[r0:r1]], scores[:, y1[r0:r1]]  # [N, R, w]
            top = top[..., x0] * (1 - wx) + top[..., x1] * wx  # [N, R, W]
            bottom = bottom[..., x0] * (1 - wx) + bottom[..., x1] * wx
            weight = wy[r0:r1].view(1, -1, 1)
            values = top * (1 - weight) + bottom * weight
        best, index = values.max(dim=0)
        if threshold is None:
            labels[r0:r1] = index
        else:  # a tie goes to the background, which comes first in Eq. 13's argmax
            labels[r0:r1] = torch.where(best > threshold, index + 1, torch.zeros_like(index))
    return labels


def validate_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (did you mean [text]?)")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts given: segmentation needs at least one text to ground")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {i} is empty or not a string: {text!r}")
    repeated = sorted({t for t in texts if texts.count(t) > 1})
    if repeated:
        raise ValueError(f"texts {repeated} appear more than once: each text is one class")
    return texts
