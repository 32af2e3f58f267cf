"""Write TCL training shards (Parquet: `jpg` image bytes + `txt` caption) from one of four sources.

Sources:
  folder      a folder of images plus a captions file (CSV, TSV or JSONL) naming file and caption
  parquet     img2dataset Parquet output (re-sharded; image/caption columns auto-detected or named)
  webdataset  webdataset / img2dataset tar files: members `KEY.jpg` (or .jpeg/.png/.webp) + `KEY.txt`
  synthetic   the synthetic world of tcl.data.synthetic (images stored as PNG, see below)

Input and output may be local paths or s3://bucket/prefix (credentials from the AWS_* environment
variables; --endpoint-url for MinIO/moto/...). Shards are named shard-00000.parquet, ... and each is
written atomically. Image bytes are copied as they are (no re-encoding); pass --verify to decode
each image first and drop the ones that do not decode (otherwise training drops and counts them).

Synthetic images are encoded as PNG: they are small flat-colour scenes whose segmentation masks are
pixel-exact and whose captions name colours, so lossless storage matters (JPEG's chroma subsampling
and ringing blur exactly the colour edges the masks describe), and flat colour makes PNGs small.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import posixpath
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    # Run as `python jobs/make_shards.py`: make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow.parquet as pq  # noqa: E402

from tcl import storage  # noqa: E402
from tcl import images  # noqa: E402
from tcl.data import shards  # noqa: E402

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

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


# --------------------------------------------------------------------------------------------------
# sources: each yields (image_bytes, caption, key) and counts what it had to skip in `skipped`

def read_captions_table(uri: str, file_column: str, caption_column: str, endpoint_url: str | None = None) -> list[tuple[str, str]]:
    """(file name, caption) pairs from a CSV/TSV/JSONL file; format from the extension."""
    text = storage.read_bytes(uri, endpoint_url=endpoint_url).decode("utf-8-sig")
    lower = uri.lower()
    if lower.endswith((".jsonl", ".json", ".ndjson")):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        found = sorted({k for r in rows for k in r})
    elif lower.endswith((".csv", ".tsv", ".txt")):
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if lower.endswith(".tsv") else ",")
        rows = list(reader)
        found = list(reader.fieldnames or [])
    else:
        raise ValueError(f"captions file {uri} must end in .csv, .tsv or .jsonl")
    for col in (file_column, caption_column):
        if col not in found:
            raise ValueError(
                f"column {col!r} not in captions file {uri}; columns found: {found} "
                f"(name them with --file-column / --caption-column)"
            )
    return [(str(r[file_column]), r[caption_column]) for r in rows]


def iter_folder(
    images: str, captions: str, *, file_column: str = "file_name", caption_column: str = "caption",
    endpoint_url: str | None = None, skipped: Counter | None = None,
) -> Iterator[tuple[bytes, str, str]]:
    skipped = skipped if skipped is not None else Counter()
    for name, caption in read_captions_table(captions, file_column, caption_column, endpoint_url):
        if not caption:
            skipped["empty caption"] += 1
            continue
        try:
            data = storage.read_bytes(storage.join(images, name), endpoint_url=endpoint_url)
        except FileNotFoundError:
            skipped["image file missing"] += 1
            continue
        yield data, caption, posixpath.splitext(name)[0]


def iter_parquet(
    input_uri: str, *, image_column: str | None = None, caption_column: str | None = None,
    endpoint_url: str | None = None, skipped: Counter | None = None,
) -> Iterator[tuple[bytes, str, str | None]]:
    skipped = skipped if skipped is not None else Counter()
    files = shards.find_shard_files(input_uri, endpoint_url=endpoint_url)
    image_col, caption_col = shards.resolve_columns(
        input_uri, image_column=image_column, caption_column=caption_column, endpoint_url=endpoint_url
    )
    for uri in files:
        fs, path = storage.resolve(uri, endpoint_url=endpoint_url)
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in (image_col, caption_col) if c not in pf.schema_arrow.names]
            if missing:
                raise ValueError(f"{uri} lacks column(s) {missing}; columns found: {pf.schema_arrow.names}")
            for batch in pf.iter_batches(batch_size=256, columns=[image_col, caption_col]):
                for data, caption in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
                    if data is None:  # img2dataset keeps rows of failed downloads with a null image
                        skipped["image missing"] += 1
                    elif not caption:
                        skipped["empty caption"] += 1
                    else:
                        yield data, caption, None


def _split_member_name(name: str) -> tuple[str, str]:
    # webdataset convention: the key is everything before the first dot of the file name.
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem), ext.lower()


def iter_webdataset(
    input_uri: str, *, endpoint_url: str | None = None, skipped: Counter | None = None,
) -> Iterator[tuple[bytes, str, str]]:
    skipped = skipped if skipped is not None else Counter()
    tars = storage.list_files(input_uri, (".tar",), endpoint_url=endpoint_url)
    if not tars:
        raise FileNotFoundError(f"no .tar files under {input_uri}")
    for uri in tars:
        fs, path = storage.resolve(uri, endpoint_url=endpoint_url)
        with fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            # Members of one sample are adjacent in a webdataset tar, so one pending sample suffices.
            key, parts = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = _split_member_name(member.name)
                if member_key != key:
                    if key is not None:
                        yield from _finish_sample(key, parts, skipped)
                    key, parts = member_key, {}
                if ext in IMAGE_EXTENSIONS or ext == "txt":
                    parts[ext] = tar.extractfile(member).read()
            if key is not None:
                yield from _finish_sample(key, parts, skipped)


def _finish_sample(key: str, parts: dict[str, bytes], skipped: Counter) -> Iterator[tuple[bytes, str, str]]:
    image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
    caption = parts.get("txt", b"").decode("utf-8", errors="replace").strip()
    if image is None:
        skipped["sample without image"] += 1
    elif not caption:
        skipped["sample without caption"] += 1
    else:
        yield image, caption, posixpath.basename(key)


def iter_synthetic(count: int, seed: int, image_size: int, world: list[str] | None = None) -> Iterator[tuple[bytes, str, str]]:
    """The synthetic world's pairs; `world`: SceneConfig overrides as key=value strings."""
    from tcl.data.synthetic import caption_pairs, scene_config

    pairs = caption_pairs(count=count, seed=seed, image_size=image_size, world=scene_config(world or []))
    for i, (image, caption) in enumerate(pairs):
        yield images.encode_image(image, "PNG"), caption, f"{seed:04d}{i:09d}"


