"""The segmentation service on Ray Serve: a deployment with a FastAPI ingress around the same
`tcl.segment.Segmenter` that evaluation and batch segmentation use; tcl.http_api parses requests
and renders answers.

    serve run serve/config.yaml                      # the config's checkpoint, http://127.0.0.1:8000/
    serve run tcl.ray.serve:build_app checkpoint=outputs/pipeline/runs/synthetic-tcl
    serve deploy serve/config-gpu.yaml               # onto a running cluster (the package is installed there)

Routes: POST /v1/segment, GET /v1/health, GET /v1/info, GET / (a page to try the model).
Concurrent requests are batched through the model whatever their texts (`@serve.batch` and
`Segmenter.segment_each`); texts are embedded once and cached (LRU).
"""

import asyncio
import collections
import dataclasses
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from tcl.http_api import FORMATS, Limits, RequestError, SegmentRequest, read_request, render

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "index.html")


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
