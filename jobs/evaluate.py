"""Evaluate a TCL checkpoint (or the frozen-CLIP baseline) with the paper's unified protocol, as a
Ray job: an actor pool of Segmenters (one per GPU where there are GPUs) over each data set.

    ray job submit --working-dir . -- python jobs/evaluate.py --checkpoint runs/my-run --datasets all --data-root /data/mmseg
    python jobs/evaluate.py --checkpoint runs/my-run --datasets voc,context --data-root /data --limit 50
    python jobs/evaluate.py --checkpoint runs/my-run --datasets custom:outputs/pipeline/eval/shapes-stuff \\
        --baseline --short-side 64 --window 64 --stride 32

Data sets: voc, context, coco_object, voc20, context59, coco_stuff, cityscapes, ade20k (or `all`),
and custom:FOLDER (images/, labels/, classes.txt). Writes results.md (the paper's Table 1 layout),
results.csv and results.json (per-class IoU) to --output, a per-class IoU chart per set, and
overlays/<set>/: the first --overlays images of each set, prediction beside ground truth.
"""
from __future__ import annotations

import argparse
import json
import sys

from tcl.cli import add_ray_arguments, add_segmenter_arguments, segmenter_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="TCL checkpoint directory or run folder, local or s3://")
    p.add_argument("--datasets", default="all", help="comma-separated names, `all`, or custom:FOLDER (default: all)")
    p.add_argument("--data-root", default=None, help="folder holding the MMSegmentation layouts")
    p.add_argument("--output", default="outputs/evaluation", help="folder for the tables and charts (default: %(default)s)")
    p.add_argument("--baseline", action="store_true", help="the frozen CLIP alone (MaskCLIP dense features, KP weight 1)")
    p.add_argument("--limit", type=int, default=None, help="the first N images of each set, for quick runs")
    p.add_argument("--overlays", type=int, default=4, help="prediction overlays written per set (default: %(default)s)")
    p.add_argument("--actors", type=int, default=None, help="Segmenter actors (default: one per GPU, else 2 on CPU)")
    p.add_argument("--actor-start-timeout", type=float, default=900,
                   help="seconds to wait for all actors to start, e.g. for GPU nodes to come up (default: %(default)s)")
    p.add_argument("--resources-per-actor", type=json.loads, default={},
                   help='extra Ray resources per actor, JSON, e.g. \'{"node_slot": 1}\' to place one per node')
    add_segmenter_arguments(p, threshold=False)  # the protocol fixes the threshold per data set
    add_ray_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tcl.ray import runtime
    from tcl.ray.evaluate import EvaluationJob, run

    overrides = segmenter_overrides(args)
    job = EvaluationJob(checkpoint=args.checkpoint, datasets=args.datasets, data_root=args.data_root, output=args.output,
                        baseline=args.baseline, pamr=overrides.pop("pamr"), limit=args.limit, overlays=args.overlays,
                        actors=args.actors, actor_start_timeout=args.actor_start_timeout,
                        resources_per_actor=args.resources_per_actor, segmenter=overrides)
    runtime.configure(args.ray_address, args.num_cpus)
    try:
        return run(job)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
