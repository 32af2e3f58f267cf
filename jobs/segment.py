"""Segment a large image collection offline, as a Ray job: CPU tasks read and decode, an actor pool
of Segmenters (one per GPU where there are GPUs) segments; each image gets a label PNG (and with
--overlays a picture) and a row in Parquet index files.

    ray job submit --working-dir . -- python jobs/segment.py --checkpoint s3://bucket/runs/my-run \\
        --input s3://bucket/photos/ --texts "a dog,a cat,grass,sky" --output s3://bucket/masks/
    python jobs/segment.py --checkpoint outputs/pipeline/runs/synthetic-tcl --input 'photos/**/*.jpg' \\
        --texts "a red star,grass,sky" --output outputs/masks --overlays

--input: a local folder, a glob, an s3:// prefix (image files by suffix), or Parquet shards (a
.parquet file, or a folder/prefix holding them) with an encoded image column.
--output (local or s3://) receives labels/<name>.png (palette PNG, value = class index, classes in
job.json), overlays/<name>.png, index/part-*.parquet (key, source, label_path, width, height,
fraction/<class>), errors.jsonl (inputs that could not be read, with the reason) and summary.json.
Rerunning the same command after a kill segments only what is not done yet.
"""
from __future__ import annotations

import argparse
import json
import sys

from tcl.cli import add_ray_arguments, add_segmenter_arguments, segmenter_overrides


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="TCL checkpoint directory or run folder, local or s3://")
    p.add_argument("--input", required=True, help="folder, glob, s3:// prefix, or Parquet shards")
    p.add_argument("--texts", required=True, help="comma-separated texts, e.g. 'a dog,grass,sky'")
    p.add_argument("--output", required=True, help="output folder, local or s3://")
    p.add_argument("--image-column", default=None, help="Parquet image column (default: image, jpg, png or webp)")
    p.add_argument("--overlays", action="store_true", help="also write an overlay PNG with legend per image")
    p.add_argument("--actors", type=int, default=None, help="Segmenter actors (default: one per GPU, else 2 on CPU)")
    p.add_argument("--resources-per-actor", type=json.loads, default={},
                   help='extra Ray resources per actor, JSON, e.g. \'{"node_slot": 1}\' to place one per node')
    p.add_argument("--batch-size", type=int, default=8, help="images per actor call (default: %(default)s)")
    p.add_argument("--index-every", type=int, default=1000, help="index rows per Parquet part (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=64 * 2**20, help="larger images go to the errors (default: %(default)s)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    add_segmenter_arguments(p)
    add_ray_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tcl.batch import BatchJob
    from tcl.ray import batch, runtime

    job = BatchJob(checkpoint=args.checkpoint, input=args.input, texts=args.texts.split(","), output=args.output,
                   image_column=args.image_column, segmenter=segmenter_overrides(args), overlays=args.overlays,
                   actors=args.actors, resources_per_actor=args.resources_per_actor, batch_size=args.batch_size,
                   index_every=args.index_every, max_pixels=args.max_pixels, s3_endpoint=args.s3_endpoint)
    runtime.configure(args.ray_address, args.num_cpus)
    try:
        return batch.run(job)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
