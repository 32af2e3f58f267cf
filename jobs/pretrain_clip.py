"""Pretrain a small open_clip CLIP on image-text shards with the standard contrastive loss, through
the same Ray Data + Ray Train path as TCL: how the project gets a frozen CLIP where none can be
downloaded (the synthetic world's tiny CLIP). The run's latest checkpoint holds
open_clip_model.safetensors and open_clip_config.json; point TCL at it with
model.grounder.clip.pretrained=<that file>. At the end the job reports the CLIP's zero-shot
accuracy at naming the largest shape of single-object synthetic scenes (8 classes).

    ray job submit --working-dir . -- python jobs/pretrain_clip.py --config configs/synthetic_clip.yaml
    python jobs/pretrain_clip.py --config configs/synthetic_clip.yaml optim.total_steps=200
    python jobs/pretrain_clip.py --world max_shapes=2 --config ...   # the zero-shot test in the shards' world
"""
from __future__ import annotations

import argparse
import sys

from tcl.cli import add_ray_arguments, add_world_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/synthetic_clip.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.total_steps=200")
    add_world_argument(parser)
    add_ray_arguments(parser)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tcl import config as config_lib
    from tcl.data.synthetic import scene_config
    from tcl.ray import runtime
    from tcl.ray.train import pretrain_clip
    from tcl.training import TrainConfig

    runtime.configure(args.ray_address, args.num_cpus)
    try:
        return pretrain_clip(config_lib.load(TrainConfig, args.config, args.overrides), scene_config(args.world))
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
