"""The HTTP API of the segmentation service, without Ray: limits, request parsing and answers.

POST /v1/segment takes a multipart upload (`image` file, `texts`, options) or JSON (`image` as
base64 or a data URL); it answers a label-map PNG, an overlay PNG with a legend, or JSON with the
per-text areas and the run-length encoded label map. Bad input raises `RequestError`, which the
service answers with its status and {"error": code, "message": ...}. tcl.ray.serve is the Ray
Serve deployment around these functions and tcl.segment.Segmenter.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tcl.encoding import pixel_fractions, run_length_encode
from tcl.images import decode_image_with_reason, encode_image, header_size
from tcl.segment import background_threshold, resized_shape
from tcl.visualize import label_png, overlay_with_legend, palette

FORMATS = ("json", "png", "overlay")
OPTIONS = ("texts", "image", "background_threshold", "pamr", "format", "overlay")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request, and one batch of them, may ask of a replica. Work is counted in
    pixel-texts: the pixels the model scores (the image resized to the protocol's scale) times the
    request's texts, plus the image's own pixels (its label map); about 4 bytes of memory each."""

    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 4096 * 4096
    max_texts: int = 64
    max_text_length: int = 200  # characters; CLIP's tokenizer keeps 77 tokens anyway
    max_request_work: int = 2**26  # pixel-texts; the largest image the protocol scores (2048 x 448) with 64 texts is 2**25.8
    max_batch_work: int = 2**28  # pixel-texts of the requests segmented together; a batch over it is split


def request_work(width: int, height: int, texts: int, short_side: int, max_long_side: int) -> int:
    """Pixel-texts of segmenting a width x height image into `texts` texts (see Limits)."""
    scored_height, scored_width = resized_shape(height, width, short_side, max_long_side)
    return scored_height * scored_width * texts + width * height


class RequestError(Exception):
    """Bad input: answered with `status` and {"error": code, "message": message}."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclasses.dataclass
class SegmentRequest:
    image: Any  # PIL RGB image
    texts: list[str]
    background_threshold: float | None
    pamr: bool
    format: str
    overlay: bool  # JSON answers: include the overlay PNG (base64)


# --------------------------------------------------------------------------------------------------
# requests in, answers out (plain functions: tested without Ray)

def parse_texts(value: Any, limits: Limits) -> list[str]:
    """A list of strings, or one comma-separated string -> the texts, stripped, duplicates dropped."""
    if value is None:
        raise RequestError(400, "no_texts", "no texts given: send `texts`, a list or a comma-separated string")
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise RequestError(400, "bad_texts", "`texts` must be a list of strings or a comma-separated string")
    texts = list(dict.fromkeys(t.strip() for t in items if t.strip()))
    if not texts:
        raise RequestError(400, "no_texts", "no texts given: `texts` is empty")
    if len(texts) > limits.max_texts:
        raise RequestError(400, "too_many_texts", f"{len(texts)} texts, the limit is {limits.max_texts}")
    for text in texts:
        if len(text) > limits.max_text_length:
            raise RequestError(400, "text_too_long", f"a text of {len(text)} characters, the limit is {limits.max_text_length}: {text[:40]!r}...")
    return texts


def parse_bool(name: str, value: Any, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "on", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "off", "no"):
        return False
    raise RequestError(400, "bad_option", f"`{name}` must be true or false, got {value!r}")


MISSING = object()


def parse_threshold(value: Any, pamr: bool) -> float | None:
    """A score in [0, 1], or none/null (every pixel gets a text); when not given (or "auto"), the
    protocol's for this PAMR setting (tcl.segment.BACKGROUND_THRESHOLD). Booleans are not numbers."""
    if value is MISSING or value == "" or isinstance(value, str) and value.strip().lower() == "auto":
        return background_threshold("auto", pamr)
    if value is None or isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    threshold = float("nan")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        threshold = float(value)
    elif isinstance(value, str):
        try:
            threshold = float(value.strip())
        except ValueError:
            pass
    if not 0.0 <= threshold <= 1.0:
        raise RequestError(400, "bad_option", f"`background_threshold` must be a number in [0, 1], auto or none, got {value!r}")
    return threshold


def decode_upload(data: bytes, limits: Limits):
    image, reason = decode_image_with_reason(data, max_pixels=limits.max_pixels)
    if image is None:
        if reason.startswith("too large"):
            raise RequestError(413, "image_too_large", f"image {reason}")
        raise RequestError(400, "bad_image", f"not a usable image ({reason})")
    return image


