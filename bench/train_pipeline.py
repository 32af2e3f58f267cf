"""The training step fed by Ray (Ray Data's stream into a Ray Train TorchTrainer, as jobs/train.py
runs it) against the bare step (the same model, batch and device, one batch kept on the device),
in one run: samples/s of each and their ratio. Target on a GPU: at least 0.95x.

The Ray-fed figure comes from the run's own metrics.jsonl: samples over wall time of the logged
windows after the first `--skip` steps (startup: workers, model, the first read tasks), over a run
that crosses at least three epoch boundaries (the stream reads every epoch in one pass, so none of
them drains the pipeline). The per-epoch data-wait fractions are printed too.

    python bench/train_pipeline.py                                  # CPU: a tiny CLIP, 64 px
    python bench/train_pipeline.py --device cuda --model ViT-B-16 --image-size 224 --stored-size 683x512 \\
        --batch 64 --count 4096 --steps 400 --num-cpus 16
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from tcl import config as config_lib
from tcl.clip import CLIPConfig, FrozenCLIP, resolve, tiny_model_cfg
from tcl.model import TCL, Grounder, TCLConfig
from tcl.ray import runtime
from tcl.ray.train import fit
from tcl.training import OptimConfig, TrainConfig, learning_rate, param_groups, training_step


def make_shards(folder: str, count: int, stored: tuple[int, int], distinct: int) -> None:
    """`count` synthetic-world scenes as JPEG (quality 95) at `stored` size, 256-row groups."""
    from PIL import Image

    from tcl.data.shards import write_shards
    from tcl.data.synthetic import caption_pairs
    from tcl.images import encode_image

    encoded = [(encode_image(image.resize(stored, Image.Resampling.BILINEAR), "JPEG"), caption)
               for image, caption in caption_pairs(count=min(distinct, count), seed=0, image_size=min(stored))]
    write_shards((encoded[i % len(encoded)] for i in range(count)), folder, rows_per_shard=1024, row_group_size=256)


def bare_samples_per_second(cfg: TrainConfig, device: torch.device, steps: int) -> float:
    """The training step alone: one batch kept on the device, the loop's own step function."""
    torch.manual_seed(0)
    clip = cfg.model.grounder.clip
    model = TCL(cfg.model, Grounder(cfg.model.grounder, FrozenCLIP(clip, load_weights=False))).to(device)
    model.apply_schedule(0)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=1e-5, betas=cfg.optim.betas, eps=cfg.optim.eps)
    size, batch = cfg.data.image_size, cfg.optim.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    tokens = model.grounder.clip.tokenize([f"a photo of a thing {i}" for i in range(batch)]).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    lr = learning_rate(cfg.optim.warmup_steps, cfg.optim)
    for _ in range(3):  # warm-up: allocator, kernels, optimizer state
        training_step(model, model, optimizer, images, tokens, lr, autocast, cfg.optim.grad_clip)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        training_step(model, model, optimizer, images, tokens, lr, autocast, cfg.optim.grad_clip)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="open_clip ViT with the openai architecture (default: a tiny CLIP on CPU, ViT-B-16 on GPU)")
    parser.add_argument("--image-size", type=int, default=None, help="training crop (default: 64 tiny, 224 ViT)")
    parser.add_argument("--stored-size", default="160x120", help="stored JPEG size WIDTHxHEIGHT (TCL's CC3M: 683x512)")
    parser.add_argument("--batch", type=int, default=None, help="per-GPU batch (default: 64 on GPU, 16 on CPU)")
    parser.add_argument("--count", type=int, default=512, help="images in the shards (one epoch)")
    parser.add_argument("--distinct", type=int, default=256, help="distinct scenes rendered (repeated up to --count)")
    parser.add_argument("--steps", type=int, default=None, help="Ray-fed steps (default: over three epochs and 50 more)")
    parser.add_argument("--skip", type=int, default=50, help="first steps left out of the Ray-fed figure")
    parser.add_argument("--num-cpus", type=int, default=None, help="logical CPUs of the local Ray instance")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (64 if device.type == "cuda" else 16)
    per_epoch = args.count // batch
    steps = args.steps or max(3 * per_epoch + args.skip + 10, args.skip + 20)
    stored = tuple(int(v) for v in args.stored_size.lower().split("x"))
    if args.model:
        clip = resolve(CLIPConfig(args.model, "openai"))
        image_size = args.image_size or 224
    else:
        image_size = args.image_size or 64
        clip = CLIPConfig("tiny", None, tiny_model_cfg(image_size=image_size))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_shards(os.path.join(tmp, "shards"), args.count, stored, args.distinct)
        print(f"shards: {args.count} JPEGs of {stored[0]}x{stored[1]} ({time.perf_counter() - start:.0f} s to make)", flush=True)
        cfg = config_lib.from_dict(TrainConfig, {
            "model": {"grounder": {"clip": {"model_name": clip.model_name, "pretrained": None, "model_cfg": clip.model_cfg}}},
            "data": {"shards": os.path.join(tmp, "shards"), "image_size": image_size},
            "optim": {**config_lib.to_dict(OptimConfig()), "batch_size": batch, "total_steps": steps, "warmup_steps": 10},
            "run": {"name": "pipeline", "storage": os.path.join(tmp, "runs"), "num_workers": 1, "use_gpu": device.type == "cuda",
                    "cpus_per_worker": args.cpus_per_worker, "log_every": 10, "checkpoint_every": steps},
        })
        bare = bare_samples_per_second(cfg, device, steps=10 if device.type == "cuda" else 3)
        print(f"bare step: {bare:.1f} samples/s", flush=True)
        runtime.init(num_cpus=args.num_cpus)
        fit(cfg, "tcl")
        with open(os.path.join(tmp, "runs", "pipeline", "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f]
    windows = [r for r in records if r["step"] > args.skip]
    seconds = sum(10 * batch / r["samples_per_s"] for r in windows)
    ray_rate = 10 * batch * len(windows) / seconds
    epochs = [r["epoch_end"] for r in records if "epoch_end" in r]
    print(f"\n{args.model or 'tiny CLIP'} at {image_size} px, batch {batch}, {device}, {steps} steps over "
          f"{len(epochs)} epoch boundaries")
    for e in epochs:
        print(f"  epoch {e['epoch']}: {e['samples_per_s']:.1f} samples/s, data wait {100 * e['data_wait_fraction']:.1f}%")
    print(f"{'bare step':24s} {bare:10.1f} samples/s")
    print(f"{'Ray-fed (after ' + str(args.skip) + ' steps)':24s} {ray_rate:10.1f} samples/s")
    ratio = ray_rate / bare
    print(f"Ray-fed / bare: {ratio:.2f} (target >= 0.95 on a GPU) -> {'PASS' if ratio >= 0.95 else 'FAIL'}")


if __name__ == "__main__":
    main()
