"""Evaluate a TCL checkpoint (or the frozen-CLIP baseline) with the paper's unified protocol, as a
Ray batch job: Ray Data over the images, an actor pool of Segmenters (one per GPU where there are
GPUs, CPU actors otherwise) emitting one int64 confusion matrix per image, summed exactly.

    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint runs/my-run \\
        --datasets all --data-root /data/mmseg
    python jobs/evaluate.py --checkpoint runs/my-run --datasets voc,context --data-root /data --limit 50
    python jobs/evaluate.py --checkpoint runs/my-run --datasets custom:outputs/pipeline/eval/shapes-stuff \\
        --baseline --short-side 64 --window 64 --stride 32

Data sets: voc, context, coco_object, voc20, context59, coco_stuff, cityscapes, ade20k (or
`all`), and custom:FOLDER for the custom layout. Writes results.md (the paper's Table 1 layout),
results.csv and results.json (per-class IoU) to --output, a per-class IoU bar chart per set, and
overlays/<set>/*.png: the first --overlays images of each set, prediction beside ground truth.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jobs.common import add_segmenter_arguments, segmenter_overrides  # noqa: E402

TABLE_ORDER = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="TCL checkpoint directory or run folder, local or s3://")
    p.add_argument("--datasets", default="all", help="comma-separated names, `all`, or custom:FOLDER (default: all)")
    p.add_argument("--data-root", default=None, help="folder holding the MMSegmentation layouts")
    p.add_argument("--output", default="outputs/evaluation", help="folder for the tables and charts (default: %(default)s)")
    p.add_argument("--baseline", action="store_true", help="the frozen CLIP alone (MaskCLIP dense features, KP weight 1)")
    p.add_argument("--no-pamr", action="store_true", help="without PAMR (background threshold 0.5 instead of 0.4)")
    p.add_argument("--limit", type=int, default=None, help="first N images of each set, for quick runs")
    p.add_argument("--overlays", type=int, default=4, help="prediction overlays written per set (default: %(default)s)")
    p.add_argument("--actors", type=int, default=None, help="Segmenter actors (default: one per GPU, else 2 on CPU)")
    p.add_argument("--actor-start-timeout", type=float, default=900,
                   help="seconds to wait for all actors to start, e.g. for GPU nodes to come up (default: %(default)s)")
    p.add_argument("--resources-per-actor", type=json.loads, default={},
                   help='extra Ray resources per actor, JSON, e.g. \'{"node_slot": 1}\' to place one per node')
    add_segmenter_arguments(p)
    p.add_argument("--ray-address", default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray instance")
    return p.parse_args(argv)


def dataset_names(spec: str) -> list[str]:
    if spec == "all":
        return list(TABLE_ORDER)
    return [name.strip() for name in spec.split(",") if name.strip()]


class ConfusionActor:
    """One Segmenter per actor; a batch of sample indices -> their confusion matrices (flattened),
    and for the first `overlays` images of the set a PNG of the prediction beside the ground truth."""

    def __init__(self, checkpoint: str, dataset: str, data_root: str | None, limit: int | None,
                 overrides: dict, pamr: bool, baseline: bool, overlays: int = 0):
        from tcl.data.benchmarks import open_benchmark
        from tcl.evaluation import protocol_overrides
        from tcl.segment import Segmenter

        self.benchmark = open_benchmark(dataset, data_root, limit=limit)
        self.segmenter = Segmenter.from_checkpoint(checkpoint, **overrides)
        self.overrides = protocol_overrides(self.benchmark, pamr=pamr, baseline=baseline)
        self.overlays = overlays
        import ray

        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tcl.images import encode_image
        from tcl.evaluation import sample_confusion

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


def evaluate_distributed(args: argparse.Namespace, dataset: str, actors: int, use_gpu: bool):
    """Sum of the per-image confusion matrices computed by `actors` Segmenter actors; overlays of
    the first images written to --output/overlays/<set>/."""
    import ray

    from tcl.data.benchmarks import open_benchmark
    from tcl.metrics import ConfusionMatrix

    benchmark = open_benchmark(dataset, args.data_root, limit=args.limit)
    # all the actors up before the first image, so the work spreads over all of them (and a pool the
    # cluster cannot place fails with Ray Data's clear timeout error instead of waiting forever)
    ray.data.DataContext.get_current().wait_for_min_actors_s = args.actor_start_timeout
    # a few images per call: Ray's per-task overhead is tens of ms, as much as a small image costs
    per_call = max(1, min(8, len(benchmark) // (2 * actors)))
    items = ray.data.from_items([{"index": i} for i in range(len(benchmark))],
                                override_num_blocks=max(1, -(-len(benchmark) // per_call)))
    results = items.map_batches(
        ConfusionActor, batch_size=per_call, compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1, resources=args.resources_per_actor or None,
        fn_constructor_kwargs=dict(checkpoint=args.checkpoint, dataset=dataset, data_root=args.data_root, limit=args.limit,
                                   overrides=segmenter_overrides(args), pamr=not args.no_pamr, baseline=args.baseline,
                                   overlays=args.overlays))
    total = ConfusionMatrix(benchmark.num_classes, benchmark.ignore_index)
    seen, nodes = 0, collections.Counter()
    start, first, last_print = time.perf_counter(), None, time.perf_counter()
    for batch in results.iter_batches(batch_format="numpy", batch_size=None):
        if first is None:  # startup (actors loading the model) ends with the first results
            first, first_count = time.perf_counter(), len(batch["index"])
        if time.perf_counter() - last_print > 10:
            last_print = time.perf_counter()
            print(f"  {title(dataset)}: {seen}/{len(benchmark)} images, mIoU so far {100 * total.miou:.1f}", flush=True)
        total.matrix += batch["confusion"].reshape(-1, benchmark.num_classes, benchmark.num_classes).sum(axis=0)
        seen += len(batch["index"])
        nodes.update(batch["node"].tolist())
        for i, png in zip(batch["index"], batch["overlay"]):
            if png:
                folder = os.path.join(args.output, "overlays", safe_name(dataset))
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, safe_name(benchmark.samples[int(i)].key) + ".png"), "wb") as f:
                    f.write(png)
    if seen != len(benchmark):
        raise RuntimeError(f"{dataset}: {seen} of {len(benchmark)} images evaluated")
    end = time.perf_counter()
    timing = {"startup_seconds": (first or end) - start,
              "steady_images_per_second": (seen - first_count) / (end - first) if first and seen > first_count else None}
    return benchmark, total, {"images_per_node": dict(nodes), **timing}


def safe_name(dataset: str) -> str:
    """A file name for a data set name (custom:FOLDER holds slashes)."""
    return dataset.replace(":", "_").replace("/", "_")


def title(dataset: str) -> str:
    """Column title: the paper's name of a benchmark, or a custom set's folder name."""
    from tcl.data.benchmarks import BENCHMARKS

    return BENCHMARKS[dataset].title if dataset in BENCHMARKS else os.path.basename(dataset.rstrip("/"))


def write_outputs(output: str, rows: dict[str, dict], method: str) -> str:
    os.makedirs(output, exist_ok=True)
    names = [n for n in TABLE_ORDER if n in rows] + [n for n in rows if n not in TABLE_ORDER]
    scores = [100 * rows[n]["miou"] for n in names]
    header = "| method | " + " | ".join(rows[n]["title"] for n in names) + " | avg |"
    table = "\n".join([header, "|---|" + "---|" * (len(names) + 1),
                       f"| {method} | " + " | ".join(f"{s:.1f}" for s in scores) + f" | {np.mean(scores):.1f} |"])
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "class", "iou"])
        for n in names:
            writer.writerow([n, "mIoU", f"{rows[n]['miou']:.6f}"])
            for cls, iou in rows[n]["iou"].items():
                writer.writerow([n, cls, "" if iou is None else f"{iou:.6f}"])
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump({"method": method, "datasets": rows, "average_miou": float(np.mean(scores))}, f, indent=2)
    for n in names:
        plot_class_iou(rows[n], os.path.join(output, f"iou-{safe_name(n)}.png"))
    return table


def plot_class_iou(row: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c, v in row["iou"].items() if v is not None]
    values = [100 * row["iou"][c] for c in classes]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(classes)), 4))
    ax.bar(range(len(classes)), values, color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{row['title']}: mIoU {100 * row['miou']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from jobs.train import init_ray

    from tcl.checkpoint import checkpoint_for_workers
    from tcl.evaluation import EvaluationResult

    try:
        args.checkpoint = checkpoint_for_workers(args.checkpoint)
    except FileNotFoundError as error:
        raise SystemExit(f"--checkpoint: {error}") from None
    init_ray(argparse.Namespace(ray_address=args.ray_address, num_cpus=args.num_cpus))
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    actors = args.actors or (gpus if gpus else 2)
    method = ("frozen CLIP baseline" if args.baseline else "TCL") + ("" if not args.no_pamr else " (no PAMR)")
    rows = {}
    for dataset in dataset_names(args.datasets):
        start = time.perf_counter()
        benchmark, confusion, run = evaluate_distributed(args, dataset, actors, use_gpu=gpus > 0)
        result = EvaluationResult(benchmark.name, benchmark.class_names, confusion, len(benchmark), time.perf_counter() - start)
        rows[dataset] = {**result.as_dict(), "title": title(dataset), "confusion": confusion.matrix.tolist(), **run}
        print(f"{title(dataset)}: mIoU {100 * result.miou:.1f} over {result.images} images "
              f"({result.seconds:.1f}s, {result.images / result.seconds:.2f} images/s, {actors} actors on "
              f"{len(run['images_per_node'])} node(s))", flush=True)
    table = write_outputs(args.output, rows, method)
    print("\n" + table + f"\n\ntables and charts in {args.output}/")
    return rows


if __name__ == "__main__":
    main()
