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
    """One Segmenter; a batch of sample indices -> their confusion matrices (flattened), and for the
    first `overlays` images of the set a PNG of the prediction beside the ground truth."""

    def __init__(self, checkpoint: str, dataset: str, data_root: str | None, limit: int | None,
                 overrides: dict, pamr: bool, baseline: bool, overlays: int = 0):
        import ray

        from tcl.data.benchmarks import open_benchmark
        from tcl.evaluation import protocol_overrides
        from tcl.segment import Segmenter

        self.benchmark = open_benchmark(dataset, data_root, limit=limit)
        self.segmenter = Segmenter.from_checkpoint(checkpoint, **overrides)
        self.overrides = protocol_overrides(self.benchmark, pamr=pamr, baseline=baseline)
        self.overlays = overlays
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tcl.evaluation import sample_confusion
        from tcl.images import encode_image

        matrices, pngs = [], []
        for i in batch["index"]:
            sample = self.benchmark.samples[int(i)]
            if i < self.overlays:
                matrix, picture = sample_confusion(self.segmenter, self.benchmark, sample, overlay=True, **self.overrides)
                pngs.append(encode_image(picture))
            else:
                matrix = sample_confusion(self.segmenter, self.benchmark, sample, **self.overrides)
                pngs.append(b"")
            matrices.append(matrix.ravel())
        return {"index": batch["index"], "confusion": np.stack(matrices), "overlay": np.array(pngs, dtype=object),
                "node": np.array([self.node] * len(matrices), dtype=object)}


def evaluate_dataset(job: EvaluationJob, dataset: str, checkpoint: str, actors: int, use_gpu: bool):
    """(benchmark, summed confusion matrix, run facts) of one data set; overlays of its first
    images written to <output>/overlays/<set>/."""
    import ray

    from tcl.data.benchmarks import open_benchmark
    from tcl.metrics import ConfusionMatrix
    from tcl.ray.pools import consume, map_with_pool

    benchmark = open_benchmark(dataset, job.data_root, limit=job.limit)
    # a few images per call: Ray's per-task overhead is tens of ms, as much as a small image costs
    per_call = max(1, min(8, len(benchmark) // (2 * actors)))
    items = ray.data.from_items([{"index": i} for i in range(len(benchmark))], override_num_blocks=max(1, -(-len(benchmark) // per_call)))
    results = map_with_pool(items, ConfusionActor, dict(checkpoint=checkpoint, dataset=dataset, data_root=job.data_root, limit=job.limit,
                                                        overrides=job.segmenter, pamr=job.pamr, baseline=job.baseline, overlays=job.overlays),
                            actors=actors, use_gpu=use_gpu, batch_size=per_call, resources=job.resources_per_actor,
                            start_timeout_s=job.actor_start_timeout)
    total = ConfusionMatrix(benchmark.num_classes, benchmark.ignore_index)
    nodes = collections.Counter()
    overlay_folder = os.path.join(job.output, "overlays", safe_name(dataset))

    def add(batch: dict) -> None:
        total.matrix += batch["confusion"].reshape(-1, benchmark.num_classes, benchmark.num_classes).sum(axis=0)
        nodes.update(batch["node"].tolist())
        for i, png in zip(batch["index"], batch["overlay"]):
            if png:
                os.makedirs(overlay_folder, exist_ok=True)
                with open(os.path.join(overlay_folder, safe_name(benchmark.samples[int(i)].key) + ".png"), "wb") as f:
                    f.write(png)

    timing = consume(results, lambda batch: len(batch["index"]), add, Progress(title(dataset), len(benchmark), "images"),
                     note=lambda: f"mIoU so far {100 * total.miou:.1f}")
    counted = sum(nodes.values())
    if counted != len(benchmark):
        raise RuntimeError(f"{dataset}: {counted} of {len(benchmark)} images evaluated")
    return benchmark, total, {"images_per_node": dict(nodes), "startup_seconds": timing.startup_seconds,
                              "steady_images_per_second": timing.steady_items_per_second}


def run(job: EvaluationJob) -> dict:
    """Evaluate every data set of `job`; writes results.md (Table 1's layout), results.csv,
    results.json and a per-class IoU chart per set to job.output. Returns the rows."""
    from tcl.ray.pools import actor_count, checkpoint_for_actors
    from tcl.ray.runtime import init

    checkpoint = checkpoint_for_actors(job.checkpoint)
    init()
    actors, use_gpu = actor_count(job.actors)
    method = ("frozen CLIP baseline" if job.baseline else "TCL") + ("" if job.pamr else " (no PAMR)")
    rows = {}
    for dataset in dataset_names(job.datasets):
        start = time.perf_counter()
        benchmark, confusion, facts = evaluate_dataset(job, dataset, checkpoint, actors, use_gpu)
        result = EvaluationResult(benchmark.name, benchmark.class_names, confusion, len(benchmark), time.perf_counter() - start)
        rows[dataset] = {**result.as_dict(), "title": title(dataset), "confusion": confusion.matrix.tolist(), **facts}
        say(f"{title(dataset)}: mIoU {100 * result.miou:.1f} over {result.images} images ({result.seconds:.1f} s, "
            f"{actors} actor(s) on {len(facts['images_per_node'])} node(s))")
    table = write_outputs(job.output, rows, method)
    say("\n" + table + f"\n\ntables and charts in {job.output}/")
    return rows
