"""The main job: the whole of TCL on one machine with nothing downloaded, into outputs/pipeline/.

    synthetic shards -> tiny CLIP pretraining, two stages (Ray Train) -> TCL training (Ray Train, 2 workers)
      -> mIoU of the frozen-CLIP baseline and of TCL on shapes-things and shapes-stuff
      -> overlay PNGs of held-out images with their captions -> a table

    python jobs/pipeline.py                       # everything, into outputs/pipeline/
    python jobs/pipeline.py --fresh               # start over instead of reusing finished stages
    python jobs/pipeline.py --world max_shapes=4 --output outputs/harder   # another synthetic world
    python jobs/pipeline.py model.loss.area_weight=0 --output outputs/no-area   # a TCL ablation

The synthetic world (tcl.data.synthetic.SceneConfig) is set in one place, --world, and the same one
makes the training shards, the evaluation sets, the overlays and the tiny CLIP's zero-shot test;
it is recorded in <output>/world.json. Each stage is skipped on a rerun when its result is there.
"""
from __future__ import annotations

import argparse
import sys

from tcl.cli import add_ray_arguments, add_world_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/pipeline", help="folder for everything (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=20000, help="synthetic image-text pairs to train on (default: %(default)s)")
    p.add_argument("--eval-images", type=int, default=100, help="images per evaluation set (default: %(default)s)")
    p.add_argument("--object-pairs", type=int, default=8000,
                   help="pairs with shape-only captions for the tiny CLIP's first stage (default: %(default)s)")
    p.add_argument("--clip-object-steps", type=int, default=400,
                   help="tiny-CLIP steps on shape-only captions; 0 skips that stage (default: %(default)s)")
    p.add_argument("--clip-steps", type=int, default=600, help="tiny-CLIP steps on the web-like captions (default: %(default)s)")
    p.add_argument("--tcl-steps", type=int, default=None, help="TCL steps (default: configs/synthetic.yaml)")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first")
    p.add_argument("tcl_overrides", nargs="*", help="TCL config overrides, e.g. model.loss.area_weight=0")
    add_world_argument(p)
    add_ray_arguments(p)
    args = p.parse_intermixed_args(argv)
    if args.clip_object_steps and not args.object_pairs:
        p.error("--object-pairs 0 leaves the tiny CLIP's first stage nothing to train on: pass --clip-object-steps 0 too")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tcl.ray import runtime
    from tcl.ray.pipeline import PipelineJob, run

    runtime.configure(args.ray_address, args.num_cpus)
    job = PipelineJob(output=args.output, pairs=args.pairs, eval_images=args.eval_images, object_pairs=args.object_pairs,
                      clip_object_steps=args.clip_object_steps, clip_steps=args.clip_steps, tcl_steps=args.tcl_steps,
                      world=args.world, tcl_overrides=args.tcl_overrides, fresh=args.fresh)
    try:
        return run(job)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
