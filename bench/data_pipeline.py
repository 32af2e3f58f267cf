"""Samples/s per CPU of the training data pipeline on Ray Data against a bare single-process loop.

(a) Ray Data: exactly the pipeline training consumes (`tcl.ray.data.training_dataset`: row groups
    read, decoded, randomly resized and cropped and tokenized in one task each (ImageTextTransform)),
    consumed with iter_batches, on a local Ray instance with --num-cpus logical CPUs.
(b) bare loop: one process reads the same Parquet files with pyarrow and applies the same
    ImageTextTransform to batches of the same size.

Per CPU: (a)'s samples/s is divided by the CPUs Ray actually used, counted from /proc as the
CPU seconds (user + system) that the driver and the Ray worker processes spent during the timed
pass, divided by its wall time. Raylet, GCS and the agents are shown apart (they serve all of
Ray, not this pipeline), and so is the figure per *logical* CPU (wall samples/s / --num-cpus),
which also charges the time a CPU slot sat idle. (b) is charged its own CPU time the same way
(its wall and CPU time agree, one thread doing the work). Target: (a) per CPU >= 0.8 x (b).

Shards are made first in a temporary folder, of synthetic-world scenes stored the way TCL's
training data is: JPEG (quality 95) photos of 512 px on the shorter side, which is what
img2dataset writes with the `--image_size 512 --resize_mode keep_ratio` that TCL's CC3M/CC12M
preparation uses (683x512 for a 4:3 photo). How the ratio depends on the work per image is
shown by the smaller-image setting, which is what the offline synthetic world is closer to:

    python bench/data_pipeline.py                                  # 1024 JPEGs of 683x512 -> 224 crops, 2 CPUs
    python bench/data_pipeline.py --format png --stored-size 224   # 224 px PNGs: less work per image
    python bench/data_pipeline.py --count 4096 --num-cpus 8 --batch-size 128
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from tcl import config as config_lib
from tcl.clip import make_tokenizer
from tcl import images
from tcl.data import shards
from tcl.ray import runtime
from tcl.ray.data import training_dataset  # the pipeline training consumes
from tcl.training import TrainConfig

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ shards

def parse_size(text: str) -> tuple[int, int]:
    """"683x512" -> (683, 512); "224" -> (224, 224)."""
    try:
        width, _, height = text.lower().partition("x")
        size = (int(width), int(height or width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or SIZE, got {text!r}") from None
    if min(size) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return size


def make_shards(folder: str, count: int, size: tuple[int, int], fmt: str, distinct: int, rows_per_shard: int) -> None:
    """``count`` rows of synthetic-world scenes stored at ``size`` in ``fmt`` (JPEG at quality 95,
    img2dataset's default). Only ``distinct`` scenes are rendered (a scene at 512 px takes ~0.15 s)
    and then repeated: decoding and cropping cost the same whether or not an image repeats."""
    from tcl.data.synthetic import caption_pairs

    encoded = [
        (images.encode_image(image.resize(size, Image.Resampling.BILINEAR), fmt), caption)
        for image, caption in caption_pairs(count=min(distinct, count), seed=0, image_size=min(size))
    ]
    rows = (encoded[i % len(encoded)] for i in range(count))
    shards.write_shards(rows, folder, rows_per_shard=rows_per_shard, row_group_size=rows_per_shard)


# ------------------------------------------------------------------ CPU accounting via /proc

def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, CPU ticks user + system, command line) of a live process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        return int(fields[1]), int(fields[11]) + int(fields[12]), cmdline
    except (OSError, IndexError, ValueError):
        return None


def ray_cpu_seconds() -> dict[int, tuple[str, float]]:
    """{pid: (kind, CPU seconds so far)} of this process ("driver"), the Ray worker processes
    ("workers") and Ray's own daemons ("system": raylet, GCS, agents), found as descendants of this
    driver, which started the local Ray instance."""
    stats = {int(e): s for e in os.listdir("/proc") if e.isdigit() and (s := _stat(int(e))) is not None}
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    me = os.getpid()
    found = {me: ("driver", stats[me][1] / CLOCK_TICKS)}
    frontier = list(children.get(me, []))
    while frontier:
        pid = frontier.pop()
        _, ticks, cmdline = stats[pid]
        is_worker = cmdline.startswith("ray::") and "Agent" not in cmdline  # setproctitle: ray::IDLE, ray::MapBatches...
        found[pid] = ("workers" if is_worker else "system", ticks / CLOCK_TICKS)
        frontier.extend(children.get(pid, []))
    return found


# ------------------------------------------------------------------ the two pipelines

def ray_pass(dataset, batch_size: int) -> tuple[int, float, dict[str, float]]:
    """(samples, wall seconds, CPU seconds by kind) of one full pass over the Ray Dataset.

    Counted per process: what a process spent during the pass (all of it when it started during
    the pass). A process that exited during the pass takes its share with it: that is reported,
    as the pass's figure is then too low."""
    before, start = ray_cpu_seconds(), time.perf_counter()
    samples = sum(len(batch["text"]) for batch in dataset.iter_batches(batch_size=batch_size, batch_format="numpy"))
    wall, after = time.perf_counter() - start, ray_cpu_seconds()
    spent = {"driver": 0.0, "workers": 0.0, "system": 0.0}
    for pid, (kind, seconds) in after.items():
        spent[kind] += seconds - before.get(pid, (kind, 0.0))[1]
    if exited := sorted(pid for pid in before if pid not in after):
        print(f"warning: Ray processes {exited} exited during a timed pass; their CPU time in it is not counted", flush=True)
    return samples, wall, spent


def bare_pass(files: list[str], columns: tuple[str, str], transform, batch_size: int) -> tuple[int, float, float]:
    """(samples, wall seconds, CPU seconds): the same files and transform, one process."""
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    samples = 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=list(columns)):
            out = transform({"image": batch.column(0).to_numpy(zero_copy_only=False),
                             "caption": batch.column(1).to_numpy(zero_copy_only=False)})
            samples += len(out["text"])
    return samples, time.perf_counter() - start_wall, time.process_time() - start_cpu


