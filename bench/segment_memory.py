"""Peak memory of segmentation against pixels x texts, in one run: the bounded path the service and
the jobs use (labels a band of rows at a time, each image's own texts' scores at the scored size)
against the full path (every text's scores upsampled to the original size, as `with_probabilities`
gives and as the service did before).

Each measurement runs in a fresh process (peak RSS is a high-water mark), with a tiny grounder at
a 64 px protocol, so the figures are the memory of the scores and labels, not of the model:

    python bench/segment_memory.py                     # 512^2 .. 2048^2 pixels, 16 and 64 texts
    python bench/segment_memory.py --sizes 1024 --texts 64 --images 3
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def measure(size: int, texts: int, images: int, bounded: bool) -> float:
    """Peak RSS growth (MiB) of segmenting `images` size x size images with `texts` texts each (all different)."""
    code = f"""
import json, resource, numpy as np, torch
from tcl.clip import CLIPConfig, tiny_model_cfg
from tcl.model import Grounder, GrounderConfig
from tcl.segment import Segmenter, SegmenterConfig
torch.manual_seed(0)
segmenter = Segmenter(Grounder(GrounderConfig(clip=CLIPConfig("tiny", None, tiny_model_cfg(image_size=64))), ),
                      SegmenterConfig(short_side=64, window=64, stride=32), device="cpu")
rng = np.random.default_rng(0)
images = [rng.integers(0, 256, ({size}, {size}, 3), dtype=np.uint8) for _ in range({images})]
texts = [[f"thing {{k}} number {{i}}" for i in range({texts})] for k in range({images})]
segmenter.segment_each(images[:1], [texts[0][:2]], with_probabilities=False)  # warm-up: text tower, allocator
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
segmenter.segment_each(images, texts, with_probabilities={not bounded})
print(json.dumps((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="image side in pixels")
    parser.add_argument("--texts", type=int, nargs="+", default=[16, 64], help="texts per image")
    parser.add_argument("--images", type=int, default=3, help="images per call, each with its own texts")
    args = parser.parse_args()
    print(f"{args.images} images per call, each with its own texts; peak RSS growth in MiB (fresh process each)")
    print(f"{'pixels':>10s} {'texts':>6s} {'pixels x texts':>15s} {'full':>8s} {'bounded':>8s} {'bounded / full':>15s}")
    for size in args.sizes:
        for texts in args.texts:
            full, bounded = measure(size, texts, args.images, False), measure(size, texts, args.images, True)
            print(f"{size * size:>10d} {texts:>6d} {size * size * texts * args.images:>15d} {full:>8.0f} {bounded:>8.0f} "
                  f"{bounded / max(full, 1e-9):>15.3f}")
    print(f"(this machine: {resource.getpagesize()} B pages; the full path holds (1 + union texts) x pixels floats per image)")


if __name__ == "__main__":
    main()
