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
import http
import os
import resource
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from tcl.http_api import FORMATS, Limits, RequestError, SegmentRequest, read_request, render, request_work

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "web", "index.html")


app = FastAPI(title="TCL segmentation", description="Text-grounded masks for free-form texts (TCL, Cha et al., CVPR 2023).")


@app.exception_handler(RequestError)
async def _request_error(_request: Request, error: RequestError) -> JSONResponse:
    return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Errors FastAPI and Starlette raise themselves (an unknown route, a wrong method): the same
    JSON shape as ours."""
    code = http.HTTPStatus(error.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    return JSONResponse({"error": code, "message": str(error.detail)}, status_code=error.status_code, headers=error.headers)


@app.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": "bad_request", "message": str(error.errors())[:500]}, status_code=422)


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
        self.splits = 0  # batches cut in two or more passes to stay within limits.max_batch_work
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
            "batches": {str(size): count for size, count in sorted(self.batch_sizes.items())}, "batch_splits": self.splits,
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # this replica's, in MiB
            "text_cache": {"entries": len(self.segmenter.text_embeddings._cache), "misses": self.segmenter.text_embeddings.misses},
        }

    @app.post("/v1/segment")
    async def segment(self, request: Request) -> Response:
        start = time.perf_counter()
        config = self.segmenter.config
        parsed = await read_request(request, self.limits, (config.short_side, config.max_long_side))
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
        """One model pass per distinct (PAMR, threshold) among the batch's requests, usually one, each
        split into passes whose work stays within limits.max_batch_work."""
        results: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for i, r in enumerate(requests):
            groups[(r.pamr, r.background_threshold)].append(i)
        for (pamr, threshold), indices in groups.items():
            parts = self.within_budget(requests, indices)
            self.splits += len(parts) - 1
            for part in parts:
                out = self.segmenter.segment_each([requests[i].image for i in part], [requests[i].texts for i in part],
                                                  with_probabilities=False, pamr=pamr, background_threshold=threshold)
                for i, result in zip(part, out):
                    results[i] = result
        return results

    def within_budget(self, requests: list[SegmentRequest], indices: list[int]) -> list[list[int]]:
        """`indices` in order, cut into runs whose work (each image scored against the run's union
        of texts) is at most limits.max_batch_work; a request alone is always a run."""
        config = self.segmenter.config
        runs, run, texts = [], [], set()

        def work(members: list[int], union: set) -> int:
            return sum(request_work(requests[i].image.width, requests[i].image.height, len(union), config.short_side,
                                    config.max_long_side) for i in members)

        for i in indices:
            union = texts | set(requests[i].texts)
            if run and work(run + [i], union) > self.limits.max_batch_work:
                runs.append(run)
                run, union = [], set(requests[i].texts)
            run.append(i)
            texts = union
        return runs + [run] if run else runs


def build_app(args: dict) -> serve.Application:
    """Application builder for `serve run` / `serve deploy` (config args: checkpoint, device,
    segmenter overrides, limits, max_batch_size, batch_wait_timeout_s)."""
    args = dict(args)
    if "checkpoint" not in args:
        raise ValueError("serve app needs `checkpoint`: a TCL checkpoint directory or run folder, local or s3://")
    return SegmentationService.bind(**args)
