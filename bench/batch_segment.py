"""Images/s of the batch segmentation job (jobs/segment.py) against a direct loop doing the same
work (read, decode, segment, write the label PNG) on the same images, in one run.

On CPU (the default): a tiny grounder, 1 and 2 actors; the direct loop and each actor get one torch
thread, so "per actor" compares like with like; target: at least 0.8x the direct loop per actor.
On a GPU (--device cuda): ViT-B/16 in the openai architecture (random weights) at the protocol's
448 px, one GPU actor fed by Ray Data's CPU tasks; target: at least 0.8x the Segmenter's own
batched throughput (the direct loop). The job's rate is given end to end and in steady state
(after its first results: without starting Ray Data and the actors, which a large collection
amortises).

    python bench/batch_segment.py
    python bench/batch_segment.py --images 1000 --image-size 96
    python bench/batch_segment.py --device cuda --model ViT-B-16 --image-size 448 --images 2000 --batch-size 32 --num-cpus 16
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import time

import torch
from PIL import Image

from tcl.checkpoint import save_grounder
from tcl.clip import CLIPConfig, FrozenCLIP, resolve, tiny_model_cfg
from tcl.data import synthetic
from tcl.images import encode_image
from tcl.batch import BatchJob
from tcl.model import Grounder, GrounderConfig
from tcl.ray import batch, runtime
from tcl.segment import Segmenter
from tcl.visualize import label_png

TEXTS = "a red star,a blue circle,grass,sky,water"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600, help="enough that starting the actors is amortised")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default=None, help="open_clip ViT in the openai architecture, random weights (default: a tiny CLIP)")
    p.add_argument("--num-cpus", type=int, default=8)
    args = p.parse_args()
    gpu = args.device != "cpu"
    if not gpu:
        os.environ["OMP_NUM_THREADS"] = "1"  # the actors' torch threads
        torch.set_num_threads(1)
    size = args.image_size
    protocol = {"short_side": size, "window": size, "stride": size // 2, **({"precision": "bf16", "windows_per_batch": 32} if gpu else {})}

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        checkpoint = os.path.join(tmp, "ckpt")
        if args.model:
            clip = resolve(CLIPConfig(args.model, "openai"))
            grounder = Grounder(GrounderConfig(clip=dataclasses.replace(clip, pretrained=None)), FrozenCLIP(clip, load_weights=False))
        else:
            grounder = Grounder(GrounderConfig(clip=CLIPConfig("tiny-vit-8", None, tiny_model_cfg(image_size=size))))
        save_grounder(checkpoint, grounder)
        os.makedirs(os.path.join(tmp, "in"))
        for i, scene in enumerate(synthetic.scenes(args.images, seed=5, image_size=size)):
            scene.image.save(os.path.join(tmp, "in", f"{i:06d}.png"))
        files = sorted(os.listdir(os.path.join(tmp, "in")))

        segmenter = Segmenter.from_checkpoint(checkpoint, device=args.device, **protocol)
        texts = TEXTS.split(",")
        os.makedirs(os.path.join(tmp, "direct"))
        start = time.perf_counter()
        for i in range(0, len(files), args.batch_size):
            names = files[i:i + args.batch_size]
            images = []
            for name in names:
                with Image.open(os.path.join(tmp, "in", name)) as image:
                    images.append(image.convert("RGB"))
            for name, result in zip(names, segmenter.segment(images, texts, with_probabilities=False)):
                with open(os.path.join(tmp, "direct", name), "wb") as f:
                    f.write(encode_image(label_png(result.labels, result.class_names)))
        loop_rate = len(files) / (time.perf_counter() - start)

        rows = [("direct loop, 1 thread", loop_rate, 1)]
        for actors in ((1,) if gpu else (1, 2)):
            for attempt in ("warm-up", "timed"):  # warm-up: Ray start, actor start, imports
                output = os.path.join(tmp, f"out-{actors}")
                shutil.rmtree(output, ignore_errors=True)
                start = time.perf_counter()
                runtime.init(num_cpus=args.num_cpus)
                summary = batch.run(BatchJob(checkpoint=checkpoint, input=os.path.join(tmp, "in"), texts=TEXTS.split(","),
                                             output=output, actors=actors, batch_size=args.batch_size, segmenter=protocol))
                seconds = time.perf_counter() - start
            assert summary["segmented_now"] == len(files)
            rows.append((f"job, {actors} actor(s), end to end", len(files) / seconds, actors))
            rows.append((f"job, {actors} actor(s), steady", summary["steady_images_per_second"], actors))

    print(f"{len(files)} synthetic images of {size} px, {len(TEXTS.split(','))} texts, tiny grounder, PAMR on, {os.cpu_count()} cores")
    print(f"{'':30s} {'images/s':>9s} {'per actor':>10s} {'/ loop':>7s}")
    for name, rate, actors in rows:
        print(f"{name:30s} {rate:9.2f} {rate / actors:10.2f} {rate / actors / loop_rate:7.2f}")
    worst = min(rate / actors / loop_rate for name, rate, actors in rows[1:] if "steady" in name)
    print(f"steady per-actor ratio to the direct loop: {worst:.2f} (target >= 0.8) -> {'PASS' if worst >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