def median(values: list[float]) -> float:
    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1024, help="images in the shards (default: %(default)s)")
    parser.add_argument("--stored-size", type=parse_size, default=(683, 512), metavar="WxH",
                        help="size of the stored images (default: 683x512, a 4:3 photo as img2dataset's "
                             "--image_size 512 --resize_mode keep_ratio stores CC3M/CC12M for TCL)")
    parser.add_argument("--format", choices=("JPEG", "PNG"), type=str.upper, default="JPEG",
                        help="stored image format (default: %(default)s, quality 95)")
    parser.add_argument("--distinct", type=int, default=64, help="distinct scenes rendered, then repeated (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="training crop size (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="optim.batch_size with one worker: the map_batches batch size (default: %(default)s)")
    parser.add_argument("--num-cpus", type=int, default=2, help="logical CPUs of the local Ray instance (default: %(default)s)")
    parser.add_argument("--rows-per-shard", type=int, default=128, help="rows per Parquet file (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each pipeline, median reported")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's stats of the last timed pass")
    parser.add_argument("--tokenizer", default="ViT-B-16", help="open_clip model whose tokenizer is used")
    args = parser.parse_args()

    os.environ.pop("RAY_ADDRESS", None)  # CPU accounting needs the local instance this driver starts
    with tempfile.TemporaryDirectory(prefix="tcl-bench-shards-") as folder:
        start = time.perf_counter()
        make_shards(folder, args.count, args.stored_size, args.format, args.distinct, args.rows_per_shard)
        files = shards.find_shard_files(folder)
        stored = "x".join(map(str, args.stored_size))
        print(f"shards: {args.count} synthetic-world {args.format} images of {stored} px ({args.distinct} distinct) "
              f"in {len(files)} files ({time.perf_counter() - start:.1f} s to make)", flush=True)

        cfg = config_lib.load(TrainConfig, None, [
            f"data.shards={folder}", f"data.image_size={args.image_size}", f"optim.batch_size={args.batch_size}",
            "run.num_workers=1", f"model.grounder.clip.model_name={args.tokenizer}",
        ])
        tokenizer = make_tokenizer(cfg.model.grounder.clip)
        runtime.init(num_cpus=args.num_cpus)
        import ray

        dataset = training_dataset(cfg, tokenizer, skip_counter=None)
        # The batch size training_dataset gives map_batches, so both sides transform equal batches.
        map_batch_size = max(16, cfg.optim.batch_size // max(1, cfg.run.num_workers))
        bare_transform = shards.ImageTextTransform(tokenizer, image_size=cfg.data.image_size, scale=cfg.data.crop_scale)

        columns = shards.resolve_columns(folder)
        ray_pass(dataset, args.batch_size)  # warm-up: worker processes, imports, page cache
        bare_pass(files, columns, bare_transform, map_batch_size)
        ray_runs, bare_runs = [], []
        for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both
            ray_runs.append(ray_pass(dataset, args.batch_size))
            bare_runs.append(bare_pass(files, columns, bare_transform, map_batch_size))
        if args.stats:
            print(dataset.stats())
        ray.shutdown()

    assert all(r[0] == args.count for r in ray_runs + bare_runs), "a pass lost samples"
    ray_wall = median([r[1] for r in ray_runs])
    ray_cpu = {k: median([r[2][k] for r in ray_runs]) for k in ("driver", "workers", "system")}
    bare_wall, bare_cpu = median([r[1] for r in bare_runs]), median([r[2] for r in bare_runs])
    used = ray_cpu["driver"] + ray_cpu["workers"]
    ray_rate, bare_rate = args.count / ray_wall, args.count / bare_wall

    rows = [
        ("(a) Ray Data, per CPU used", ray_rate, used / ray_wall, ray_rate / (used / ray_wall)),
        ("(a) ... + raylet/GCS/agents", ray_rate, (used + ray_cpu["system"]) / ray_wall,
         ray_rate / ((used + ray_cpu["system"]) / ray_wall)),
        ("(a) ... per logical CPU", ray_rate, float(args.num_cpus), ray_rate / args.num_cpus),
        ("(b) bare loop, 1 process", bare_rate, bare_cpu / bare_wall, bare_rate / (bare_cpu / bare_wall)),
    ]
    print(f"\n{args.count} {args.format} images {stored} px -> crops {cfg.data.image_size} px, batch {map_batch_size}, "
          f"Ray num_cpus={args.num_cpus}, {os.cpu_count()} cores on the machine, median of {args.repeats} passes")
    print(f"{'':30s} {'samples/s':>10s} {'CPUs':>6s} {'samples/s/CPU':>14s}")
    for name, rate, cpus, per_cpu in rows:
        print(f"{name:30s} {rate:10.1f} {cpus:6.2f} {per_cpu:14.1f}")
    print(f"Ray CPU seconds per pass: driver {ray_cpu['driver']:.2f}, workers {ray_cpu['workers']:.2f}, "
          f"raylet/GCS/agents {ray_cpu['system']:.2f}; bare loop {bare_cpu:.2f}")
    ratio = rows[0][3] / rows[3][3]
    print(f"per-CPU samples/s, Ray Data / bare loop: {ratio:.2f} (target >= 0.8) -> {'PASS' if ratio >= 0.8 else 'FAIL'}")
    print(f"  with Ray's daemons counted: {rows[1][3] / rows[3][3]:.2f}; per logical CPU: {rows[2][3] / rows[3][3]:.2f}")


if __name__ == "__main__":
    main()