def parse_fields(fields: dict[str, Any], image_bytes: bytes | None, limits: Limits, scale: tuple[int, int] = (448, 2048)) -> SegmentRequest:
    """The request's fields and image bytes -> a SegmentRequest, every check made before the image
    is decoded; `scale`: the protocol's (short side, long side cap) the work is counted at."""
    unknown = sorted(set(fields) - set(OPTIONS))
    if unknown:
        raise RequestError(400, "unknown_option", f"unknown fields {unknown}; known: {list(OPTIONS)}")
    if not image_bytes:
        raise RequestError(400, "no_image", "no image given: send `image` (a file upload, or base64 in JSON)")
    texts = parse_texts(fields.get("texts"), limits)
    pamr = parse_bool("pamr", fields.get("pamr"), True)
    threshold = parse_threshold(fields.get("background_threshold", MISSING), pamr)
    fmt = fields.get("format") or "json"
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise RequestError(400, "bad_option", f"`format` must be one of {list(FORMATS)}, got {fmt!r}")
    overlay = parse_bool("overlay", fields.get("overlay"), False)
    size = header_size(image_bytes)
    if size is not None and size[0] * size[1] <= limits.max_pixels:
        work = request_work(size[0], size[1], len(texts), *scale)
        if work > limits.max_request_work:
            raise RequestError(413, "too_much_work", f"a {size[0]}x{size[1]} image with {len(texts)} texts is {work} pixel-texts "
                                                     f"(scored pixels x texts + pixels), the limit per request is {limits.max_request_work}: "
                                                     f"send fewer texts or a smaller image")
    return SegmentRequest(decode_upload(image_bytes, limits), texts, threshold, pamr, fmt, overlay)


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, read as it arrives and refused (413) as soon as it passes `limit` bytes,
    whatever Content-Length says (or whether there is one: chunked uploads)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"body of {int(declared)} bytes, the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, "body_too_large", f"body of more than {limit} bytes, the limit")
    return bytes(body)


async def read_request(request: Request, limits: Limits, scale: tuple[int, int] = (448, 2048)) -> SegmentRequest:
    content_type = request.headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type not in ("multipart/form-data", "application/json"):
        raise RequestError(415, "unsupported_media_type", f"content type {content_type!r}: send multipart/form-data or application/json")
    body = await read_body(request, limits.max_body_bytes)
    if media_type == "multipart/form-data":
        request._body = body  # Starlette's form parser reads the body already read, not the socket again
        try:
            form = await request.form(max_files=2, max_fields=len(OPTIONS) + limits.max_texts, max_part_size=limits.max_texts * limits.max_text_length * 2)
        except Exception as error:  # noqa: BLE001 - Starlette's multipart errors (no boundary, too many fields, a field too large)
            raise RequestError(400, "bad_multipart", f"the multipart body cannot be read: {getattr(error, 'detail', None) or error}") from None
        fields, image_bytes = {}, None
        for name, value in form.multi_items():
            if name == "image" and hasattr(value, "read"):
                image_bytes = await value.read()
            elif name == "texts" and "texts" in fields:  # repeated fields: one text each
                fields["texts"] = f"{fields['texts']},{value}"
            else:
                fields[name] = value
        fields.pop("image", None)
        return parse_fields(fields, image_bytes, limits, scale)
    try:
        fields = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, "bad_json", f"body is not valid JSON: {error}") from None
    if not isinstance(fields, dict):
        raise RequestError(400, "bad_json", "JSON body must be an object")
    encoded = fields.get("image")
    if encoded is not None and not isinstance(encoded, str):
        raise RequestError(400, "bad_image", "`image` must be a base64 string in JSON")
    try:
        image_bytes = base64.b64decode(encoded.split(",", 1)[-1], validate=True) if encoded else None  # data URLs too
    except (binascii.Error, ValueError):
        raise RequestError(400, "bad_image", "`image` is not valid base64") from None
    return parse_fields({k: v for k, v in fields.items() if k != "image"}, image_bytes, limits, scale)


def render(result, request: SegmentRequest) -> Response:
    """The answer in the requested format: label-map PNG, overlay PNG with legend, or JSON."""
    names = result.class_names
    headers = {"X-Classes": json.dumps(names)}
    if request.format == "png":
        return Response(encode_image(label_png(result.labels, names)), media_type="image/png", headers=headers)
    if request.format == "overlay":
        return Response(encode_image(overlay_with_legend(request.image, result.labels, names)), media_type="image/png", headers=headers)
    colours = palette(len(names), has_background=request.background_threshold is not None)
    body = {
        "width": request.image.width, "height": request.image.height, "texts": request.texts, "classes": names,
        "background_threshold": request.background_threshold, "pamr": request.pamr,
        "colors": ["#%02x%02x%02x" % tuple(int(c) for c in colour) for colour in colours],
        "fractions": pixel_fractions(result.labels, names),
        "labels": run_length_encode(result.labels),
    }
    if request.overlay:
        body["overlay_png"] = base64.b64encode(encode_image(overlay_with_legend(request.image, result.labels, names))).decode()
    return JSONResponse(body)


