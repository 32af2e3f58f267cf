"""Latency and throughput of the Serve application (serve/app.py) at concurrency 1, 8 and 32,
against a direct in-process Segmenter on the same images, in one run.

Targets on CPU with the tiny model: at concurrency 1, the service's p50 at most 15 ms above the
direct call's; at concurrency 32, requests/s at least 0.8x the direct batched loop (the same
images through `Segmenter.segment` in batches of the service's max_batch_size). The replica and
the direct loop get the same torch threads (--threads).

    python bench/serve_load.py
    python bench/serve_load.py --requests 256 --image-size 96
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.request import urlopen

import numpy as np
import torch
from PIL import Image

from tcl.checkpoint import save_grounder
from tcl.clip import CLIPConfig, tiny_model_cfg
from tcl.data import synthetic
from tcl.images import encode_image
from tcl.model import Grounder, GrounderConfig
from tcl.segment import Segmenter

TEXTS = ["a red star", "a blue circle", "grass", "sky", "water"]
timings: dict[str, list[float]] = {}  # the service's Server-Timing parts (ms) of the last load()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def multipart(payload: bytes) -> tuple[bytes, str]:
    """A request body, encoded once, so that the load generator spends its CPU on sending."""
    from urllib3 import encode_multipart_formdata

    return encode_multipart_formdata({"image": ("x.png", payload, "image/png"), "texts": ",".join(TEXTS), "format": "json"})


def load(url: str, bodies: list[tuple[bytes, str]], concurrency: int) -> tuple[list[float], float]:
    """Every request once, `concurrency` at a time over keep-alive connections: per-request
    latencies (s) and requests/s."""
    import http.client
    import threading
    from urllib.parse import urlparse

    address = urlparse(url)
    connections = threading.local()
    timings.clear()

    def one(body: tuple[bytes, str]) -> float:
        if not hasattr(connections, "c"):
            connections.c = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        start = time.perf_counter()
        connections.c.request("POST", "/v1/segment", body=body[0], headers={"Content-Type": body[1]})
        answer = connections.c.getresponse()
        data = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {data[:200]!r}")
        elapsed = time.perf_counter() - start
        for part in answer.getheader("Server-Timing", "").split(","):
            name, _, duration = part.strip().partition(";dur=")
            timings.setdefault(name, []).append(float(duration))
        return elapsed

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, bodies))
    return latencies, len(bodies) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the replica and the direct loop")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait", type=float, default=0.005, help="the service's batch_wait_timeout_s (default: %(default)s)")
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the replica's torch threads (inherited by Ray workers)
    torch.set_num_threads(args.threads)
    size = args.image_size
    protocol = {"short_side": size, "window": size, "stride": size // 2}

    import ray
    from ray import serve

    from tcl.ray.serve import build_app

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_grounder(os.path.join(tmp, "ckpt"), Grounder(GrounderConfig(clip=CLIPConfig("tiny-vit-8", None, tiny_model_cfg(image_size=size)))))
        images = [scene.image for scene in synthetic.scenes(args.requests, seed=3, image_size=size)]
        payloads = [encode_image(image) for image in images]

        # direct, in process: the same decode + segment + encode as a request, without HTTP/Serve
        direct = Segmenter.from_checkpoint(os.path.join(tmp, "ckpt"), device="cpu", **protocol)
        direct.segment(images[:2], TEXTS)  # warm-up
        single = []
        for payload in payloads:
            start = time.perf_counter()
            with Image.open(io.BytesIO(payload)) as image:
                direct.segment(image.convert("RGB"), TEXTS, with_probabilities=False)
            single.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(0, len(payloads), args.max_batch_size):
            batch = [Image.open(io.BytesIO(p)).convert("RGB") for p in payloads[i:i + args.max_batch_size]]
            direct.segment(batch, TEXTS, with_probabilities=False)
        batched_rate = len(payloads) / (time.perf_counter() - start)

        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": os.path.join(tmp, "ckpt"), "device": "cpu", "segmenter": protocol,
                             "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait}), name="tcl", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        bodies = [multipart(payload) for payload in payloads]
        load(url, bodies[:16], 4)  # warm-up: text cache, first batches
        rows = [("direct, one image per call", *percentiles(single), len(single) / sum(single)),
                (f"direct, batches of {args.max_batch_size}", float("nan"), float("nan"), batched_rate)]
        service, batch_means = {}, {}
        for concurrency in (1, 8, 32):
            before = json.loads(urlopen(f"{url}/v1/info").read())["batches"]
            latencies, rate = load(url, bodies, concurrency)
            after = json.loads(urlopen(f"{url}/v1/info").read())["batches"]
            sizes = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
            batch_means[concurrency] = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
            service[concurrency] = (*percentiles(latencies), rate)
            rows.append((f"service, concurrency {concurrency}", *service[concurrency]))
            inside = ", ".join(f"{name} {np.median(values):.1f}" for name, values in timings.items())
            print(f"concurrency {concurrency}: mean batch {batch_means[concurrency]:.1f} requests; "
                  f"inside the replica, median ms: {inside}", flush=True)
        serve.shutdown()
        ray.shutdown()

    print(f"{args.requests} requests of {size} px synthetic images, {len(TEXTS)} texts, tiny grounder, PAMR on, "
          f"{args.threads} torch thread(s), {os.cpu_count()} cores")
    print(f"{'':32s} {'p50 ms':>8s} {'p99 ms':>8s} {'req/s':>8s}")
    for name, p50, p99, rate in rows:
        print(f"{name:32s} {1000 * p50:8.1f} {1000 * p99:8.1f} {rate:8.1f}")
    overhead = 1000 * (service[1][0] - percentiles(single)[0])
    ratio = service[32][2] / batched_rate
    print(f"concurrency 1: service p50 - direct p50 = {overhead:.1f} ms (target <= 15) -> {'PASS' if overhead <= 15 else 'FAIL'}")
    print(f"concurrency 32: service / direct batched = {ratio:.2f} (target >= 0.8) -> {'PASS' if ratio >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
