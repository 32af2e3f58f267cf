"""Pretrain a small open_clip CLIP from scratch on image-text shards, with the standard CLIP
contrastive loss, through the same Ray Data + Ray Train path as TCL training.

This is how the project gets a frozen CLIP where none can be downloaded: the synthetic world's
tiny CLIP. The run's latest checkpoint holds open_clip_model.safetensors and open_clip_config.json;
point TCL at it with model.grounder.clip.pretrained=<that file> (the architecture is read from
the JSON beside it). At the end the job reports the zero-shot accuracy at naming the largest
shape of single-object synthetic images (8 classes, the nine prompt templates TCL uses).

    ray job submit --working-dir . -- python jobs/pretrain_clip.py --config configs/synthetic_clip.yaml
    python jobs/pretrain_clip.py --config configs/synthetic_clip.yaml optim.total_steps=200
    python jobs/pretrain_clip.py --world max_shapes=2 --config ...   # zero-shot test in the shards' world

--world KEY=VALUE (repeatable) sets the synthetic world (tcl.data.synthetic.SceneConfig) the
zero-shot images are drawn from; give the same values the shards were made with.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tcl import config as config_lib  # noqa: E402
from tcl.clip import CLIP_WEIGHTS_FILE, CLIPConfig, FrozenCLIP, make_tokenizer, zero_shot_predictions  # noqa: E402
from tcl.training import TrainConfig  # noqa: E402
from jobs import train as train_job  # noqa: E402


def zero_shot_shape_accuracy(clip_config: CLIPConfig, mean: Sequence[float], std: Sequence[float],
                             count: int = 400, seed: int = 12345, image_size: int = 64, world=None) -> float:
    """Top-1 accuracy of naming the largest shape of `count` held-out single-object scenes of
    `world` (a synthetic.SceneConfig; None: the default world)."""
    from tcl.data import synthetic

    clip = FrozenCLIP(clip_config)
    pairs = list(synthetic.single_object_images(count, seed, image_size, world or synthetic.SceneConfig()))
    images = torch.tensor(np.stack([np.asarray(image) for image, _ in pairs])).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    predictions = zero_shot_predictions(clip, (images - mean) / std, synthetic.SHAPES)
    labels = torch.tensor([synthetic.SHAPES.index(shape) for _, shape in pairs])
    return float((predictions == labels).float().mean())


def main(argv: list[str] | None = None) -> dict:
    from tcl.data.synthetic import scene_config

    world_parser = argparse.ArgumentParser(add_help=False)
    world_parser.add_argument("--world", action="append", default=[])
    world_args, rest = world_parser.parse_known_args(argv)
    world = scene_config(world_args.world)
    args = train_job.parse_args(rest, description=__doc__)
    cfg = config_lib.load(TrainConfig, args.config, args.overrides)
    train_job.init_ray(args)
    summary = train_job.fit(cfg, "clip", make_tokenizer(cfg.model.grounder.clip))
    checkpoint = summary["checkpoint"]
    if checkpoint and not checkpoint.startswith("s3://"):
        weights = os.path.join(checkpoint, CLIP_WEIGHTS_FILE)
        clip_config = CLIPConfig(cfg.model.grounder.clip.model_name, pretrained=weights)
        accuracy = zero_shot_shape_accuracy(clip_config, cfg.model.grounder.image_mean, cfg.model.grounder.image_std,
                                            image_size=cfg.data.image_size, world=world)
        summary.update(clip_weights=weights, zero_shot_accuracy=accuracy)
        with open(os.path.join(summary["run_dir"], "zero_shot.json"), "w") as f:
            json.dump({"checkpoint": checkpoint, "zero_shot_accuracy": accuracy, "classes": 8,
                       "world": dataclasses.asdict(world)}, f, indent=2)
        print(f"CLIP weights: {weights}\nzero-shot accuracy, largest shape of single-object scenes (8 classes): {accuracy:.1%}")
    return summary


if __name__ == "__main__":
    main()
