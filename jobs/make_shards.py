"""Write TCL training shards (Parquet: `jpg` image bytes + `txt` caption) from a folder of images
with a captions file, img2dataset Parquet, webdataset tars, or the synthetic world.

Input and output may be local paths or s3://bucket/prefix (credentials from the AWS_* environment
variables; --endpoint-url for MinIO and other S3 services). Shards are named shard-00000.parquet,
... and each is written atomically. Image bytes are copied as they are; --verify decodes each
first and drops those that do not decode (otherwise training drops and counts them).
"""
from __future__ import annotations

import argparse
import sys

from tcl.cli import add_world_argument

EXAMPLES = """\
examples:
  # 10k synthetic pairs, 64x64, into a local folder
  python jobs/make_shards.py --source synthetic --count 10000 --seed 0 --image-size 64 --output data/synth

  # a folder of images with captions.csv (columns file_name, caption), to S3 (e.g. MinIO)
  python jobs/make_shards.py --source folder --images photos/ --captions photos/captions.csv \\
      --output s3://bucket/shards --endpoint-url http://127.0.0.1:9000

  # a JSONL captions file with other column names
  python jobs/make_shards.py --source folder --images imgs/ --captions meta.jsonl \\
      --file-column image --caption-column text --output data/shards

  # re-shard img2dataset Parquet output (columns jpg + txt or caption) into 2000-row shards
  python jobs/make_shards.py --source parquet --input s3://bucket/img2dataset --output data/shards \\
      --rows-per-shard 2000

  # img2dataset / webdataset tar files
  python jobs/make_shards.py --source webdataset --input data/wds --output data/shards
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, choices=["folder", "parquet", "webdataset", "synthetic"])
    p.add_argument("--output", required=True, help="local folder or s3://bucket/prefix for the shards")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="rows per Parquet file (default: %(default)s)")
    p.add_argument("--row-group-size", type=int, default=256, help="rows per Parquet row group (default: %(default)s)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL[_S3] or AWS)")
    p.add_argument("--overwrite", action="store_true", help="delete existing shard-*.parquet at --output first")
    p.add_argument("--verify", action="store_true", help="decode every image and drop those that fail")
    p.add_argument("--log-every", type=int, default=1000, help="print progress every N rows (default: %(default)s)")
    g = p.add_argument_group("folder source")
    g.add_argument("--images", help="folder (or s3:// prefix) holding the image files")
    g.add_argument("--captions", help="CSV/TSV/JSONL file with a file-name column and a caption column")
    g.add_argument("--file-column", default="file_name", help="captions-file column with the image file name")
    g.add_argument("--caption-column", default=None, help="caption column (folder default: caption; parquet default: txt, then caption)")
    g = p.add_argument_group("parquet / webdataset sources")
    g.add_argument("--input", help="folder, file or s3:// prefix with .parquet or .tar files")
    g.add_argument("--image-column", default=None, help="parquet image column (default: jpg, png, webp, image)")
    g = p.add_argument_group("synthetic source")
    g.add_argument("--count", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--image-size", type=int, default=64)
    add_world_argument(g)
    args = p.parse_args(argv)
    need = {"folder": ["images", "captions"], "parquet": ["input"], "webdataset": ["input"], "synthetic": []}
    missing = [f"--{name}" for name in need[args.source] if not getattr(args, name)]
    if missing:
        p.error(f"--source {args.source} needs {' and '.join(missing)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tcl.data.sources import ShardsJob, make_shards

    try:
        make_shards(ShardsJob(**{k: v for k, v in vars(args).items()}))
    except (ValueError, FileExistsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, FileExistsError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
