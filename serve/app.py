"""TCL segmentation over HTTP: a Ray Serve deployment with a FastAPI ingress, around the same
`tcl.segment.Segmenter` that evaluation and batch segmentation use.

    serve run serve/config.yaml                      # the config's checkpoint, http://127.0.0.1:8000/
    serve run serve.app:build_app checkpoint=outputs/pipeline/runs/synthetic-tcl
    serve deploy serve/config.yaml                   # onto a running cluster

Routes: POST /v1/segment (multipart upload or JSON with base64), GET /v1/health, GET /v1/info,
GET / (a page to try the model). Concurrent requests are batched through the model whatever their
texts (`@serve.batch` + `Segmenter.segment_each`); texts are embedded once and cached (LRU).
Bad input answers 4xx with {"error": code, "message": ...} and the service keeps serving.
"""

import asyncio
import base64
import binascii
import collections
import dataclasses
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "index.html")
FORMATS = ("json", "png", "overlay")
OPTIONS = ("texts", "image", "background_threshold", "pamr", "format", "overlay")


@dataclasses.dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 4096 * 4096
    max_texts: int = 64
    max_text_length: int = 200  # characters; CLIP's tokenizer keeps 77 tokens anyway


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
    """A score in [0, 1], or none/null (every pixel gets a text); when not given, 0.4 with PAMR and
    0.5 without, as the paper's protocol."""
    if value is MISSING or value == "":
        return 0.4 if pamr else 0.5
    if value is None or isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise RequestError(400, "bad_option", f"`background_threshold` must be a number in [0, 1] or none, got {value!r}")
    return threshold


def decode_upload(data: bytes, limits: Limits):
    from tcl.images import decode_image_with_reason

    image, reason = decode_image_with_reason(data, max_pixels=limits.max_pixels)
    if image is None:
        if reason.startswith("too large"):
            raise RequestError(413, "image_too_large", f"image {reason}")
        raise RequestError(400, "bad_image", f"not a usable image ({reason})")
    return image


def parse_fields(fields: dict[str, Any], image_bytes: bytes | None, limits: Limits) -> SegmentRequest:
    unknown = sorted(set(fields) - set(OPTIONS))
    if unknown:
        raise RequestError(400, "unknown_option", f"unknown fields {unknown}; known: {list(OPTIONS)}")
    if not image_bytes:
        raise RequestError(400, "no_image", "no image given: send `image` (a file upload, or base64 in JSON)")
    texts = parse_texts(fields.get("texts"), limits)
    pamr = parse_bool("pamr", fields.get("pamr"), True)
    fmt = fields.get("format") or "json"
    if fmt not in FORMATS:
        raise RequestError(400, "bad_option", f"`format` must be one of {list(FORMATS)}, got {fmt!r}")
    return SegmentRequest(decode_upload(image_bytes, limits), texts, parse_threshold(fields.get("background_threshold", MISSING), pamr),
                          pamr, fmt, parse_bool("overlay", fields.get("overlay"), False))


async def read_request(request: Request, limits: Limits) -> SegmentRequest:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(413, "body_too_large", f"body of {int(declared)} bytes, the limit is {limits.max_body_bytes}")
    body = await request.body()
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, "body_too_large", f"body of {len(body)} bytes, the limit is {limits.max_body_bytes}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form()
        fields, image_bytes = {}, None
        for name, value in form.multi_items():
            if name == "image" and hasattr(value, "read"):
                image_bytes = await value.read()
            elif name == "texts" and "texts" in fields:  # repeated fields: one text each
                fields["texts"] = f"{fields['texts']},{value}"
            else:
                fields[name] = value
        fields.pop("image", None)
        return parse_fields(fields, image_bytes, limits)
    if content_type.startswith("application/json"):
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
        return parse_fields({k: v for k, v in fields.items() if k != "image"}, image_bytes, limits)
    raise RequestError(415, "unsupported_media_type", f"content type {content_type!r}: send multipart/form-data or application/json")


