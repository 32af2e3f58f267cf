"""Sources of image-text pairs, written as training shards (tcl.data.shards): the library behind
jobs/make_shards.py.

  folder      a folder of images plus a captions file (CSV, TSV or JSONL) naming file and caption
  parquet     img2dataset Parquet output (re-sharded; image/caption columns found or named)
  webdataset  webdataset / img2dataset tar files: members `KEY.jpg` (or .jpeg/.png/.webp) + `KEY.txt`
  synthetic   the synthetic world of tcl.data.synthetic (stored as PNG: the scenes are flat colour
              with pixel-exact masks and colour words in the captions, which JPEG's chroma
              subsampling would blur)

Input and output may be local paths or s3:// prefixes. Image bytes are copied as they are (no
re-encoding); `verify` decodes each first and drops those that do not decode (otherwise training
drops and counts them).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import posixpath
import tarfile
import time
from collections import Counter
from collections.abc import Iterator

import pyarrow.parquet as pq

from tcl import images, storage
from tcl.console import say
from tcl.data import shards

SOURCES = ("folder", "parquet", "webdataset", "synthetic")


@dataclasses.dataclass
class ShardsJob:
    """What make_shards writes, from where."""

    source: str  # one of SOURCES
    output: str  # local folder or s3:// prefix
    rows_per_shard: int = 1000
    row_group_size: int = 256
    endpoint_url: str | None = None
    overwrite: bool = False  # replace existing shard-*.parquet at output
    verify: bool = False  # decode every image first and drop those that fail
    log_every: int = 1000
    images: str | None = None  # folder source: the image files' folder or prefix
    captions: str | None = None  # folder source: CSV/TSV/JSONL with a file-name and a caption column
    file_column: str = "file_name"
    caption_column: str | None = None  # folder default: caption; parquet default: txt, then caption
    input: str | None = None  # parquet / webdataset sources
    image_column: str | None = None
    count: int = 1000  # synthetic source
    seed: int = 0
    image_size: int = 64
    world: list[str] = dataclasses.field(default_factory=list)  # SceneConfig overrides, key=value

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        need = {"folder": ["images", "captions"], "parquet": ["input"], "webdataset": ["input"], "synthetic": []}
        missing = [name for name in need[self.source] if not getattr(self, name)]
        if missing:
            raise ValueError(f"source {self.source} needs {' and '.join(missing)}")


# --------------------------------------------------------------------------------------------------
# sources: each yields (image_bytes, caption, key) and counts what it had to skip in `skipped`

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
    image_folder: str, captions: str, *, file_column: str = "file_name", caption_column: str = "caption",
    endpoint_url: str | None = None, skipped: Counter | None = None,
) -> Iterator[tuple[bytes, str, str]]:
    skipped = skipped if skipped is not None else Counter()
    for name, caption in read_captions_table(captions, file_column, caption_column, endpoint_url):
        if not caption:
            skipped["empty caption"] += 1
            continue
        try:
            data = storage.read_bytes(storage.join(image_folder, name), endpoint_url=endpoint_url)
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


def open_source(job: ShardsJob, skipped: Counter) -> Iterator[tuple[bytes, str, str | None]]:
    ep = job.endpoint_url
    if job.source == "folder":
        return iter_folder(job.images, job.captions, file_column=job.file_column,
                           caption_column=job.caption_column or "caption", endpoint_url=ep, skipped=skipped)
    if job.source == "parquet":
        return iter_parquet(job.input, image_column=job.image_column, caption_column=job.caption_column,
                            endpoint_url=ep, skipped=skipped)
    if job.source == "webdataset":
        return iter_webdataset(job.input, endpoint_url=ep, skipped=skipped)
    return iter_synthetic(job.count, job.seed, job.image_size, job.world)


def existing_shards(output: str, endpoint_url: str | None = None) -> list[str]:
    if not storage.exists(output, endpoint_url=endpoint_url):
        return []
    return [u for u in storage.list_files(output, (".parquet",), endpoint_url=endpoint_url)
            if shards.SHARD_PATTERN.match(posixpath.basename(u))]


def make_shards(job: ShardsJob) -> dict:
    """Write the source's pairs as shards; returns {rows, shards, skipped, seconds}. FileExistsError
    when the output already holds shards and `overwrite` is off; ValueError when nothing was written."""
    old = existing_shards(job.output, job.endpoint_url)
    if old and not job.overwrite:
        raise FileExistsError(f"{job.output} already holds {len(old)} shard(s); pass --overwrite to replace them")
    for uri in old:
        storage.delete_file(uri, endpoint_url=job.endpoint_url)

    skipped: Counter = Counter()
    start = time.time()
    rows = 0
    writer = shards.ShardWriter(job.output, rows_per_shard=job.rows_per_shard, row_group_size=job.row_group_size,
                                endpoint_url=job.endpoint_url)
    with writer:
        for data, caption, key in open_source(job, skipped):
            if job.verify:
                _, reason = images.decode_image_with_reason(data)
                if reason is not None:
                    skipped[f"undecodable image ({shards.reason_category(reason)})"] += 1
                    continue
            writer.write(data, caption, key=key)
            rows += 1
            if job.log_every and rows % job.log_every == 0:
                say(f"{rows} rows, {rows / (time.time() - start):.0f} rows/s, skipped {sum(skipped.values())}")
    seconds = time.time() - start
    say(f"wrote {rows} rows in {len(writer.paths)} shard(s) to {job.output} in {seconds:.1f} s"
        + (f"; skipped {sum(skipped.values())}: {dict(skipped)}" if skipped else "; skipped 0"))
    if rows == 0:
        raise ValueError(f"no rows were written to {job.output}" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return {"rows": rows, "shards": list(writer.paths), "skipped": dict(skipped), "seconds": seconds}