# --------------------------------------------------------------------------------------------------
# main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=["folder", "parquet", "webdataset", "synthetic"])
    p.add_argument("--output", required=True, help="local folder or s3://bucket/prefix for the shards")
    p.add_argument("--rows-per-shard", type=int, default=1000, help="rows per Parquet file (default 1000)")
    p.add_argument("--row-group-size", type=int, default=256, help="rows per Parquet row group (default 256)")
    p.add_argument("--endpoint-url", default=None,
                   help="S3 endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL[_S3] or AWS)")
    p.add_argument("--overwrite", action="store_true", help="delete existing shard-*.parquet at --output first")
    p.add_argument("--verify", action="store_true", help="decode every image and drop those that fail")
    p.add_argument("--log-every", type=int, default=1000, help="print progress every N rows")
    g = p.add_argument_group("folder source")
    g.add_argument("--images", help="folder (or s3:// prefix) holding the image files")
    g.add_argument("--captions", help="CSV/TSV/JSONL file with a file-name column and a caption column")
    g.add_argument("--file-column", default="file_name", help="captions-file column with the image file name")
    g.add_argument("--caption-column", default=None,
                   help="caption column (folder default: caption; parquet default: txt, then caption)")
    g = p.add_argument_group("parquet / webdataset sources")
    g.add_argument("--input", help="folder, file or s3:// prefix with .parquet or .tar files")
    g.add_argument("--image-column", default=None, help="parquet image column (default: jpg, png, webp, image)")
    g = p.add_argument_group("synthetic source")
    g.add_argument("--count", type=int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--image-size", type=int, default=64)
    g.add_argument("--world", action="append", default=[], metavar="KEY=VALUE",
                   help="a SceneConfig value of tcl.data.synthetic, e.g. --world max_shapes=2 (repeatable)")
    args = p.parse_args(argv)

    need = {"folder": ["images", "captions"], "parquet": ["input"], "webdataset": ["input"], "synthetic": []}
    missing = [f"--{n.replace('_', '-')}" for n in need[args.source] if not getattr(args, n)]
    if missing:
        p.error(f"--source {args.source} needs {' and '.join(missing)}")
    return args


def open_source(args: argparse.Namespace, skipped: Counter) -> Iterator[tuple[bytes, str, str | None]]:
    ep = args.endpoint_url
    if args.source == "folder":
        return iter_folder(args.images, args.captions, file_column=args.file_column,
                           caption_column=args.caption_column or "caption", endpoint_url=ep, skipped=skipped)
    if args.source == "parquet":
        return iter_parquet(args.input, image_column=args.image_column, caption_column=args.caption_column,
                            endpoint_url=ep, skipped=skipped)
    if args.source == "webdataset":
        return iter_webdataset(args.input, endpoint_url=ep, skipped=skipped)
    return iter_synthetic(args.count, args.seed, args.image_size, args.world)


def existing_shards(output: str, endpoint_url: str | None) -> list[str]:
    if not storage.exists(output, endpoint_url=endpoint_url):
        return []
    return [u for u in storage.list_files(output, (".parquet",), endpoint_url=endpoint_url)
            if shards.SHARD_PATTERN.match(posixpath.basename(u))]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ep = args.endpoint_url
    old = existing_shards(args.output, ep)
    if old and not args.overwrite:
        print(f"error: {args.output} already holds {len(old)} shard(s); pass --overwrite to replace them",
              file=sys.stderr)
        return 2
    for uri in old:
        storage.delete_file(uri, endpoint_url=ep)

    skipped: Counter = Counter()
    start = time.time()
    rows = 0
    writer = shards.ShardWriter(args.output, rows_per_shard=args.rows_per_shard,
                                row_group_size=args.row_group_size, endpoint_url=ep)
    with writer:
        for data, caption, key in open_source(args, skipped):
            if args.verify:
                _, reason = images.decode_image_with_reason(data)
                if reason is not None:
                    skipped[f"undecodable image ({shards.reason_category(reason)})"] += 1
                    continue
            n_shards = len(writer.paths)
            writer.write(data, caption, key=key)
            rows += 1
            if len(writer.paths) > n_shards:
                print(f"wrote {writer.paths[-1]} ({rows} rows so far)", flush=True)
            if args.log_every and rows % args.log_every == 0:
                print(f"{rows} rows, {rows / (time.time() - start):.0f} rows/s, skipped {sum(skipped.values())}",
                      flush=True)
    if rows % args.rows_per_shard:  # the last, partial shard is written by close()
        print(f"wrote {writer.paths[-1]} ({rows} rows so far)", flush=True)
    elapsed = time.time() - start
    print(f"done: {rows} rows in {len(writer.paths)} shard(s) at {args.output} in {elapsed:.1f}s"
          + (f"; skipped {sum(skipped.values())}: {dict(skipped)}" if skipped else "; skipped 0"), flush=True)
    if rows == 0:
        print("error: no rows were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
