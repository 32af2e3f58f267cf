"""Inference cost of the Segmenter against the bare open_clip image encoder, in one run.

For each of (a) open_clip's image-encoder forward over the same windows, (b) Segmenter without
PAMR, (c) Segmenter with PAMR: seconds per image, floating-point operations per image (counted
by torch.utils.flop_counter) and the achieved FLOP/s. Target: (b) reaches at least 0.8x the
FLOP/s of (a). With --compile, also (d) and (e): (b) and (c) with SegmenterConfig.compile, their
compile time (the first calls) and whether their labels equal the eager ones. Also checks that
text embeddings for a repeated class list cost nothing after the first call. Random weights are
fine for timing.

    python bench/inference.py                       # ViT-B-16, 448x448, 21 texts, CPU fp32
    python bench/inference.py --device cuda --precision bf16 --batch 32 [--compile]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from tcl.clip import CLIPConfig, FrozenCLIP, create_open_clip, resolve
from tcl.model import Grounder, GrounderConfig
from tcl.segment import Segmenter, SegmenterConfig

VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table",
               "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor", "wall"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--pretrained", default="openai", help="open_clip tag whose architecture is built (random weights)")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--texts", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1, help="images per Segmenter call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="also time the Segmenter with torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    texts = (VOC_CLASSES * (args.texts // len(VOC_CLASSES) + 1))[:args.texts]

    # random weights in the architecture the pretrained tag was trained with (QuickGELU for openai)
    clip_config = resolve(CLIPConfig(model_name=args.model, pretrained=args.pretrained))
    grounder = Grounder(GrounderConfig(clip=clip_config), FrozenCLIP(clip_config, load_weights=False))
    config = SegmenterConfig(short_side=args.size, window=args.size, stride=args.size // 2,
                             windows_per_batch=max(args.batch, 1), precision=args.precision)
    segmenter = Segmenter(grounder, config, device=device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.batch)]

    start = time.perf_counter()
    segmenter.text_embeddings(texts)
    first_text_seconds = time.perf_counter() - start
    misses = segmenter.text_embeddings.misses
    start = time.perf_counter()
    segmenter.text_embeddings(texts)
    repeat_text_seconds = time.perf_counter() - start
    assert segmenter.text_embeddings.misses == misses, "a repeated class list was embedded again"

    native = copy.deepcopy(clip_config.model_cfg)
    native["vision_cfg"]["image_size"] = args.size  # positional embeddings at the window size: no interpolation
    encoder = create_open_clip(dataclasses.replace(clip_config, model_cfg=native), load_weights=False).visual.to(device).eval()
    windows = torch.randn(args.batch, 3, args.size, args.size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def bare_encoder():
        with torch.no_grad(), autocast:
            encoder(windows)

    def segment(pamr: bool, compile: bool = False):
        return lambda: segmenter.segment(images, texts, pamr=pamr, with_probabilities=False, compile=compile)

    cases = [("(a) open_clip image encoder", bare_encoder, None), ("(b) Segmenter, no PAMR", segment(False), None),
             ("(c) Segmenter, PAMR", segment(True), None)]
    compiled = []
    if args.compile:  # the first call compiles; its time is reported, and its labels compared with eager's
        for pamr in (False, True):
            synchronize(device)
            start = time.perf_counter()
            labels = segment(pamr, compile=True)()
            synchronize(device)
            seconds = time.perf_counter() - start
            same = np.mean([np.mean(a.labels == b.labels) for a, b in zip(labels, segment(pamr)())])
            compiled.append((pamr, seconds, same))
        # the same arithmetic as (b) and (c): their counts (the counter does not see into compiled code)
        cases += [("(d) compiled, no PAMR", segment(False, True), 1), ("(e) compiled, PAMR", segment(True, True), 2)]
    rows = []
    for name, fn, same_flops_as in cases:
        flops = count_flops(fn) / args.batch if same_flops_as is None else rows[same_flops_as][2]
        seconds = timed(fn, device, args.repeats) / args.batch
        rows.append((name, seconds, flops, flops / seconds))

    print(f"{args.model} at {args.size}x{args.size}, {args.texts} texts, batch {args.batch}, {device} {args.precision}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'':32s} {'s/image':>9s} {'GFLOP/image':>12s} {'GFLOP/s':>9s} {'images/s':>9s}")
    for name, seconds, flops, rate in rows:
        print(f"{name:32s} {seconds:9.4f} {flops / 1e9:12.1f} {rate / 1e9:9.1f} {1 / seconds:9.2f}")
    ratio = rows[1][3] / rows[0][3]
    print(f"FLOP/s of (b) / FLOP/s of (a): {ratio:.2f} (target >= 0.8) -> {'PASS' if ratio >= 0.8 else 'FAIL'}")
    for pamr, seconds, same in compiled:
        print(f"compiled, {'PAMR' if pamr else 'no PAMR'}: first call (compiling) {seconds:.1f} s; labels equal to eager "
              f"on {100 * same:.2f}% of pixels")
    if compiled:
        ratio = rows[3][3] / rows[0][3]
        print(f"FLOP/s of (d) / FLOP/s of (a): {ratio:.2f} (target >= 0.8) -> {'PASS' if ratio >= 0.8 else 'FAIL'}")
    with_pamr = max(1 / rows[i][1] for i in (2, 4) if i < len(rows))  # (c), and (e) when compiled
    print(f"with PAMR, best: {with_pamr:.1f} images/s (target >= 300 on an H200)")
    print(f"text embeddings: first call {1000 * first_text_seconds:.1f} ms, repeated class list "
          f"{1000 * repeat_text_seconds:.3f} ms (no new text-encoder calls)")


if __name__ == "__main__":
    main()
