"""How learnable is a synthetic world? A cheap stand-in for the main job's tiny-CLIP stage.

Trains the tiny CLIP of configs/synthetic_clip.yaml from scratch in one process (no Ray), with the
same contrastive loss, batch, optimizer and schedule, on pairs drawn from a world, then reports
its zero-shot accuracy at naming the largest shape of single-object scenes of the same world
(the figure jobs/pretrain_clip.py reports; chance 12.5%). Prints one line per world.

    python bench/world_study.py                                   # the default world
    python bench/world_study.py --steps 400 --world max_shapes=2 --world max_rotation=0
    python bench/world_study.py --compare "max_shapes=4 max_rotation=30" "max_shapes=2 max_rotation=0"
    python bench/world_study.py --steps 600 --first-steps 400 --first-world colour_mention=0 \
        --first-world stuff_mention=0 --first-world background_caption=0 --first-world caption_noise=false
                                     # the pipeline's two-stage tiny CLIP: first stage on shape-only captions

Not a test: a few minutes per world on 2 cores (pair generation and training).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from tcl import config as config_lib
from tcl.clip import CLIPConfig, ContrastiveCLIP, FrozenCLIP, make_tokenizer, zero_shot_predictions
from tcl.data import synthetic
from tcl.training import TrainConfig, learning_rate, param_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images_to_tensor(images, mean, std) -> torch.Tensor:
    x = torch.tensor(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def zero_shot(model: ContrastiveCLIP, cfg: TrainConfig, test) -> float:
    """Accuracy at naming the largest shape of the (image, shape) pairs `test`."""
    grounder = cfg.model.grounder
    clip = FrozenCLIP(CLIPConfig(grounder.clip.model_name, pretrained=None, model_cfg=grounder.clip.model_cfg))
    clip.model.load_state_dict(model.model.state_dict())
    predictions = zero_shot_predictions(clip, images_to_tensor([i for i, _ in test], grounder.image_mean, grounder.image_std), synthetic.SHAPES)
    labels = torch.tensor([synthetic.SHAPES.index(shape) for _, shape in test])
    return float((predictions == labels).float().mean())


def pairs_tensor(world: synthetic.SceneConfig, cfg: TrainConfig, pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised images [N, 3, H, W], tokens [N, L]) of `pairs` scenes of `world`."""
    grounder = cfg.model.grounder
    data = list(synthetic.caption_pairs(pairs, seed, cfg.data.image_size, world))
    images = images_to_tensor([image for image, _ in data], grounder.image_mean, grounder.image_std)
    return images, make_tokenizer(grounder.clip)([caption for _, caption in data])


def study(world: synthetic.SceneConfig, cfg: TrainConfig, steps: int, pairs: int, test_images: int, seed: int,
          report_every: int = 0, first_world: synthetic.SceneConfig | None = None, first_steps: int = 0) -> dict:
    """Train from scratch (first `first_steps` steps on `first_world`'s pairs, then `steps` on
    `world`'s, one cosine schedule over both) and test zero-shot on `world`."""
    start = time.perf_counter()
    grounder = cfg.model.grounder
    stages = [(first_steps, pairs_tensor(first_world, cfg, pairs, seed + 1))] if first_steps else []
    stages.append((steps, pairs_tensor(world, cfg, pairs, seed)))
    generated = time.perf_counter() - start

    torch.manual_seed(seed)
    model = ContrastiveCLIP(CLIPConfig(grounder.clip.model_name, pretrained=None, model_cfg=grounder.clip.model_cfg))
    optim = dataclasses.replace(cfg.optim, total_steps=first_steps + steps)
    optimizer = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=learning_rate(0, optim), betas=optim.betas, eps=optim.eps)
    generator = torch.Generator().manual_seed(seed)
    test = list(synthetic.single_object_images(test_images, 12345, cfg.data.image_size, world))
    curve = []
    start = time.perf_counter()
    schedule = [(images, tokens) for count, (images, tokens) in stages for _ in range(count)]
    for step, (images, tokens) in enumerate(schedule):
        lr = learning_rate(step, optim)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(len(images), (optim.batch_size,), generator=generator)
        batch = images[index]
        if torch.rand((), generator=generator) < 0.5:  # a cheap stand-in for the random crop: flips
            batch = batch.flip(-1)
        loss = model(batch, tokens[index])["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        optimizer.step()
        if report_every and (step + 1) % report_every == 0 and step + 1 < len(schedule):
            curve.append(f"{step + 1}:{100 * zero_shot(model, cfg, test):.0f}%")
            print(f"  step {step + 1} loss {float(loss.detach()):.2f} zero-shot {curve[-1]}", flush=True)
    trained = time.perf_counter() - start
    return {"zero_shot": zero_shot(model, cfg, test), "final_loss": float(loss.detach()),
            "seconds_data": generated, "seconds_train": trained, "curve": curve}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "synthetic_clip.yaml"))
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--pairs", type=int, default=8000, help="distinct training pairs (default: %(default)s)")
    p.add_argument("--test-images", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--report-every", type=int, default=0, help="print zero-shot accuracy every N steps too")
    p.add_argument("--world", action="append", default=[], metavar="KEY=VALUE", help="SceneConfig value (repeatable)")
    p.add_argument("--first-world", action="append", default=[], metavar="KEY=VALUE",
                   help="the first stage's world: the world with these values too (repeatable), e.g. shape-only captions")
    p.add_argument("--first-steps", type=int, default=0, help="steps on --first-world before --steps on the world")
    p.add_argument("--compare", nargs="+", metavar="'K=V K=V'", help="several worlds, each a space-separated list of K=V")
    p.add_argument("overrides", nargs="*", help="tiny-CLIP config overrides, e.g. optim.base_lr=0.1")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = config_lib.load(TrainConfig, args.config, args.overrides)
    worlds = [w.split() for w in args.compare] if args.compare else [args.world]
    print(f"tiny CLIP {cfg.model.grounder.clip.model_cfg['vision_cfg']}, batch {cfg.optim.batch_size}, {args.steps} steps, "
          f"{args.pairs} pairs, {args.threads} threads")
    for overrides in worlds:
        result = study(synthetic.scene_config(overrides), cfg, args.steps, args.pairs, args.test_images, args.seed, args.report_every,
                       synthetic.scene_config([*overrides, *args.first_world]), args.first_steps)
        print(f"zero-shot {100 * result['zero_shot']:5.1f}%  loss {result['final_loss']:.2f}  "
              f"(data {result['seconds_data']:.0f}s, train {result['seconds_train']:.0f}s)  world: {' '.join(overrides) or 'default'}",
              flush=True)


if __name__ == "__main__":
    main()
