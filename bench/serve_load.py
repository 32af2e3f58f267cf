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
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tcl.checkpoint import save_grounder  # noqa: E402
from tcl.clip import CLIPConfig, tiny_model_cfg  # noqa: E402
from tcl.data import synthetic  # noqa: E402
from tcl.model import Grounder, GrounderConfig  # noqa: E402
from tcl.segment import Segmenter  # noqa: E402

TEXTS = ["a red star", "a blue circle", "grass", "sky", "water"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def load(url: str, payloads: list[bytes], concurrency: int) -> tuple[list[float], float]:
    """Every payload once, `concurrency` at a time: per-request latencies (s) and requests/s."""
    session_per_thread = {}

    def one(payload: bytes) -> float:
        import threading

        session = session_per_thread.setdefault(threading.get_ident(), requests.Session())
        start = time.perf_counter()
        answer = session.post(f"{url}/v1/segment", files={"image": ("x.png", payload, "image/png")},
                              data={"texts": ",".join(TEXTS), "format": "json"}, timeout=120)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.text}")
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, payloads))
    return latencies, len(payloads) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch threads for the replica and the direct loop")
    p.add_argument("--max-batch-size", type=int, default=16)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the replica's torch threads (inherited by Ray workers)
    torch.set_num_threads(args.threads)
    size = args.image_size
    protocol = {"short_side": size, "window": size, "stride": size // 2}

    import ray
    from ray import serve

    from serve.app import build_app

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        save_grounder(os.path.join(tmp, "ckpt"), Grounder(GrounderConfig(clip=CLIPConfig("tiny-vit-8", None, tiny_model_cfg(image_size=size)))))
        images = [scene.image for scene in synthetic.scenes(args.requests, seed=3, image_size=size)]
        payloads = []
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            payloads.append(buffer.getvalue())

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
                             "max_batch_size": args.max_batch_size, "batch_wait_timeout_s": 0.0}), name="tcl", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        load(url, payloads[:16], 4)  # warm-up: text cache, first batches
        rows = [("direct, one image per call", *percentiles(single), len(single) / sum(single)),
                (f"direct, batches of {args.max_batch_size}", float("nan"), float("nan"), batched_rate)]
        service = {}
        for concurrency in (1, 8, 32):
            latencies, rate = load(url, payloads, concurrency)
            service[concurrency] = (*percentiles(latencies), rate)
            rows.append((f"service, concurrency {concurrency}", *service[concurrency]))
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
