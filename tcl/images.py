"""Images in and out: the one place that decodes and encodes them, for training shards, evaluation,
the HTTP service and batch segmentation.

Decoding gives an RGB image the way the official TCL pipeline (OpenCV's `imdecode` with
IMREAD_COLOR, through mmcv) sees the file, whatever its mode:
- EXIF orientation applied (phone photos store pixels sideways and say so in EXIF);
- 16-bit images scaled to 8 bits (value / 256), not clipped to white;
- alpha dropped (not composited), palettes expanded, greyscale replicated to three channels;
- CMYK turned into RGB as (255 - C)(255 - K) / 255 per channel.
Images of more than `max_pixels` pixels are refused from their header, before any decoding.
"""
from __future__ import annotations

import io
import os
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB (see the module docstring for the rules)."""
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        grey = np.clip(values >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 255).round().astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if image.mode == "CMYK":
        cmyk = np.asarray(image, dtype=np.uint16)
        rgb = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) // 255
        return Image.fromarray(rgb.astype(np.uint8))
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa", "RGBX"):
        base = {"LA": "L", "La": "L", "PA": "P"}.get(image.mode)
        if base == "P":
            image = image.convert("RGBA")
        elif base == "L":
            return Image.fromarray(np.repeat(np.asarray(image)[..., :1], 3, axis=2))
        return Image.fromarray(np.ascontiguousarray(np.asarray(image)[..., :3]))
    return image.convert("RGB")


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (unchanged without one)."""
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def decode_image_with_reason(data: Any, max_pixels: int | None = None) -> tuple[Image.Image | None, str | None]:
    """Encoded image bytes -> (RGB image, None), or (None, reason) for bytes that are no usable
    image; never raises. A reason starting "too large" means over `max_pixels` (or Pillow's
    decompression-bomb limit)."""
    if data is None:
        return None, "missing"
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        return None, f"not bytes ({type(data).__name__})"
    if len(data) == 0:
        return None, "empty"
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                return None, f"too large: {image.width}x{image.height} = {image.width * image.height} pixels, the limit is {max_pixels}"
            # load() forces the full decode: Image.open only reads the header, so a truncated file
            # would otherwise fail later, somewhere less convenient.
            image.load()
            if image.width == 0 or image.height == 0:
                return None, "zero-size"
            return to_rgb(upright(image)), None
    except Image.DecompressionBombError as error:
        return None, f"too large: {error}"
    except Image.UnidentifiedImageError:
        return None, "not an image"
    except Exception as error:  # noqa: BLE001 - corrupt data raises OSError, ValueError, SyntaxError, ...
        return None, f"broken: {type(error).__name__}: {error}"


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, without decoding it; None if it is no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - not an image: the decoder will say why
        return None


def decode_image(data: Any, max_pixels: int | None = None) -> Image.Image:
    """Encoded image bytes -> RGB image; ImageError naming the problem otherwise."""
    image, reason = decode_image_with_reason(data, max_pixels)
    if image is None:
        raise ImageError(f"not a usable image: {reason}")
    return image


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """An image file -> RGB image, decoded as `decode_image` does; ImageError naming the file otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    image, reason = decode_image_with_reason(data, max_pixels)
    if image is None:
        raise ImageError(f"{path}: not a usable image: {reason}")
    return image


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode a PIL image (PNG is lossless; JPEG uses `quality`)."""
    buffer = io.BytesIO()
    if fmt.upper() in ("JPEG", "JPG"):
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format=fmt)
    return buffer.getvalue()


def normalize(images, mean, std):
    """[B, 3, H, W] torch images, uint8 (0-255) or float in [0, 1] -> (x - mean) / std as float:
    the model's input. mean and std are per-channel sequences for [0, 1] values (ImageNet's by
    default, as the official TCL code uses for training and evaluation: GrounderConfig)."""
    import torch

    pixels = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, -1, 1, 1)
    return (pixels - mean) / std
