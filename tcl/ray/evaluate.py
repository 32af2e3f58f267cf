"""The paper's evaluation protocol as a Ray job: Ray Data over each benchmark's images, an actor
pool of Segmenters (one per GPU where there are GPUs) emitting one int64 confusion matrix per
image; the driver sums them, so the result equals the single-process one to the integer."""
from __future__ import annotations

import collections
import dataclasses
import os
import time

import numpy as np

from tcl.console import Progress, say
from tcl.evaluation import EvaluationResult, dataset_names, safe_name, title, write_outputs


@dataclasses.dataclass
class EvaluationJob:
    checkpoint: str  # checkpoint directory or run folder, local or s3://
    datasets: str = "all"  # comma-separated names, `all`, or custom:FOLDER
    data_root: str | None = None  # the folder holding the MMSegmentation layouts
    output: str = "outputs/evaluation"
    baseline: bool = False  # the frozen CLIP alone (MaskCLIP dense features, KP weight 1)
    pamr: bool = True
    limit: int | None = None  # the first N images of each set
    overlays: int = 4  # prediction overlays written per set
    actors: int | None = None  # default: one per GPU, else 2
    actor_start_timeout: float = 900.0
    resources_per_actor: dict = dataclasses.field(default_factory=dict)
    segmenter: dict = dataclasses.field(default_factory=dict)  # SegmenterConfig overrides (short_side, window, stride)


class ConfusionActor:
    """One Segmenter for every data set of the job; a batch of (data set, sample index) pairs -> their
    confusion matrices (flattened), and for the first `overlays` images of each set a PNG of the
    prediction beside the ground truth. One pool serves all sets, so the model loads once per actor."""

    def __init__(self, checkpoint: str, datasets: list[str], data_root: str | None, limit: int | None,
                 overrides: dict, pamr: bool, baseline: bool, overlays: int = 0):
        import ray

        from tcl.data.benchmarks import open_benchmark
        from tcl.evaluation import protocol_overrides
        from tcl.segment import Segmenter

        self.benchmarks = [open_benchmark(name, data_root, limit=limit) for name in datasets]
        self.protocols = [protocol_overrides(benchmark, pamr=pamr, baseline=baseline) for benchmark in self.benchmarks]
        self.segmenter = Segmenter.from_checkpoint(checkpoint, **overrides)
        self.overlays = overlays
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tcl.evaluation import sample_confusion
        from tcl.images import encode_image

        matrices, pngs = [], []
        for d, i in zip(batch["dataset"], batch["index"]):
            benchmark, protocol = self.benchmarks[int(d)], self.protocols[int(d)]
            sample = benchmark.samples[int(i)]
            if i < self.overlays:
                matrix, picture = sample_confusion(self.segmenter, benchmark, sample, overlay=True, **protocol)
                pngs.append(encode_image(picture))
            else:
                matrix = sample_confusion(self.segmenter, benchmark, sample, **protocol)
                pngs.append(b"")
            matrices.append(matrix.ravel())
        return {"dataset": batch["dataset"], "index": batch["index"], "confusion": np.array(matrices + [None], dtype=object)[:-1],
                "overlay": np.array(pngs, dtype=object), "node": np.array([self.node] * len(matrices), dtype=object)}


