"""Pictures people look at: overlays with a legend, palette label PNGs."""
from __future__ import annotations

import colorsys
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND_COLOUR = (0, 0, 0)


def palette(num_classes: int, has_background: bool = False) -> np.ndarray:
    """Distinct RGB colours [K, 3] (golden-ratio hues); class 0 is black when it is the background."""
    colours = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        lightness = 0.5 if i % 2 == 0 else 0.62
        colours.append([round(255 * c) for c in colorsys.hls_to_rgb(hue, lightness, 0.85)])
    colours = np.array(colours, dtype=np.uint8).reshape(-1, 3)
    if has_background and num_classes:
        colours = np.concatenate([np.array([BACKGROUND_COLOUR], dtype=np.uint8), colours[:-1]])
    return colours


def label_png(labels: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """Label map as an 8-bit palette PNG: pixel values are the class indices, colours for viewers."""
    if labels.max(initial=0) > 255:
        raise ValueError("label PNGs hold at most 256 classes")
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    colours = palette(len(class_names), has_background=bool(class_names) and class_names[0] == "background")
    image.putpalette(colours.flatten().tolist() + [0] * (768 - colours.size))
    return image


def overlay_with_legend(
    image: Image.Image, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5, title: str | None = None,
    ignore_index: int | None = None,
) -> Image.Image:
    """The image with the label map blended in, and a legend of the classes present with their
    areas. Pixels labelled `ignore_index` are left as they are and not counted."""
    has_background = bool(class_names) and class_names[0] == "background"
    colours = palette(len(class_names), has_background)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    ignored = labels == ignore_index if ignore_index is not None else np.zeros(labels.shape, bool)
    labels = np.where(ignored, 0, labels)
    keep = ignored | (labels == 0) if has_background else ignored  # background and ignored pixels: as they are
    blend = alpha * colours[labels].astype(np.float32) + (1 - alpha) * rgb
    blend[keep] = rgb[keep]
    blended = Image.fromarray(blend.round().clip(0, 255).astype(np.uint8))

    font = ImageFont.load_default()
    counts = np.bincount(labels[~ignored], minlength=len(class_names)) / max(1, int((~ignored).sum()))
    present = [i for i in np.argsort(-counts) if counts[i] > 0]
    row = 14
    header = row if title else 0
    legend_width = 8 + max([len(f"{class_names[i]} {100 * counts[i]:.1f}%") for i in present] + [4]) * 6 + 24
    height = max(blended.height, header + row * len(present) + 8)
    canvas = Image.new("RGB", (blended.width + legend_width, height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = blended.width + 6
    if title:
        draw.text((x, 2), title, fill=(0, 0, 0), font=font)
    for k, i in enumerate(present):
        y = header + 4 + k * row
        draw.rectangle([x, y, x + 10, y + 10], fill=tuple(int(c) for c in colours[i]), outline=(0, 0, 0))
        draw.text((x + 16, y - 1), f"{class_names[i]} {100 * counts[i]:.1f}%", fill=(0, 0, 0), font=font)
    return canvas