def render(result, request: SegmentRequest) -> Response:
    """The answer in the requested format: label-map PNG, overlay PNG with legend, or JSON."""
    from tcl.images import encode_image
    from tcl.encoding import pixel_fractions, run_length_encode
    from tcl.visualize import label_png, overlay_with_legend, palette

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


# --------------------------------------------------------------------------------------------------
# the deployment

app = FastAPI(title="TCL segmentation", description="Text-grounded masks for free-form texts (TCL, Cha et al., CVPR 2023).")


@app.exception_handler(RequestError)
async def _request_error(_request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status)


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(app)
class SegmentationService:
    def __init__(self, checkpoint: str, device: str | None = None, segmenter: dict | None = None, limits: dict | None = None,
                 max_batch_size: int = 16, batch_wait_timeout_s: float = 0.005):
        from tcl.segment import Segmenter

        self.checkpoint = checkpoint
        self.segmenter = Segmenter.from_checkpoint(checkpoint, device=device, **(segmenter or {}))
        self.limits = Limits(**(limits or {}))
        self.max_batch_size, self.batch_wait_timeout_s = max_batch_size, batch_wait_timeout_s
        self._batch.set_max_batch_size(max_batch_size)
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.in_flight = 0
        with open(PAGE, encoding="utf-8") as f:
            self.page = f.read()

    @app.get("/", response_class=HTMLResponse)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @app.get("/v1/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info(self) -> dict:
        grounder, config = self.segmenter.grounder, self.segmenter.config
        return {
            "model": "TCL", "checkpoint": self.checkpoint, "backbone": grounder.clip.config.model_name,
            "device": str(self.segmenter.device), "limits": dataclasses.asdict(self.limits), "formats": list(FORMATS),
            "protocol": {"short_side": config.short_side, "window": config.window, "stride": config.stride, "kp_weight": config.kp_weight},
            "max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s,
            "batches": {str(size): count for size, count in sorted(self.batch_sizes.items())},
            "text_cache": {"entries": len(self.segmenter.text_embeddings._cache), "misses": self.segmenter.text_embeddings.misses},
        }

    @app.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        start = time.perf_counter()
        parsed = await read_request(request, self.limits)
        parsed_at = time.perf_counter()
        # A lone request never waits for company; with others in flight, a batch waits up to
        # batch_wait_timeout_s for more requests (they reach the batch queue in a trickle while the
        # model runs, so without the wait batches stay small under load).
        self.in_flight += 1
        self._batch.set_batch_wait_timeout_s(self.batch_wait_timeout_s if self.in_flight > 1 else 0.0)
        try:
            result = await self._batch(parsed)
        finally:
            self.in_flight -= 1
        segmented_at = time.perf_counter()
        response = render(result, parsed)
        # where the time went, for clients and load tests (the Server-Timing header of browsers' dev tools)
        response.headers["Server-Timing"] = ", ".join(
            f"{name};dur={1000 * seconds:.2f}" for name, seconds in
            (("parse", parsed_at - start), ("segment", segmented_at - parsed_at), ("render", time.perf_counter() - segmented_at)))
        return response

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batch(self, requests: list[SegmentRequest]) -> list:
        self.batch_sizes[len(requests)] += 1
        return await asyncio.to_thread(self._segment, requests)

    def _segment(self, requests: list[SegmentRequest]) -> list:
        """One model pass per distinct (PAMR, threshold) among the batch's requests; usually one."""
        results: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.pamr, r.background_threshold)].append(i)
        for (pamr, threshold), indices in groups.items():
            out = self.segmenter.segment_each([requests[i].image for i in indices], [requests[i].texts for i in indices],
                                              with_probabilities=False, pamr=pamr, background_threshold=threshold)
            for i, result in zip(indices, out):
                results[i] = result
        return results


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (config args: checkpoint, device,
    segmenter overrides, limits, max_batch_size, batch_wait_timeout_s)."""
    args = dict(args)
    if "checkpoint" not in args:
        raise ValueError("serve app needs `checkpoint`: a TCL checkpoint directory or run folder, local or s3://")
    return SegmentationService.bind(**args)