def evaluate_datasets(job: EvaluationJob, datasets: list[str], checkpoint: str, actors: int, use_gpu: bool) -> list[tuple]:
    """[(benchmark, summed confusion matrix, run facts)] per data set, from one actor pool over all
    their images; overlays of each set's first images written to <output>/overlays/<set>/."""
    import ray

    from tcl.data.benchmarks import open_benchmark
    from tcl.metrics import ConfusionMatrix
    from tcl.ray.pools import consume, map_with_pool

    benchmarks = [open_benchmark(name, job.data_root, limit=job.limit) for name in datasets]
    items = [{"dataset": d, "index": i} for d, benchmark in enumerate(benchmarks) for i in range(len(benchmark))]
    if not items:
        raise ValueError(f"no images in {', '.join(datasets)}")
    # a few images per call: Ray's per-task overhead is tens of ms, as much as a small image costs
    per_call = max(1, min(8, len(items) // (2 * actors)))
    rows = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // per_call)))
    results = map_with_pool(rows, ConfusionActor, dict(checkpoint=checkpoint, datasets=datasets, data_root=job.data_root, limit=job.limit,
                                                       overrides=job.segmenter, pamr=job.pamr, baseline=job.baseline, overlays=job.overlays),
                            actors=actors, use_gpu=use_gpu, batch_size=per_call, resources=job.resources_per_actor,
                            start_timeout_s=job.actor_start_timeout)
    totals = [ConfusionMatrix(b.num_classes, b.ignore_index) for b in benchmarks]
    nodes = [collections.Counter() for _ in benchmarks]
    finished = [0.0] * len(benchmarks)  # when each set's last result arrived
    start = time.perf_counter()
    current = [0]

    def add(batch: dict) -> None:
        for d, i, matrix, png, node in zip(batch["dataset"], batch["index"], batch["confusion"], batch["overlay"], batch["node"]):
            d = int(d)
            benchmark = benchmarks[d]
            totals[d].matrix += np.asarray(matrix).reshape(benchmark.num_classes, benchmark.num_classes)
            nodes[d][node] += 1
            finished[d] = time.perf_counter()
            current[0] = d
            if png:
                folder = os.path.join(job.output, "overlays", safe_name(datasets[d]))
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, safe_name(benchmark.samples[int(i)].key) + ".png"), "wb") as f:
                    f.write(png)

    timing = consume(results, lambda batch: len(batch["index"]), add, Progress("evaluating", len(items), "images"),
                     note=lambda: f"{title(datasets[current[0]])} mIoU so far {100 * totals[current[0]].miou:.1f}")
    out, previous = [], start
    for d, benchmark in enumerate(benchmarks):
        counted = sum(nodes[d].values())
        if counted != len(benchmark):
            raise RuntimeError(f"{datasets[d]}: {counted} of {len(benchmark)} images evaluated")
        out.append((benchmark, totals[d], {"images_per_node": dict(nodes[d]), "seconds": max(0.0, finished[d] - previous),
                                          "startup_seconds": timing.startup_seconds,
                                          "steady_images_per_second": timing.steady_items_per_second}))
        previous = max(previous, finished[d])
    return out


def run(job: EvaluationJob) -> dict:
    """Evaluate every data set of `job`; writes results.md (Table 1's layout), results.csv,
    results.json and a per-class IoU chart per set to job.output. Returns the rows."""
    from tcl.ray.pools import actor_count, checkpoint_for_actors
    from tcl.ray.runtime import init

    checkpoint = checkpoint_for_actors(job.checkpoint)
    datasets = dataset_names(job.datasets)
    init()
    actors, use_gpu = actor_count(job.actors)
    method = ("frozen CLIP baseline" if job.baseline else "TCL") + ("" if job.pamr else " (no PAMR)") + (
        " (bf16)" if job.segmenter.get("precision") == "bf16" else "")  # the paper's figures are fp32
    rows = {}
    for dataset, (benchmark, confusion, facts) in zip(datasets, evaluate_datasets(job, datasets, checkpoint, actors, use_gpu)):
        result = EvaluationResult(benchmark.name, benchmark.class_names, confusion, len(benchmark), facts.pop("seconds"))
        rows[dataset] = {**result.as_dict(), "title": title(dataset), "confusion": confusion.matrix.tolist(), **facts}
        say(f"{title(dataset)}: mIoU {100 * result.miou:.1f} over {result.images} images "
            f"({actors} actor(s) on {len(facts['images_per_node'])} node(s))")
    table = write_outputs(job.output, rows, method)
    say("\n" + table + f"\n\ntables and charts in {job.output}/")
    return rows
