"""tcl.images: every decode path (training shards, evaluation, Serve, batch segmentation) sees the
pixels the official pipeline (OpenCV) sees: EXIF orientation applied, any mode turned into RGB
with known values."""
import io

import numpy as np
import pytest
from PIL import Image

from tcl.images import ImageError, decode_image, decode_image_with_reason, encode_image, load_image

RED, BLUE = (220, 20, 20), (20, 20, 220)


def sideways_jpeg(orientation: int) -> bytes:
    """40x20 pixels stored, left half red, right half blue, and an EXIF orientation tag."""
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20], array[:, 20:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def close(pixel, colour, tolerance=12):
    return all(abs(int(a) - b) <= tolerance for a, b in zip(pixel, colour))


def test_exif_orientation_is_applied(tmp_path):
    # 6: stored rotated; shown after turning 90 degrees clockwise, so the stored left side is on top
    image = decode_image(sideways_jpeg(6))
    assert image.size == (20, 40)
    assert close(image.getpixel((10, 5)), RED) and close(image.getpixel((10, 35)), BLUE)
    (tmp_path / "photo.jpg").write_bytes(sideways_jpeg(6))
    assert load_image(tmp_path / "photo.jpg").size == (20, 40)  # the evaluation's reader
    # 3: upside down; 1: as stored
    turned = decode_image(sideways_jpeg(3))
    assert turned.size == (40, 20) and close(turned.getpixel((5, 10)), BLUE)
    assert close(decode_image(sideways_jpeg(1)).getpixel((5, 10)), RED)


def png(image: Image.Image) -> bytes:
    return encode_image(image, "PNG")


def test_16_bit_greyscale_is_scaled_to_8_bits_not_clipped_to_white():
    values = np.array([[0, 256, 4096], [32768, 51400, 65535]], dtype=np.uint16)
    image = decode_image(png(Image.fromarray(values)))
    assert image.mode == "RGB"
    assert np.asarray(image)[..., 0].tolist() == [[0, 1, 16], [128, 200, 255]]  # value // 256, like OpenCV
    assert (np.asarray(image)[..., 0] == np.asarray(image)[..., 2]).all()


def test_palette_greyscale_with_alpha_and_rgba_drop_alpha():
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert np.asarray(decode_image(png(palette))).tolist() == [[[10, 20, 30], [200, 100, 50]]]
    grey_alpha = Image.fromarray(np.array([[[77, 0], [150, 255]]], np.uint8), mode="LA")
    assert np.asarray(decode_image(png(grey_alpha))).tolist() == [[[77] * 3, [150] * 3]]  # alpha dropped, not composited
    rgba = Image.fromarray(np.array([[[1, 2, 3, 0], [4, 5, 6, 128]]], np.uint8), mode="RGBA")
    assert np.asarray(decode_image(png(rgba))).tolist() == [[[1, 2, 3], [4, 5, 6]]]


def test_cmyk_becomes_rgb_multiplicatively():
    cmyk = Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [100, 50, 0, 100], [0, 0, 0, 255]]], np.uint8), mode="CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, format="TIFF")
    # (255 - C)(255 - K) / 255 per channel
    assert np.asarray(decode_image(buffer.getvalue())).tolist() == [[[255, 255, 255], [0, 255, 255], [94, 124, 155], [0, 0, 0]]]


def test_bad_bytes_give_reasons_and_errors():
    assert decode_image_with_reason(b"") == (None, "empty")
    assert decode_image_with_reason(b"not an image at all") == (None, "not an image")
    big = png(Image.new("RGB", (100, 100)))
    image, reason = decode_image_with_reason(big, max_pixels=50 * 50)
    assert image is None and reason.startswith("too large: 100x100")
    with pytest.raises(ImageError, match="not a usable image: empty"):
        decode_image(b"")
