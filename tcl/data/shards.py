"""Training shards: the contract between shard writers (jobs/make_shards.py, img2dataset) and training.

Layout: a folder or ``s3://`` prefix of Parquet files ``shard-00000.parquet``, ... Each row is one
image-text pair: an encoded image column (JPEG/PNG/WebP bytes, anything Pillow opens) and a caption
column. Default names follow img2dataset (``jpg``, ``txt``, with ``caption`` accepted when ``txt``
is absent), so img2dataset's Parquet output reads unchanged; other names are configurable.
``ShardWriter`` also writes a ``key`` column. Row groups are small (256 rows) so that a reader can
stream a shard in pieces; image bytes are stored uncompressed (they are compressed already).

``ImageTextTransform`` turns a batch of rows into training input: ``image`` uint8 [B, 3, S, S]
(decoded by tcl.images, randomly resized and cropped) and ``text`` int64 [B, L] (tokens).
Normalisation happens on the training device: uint8 is a quarter of the bytes of float32.

Augmentation: the official code trains with the DeiT/timm pipeline (RandomResizedCrop scale
(0.08, 1), RandAugment, ColorJitter 0.4, RandomErasing 0.25, horizontal flips). We keep the random
resized crop (bilinear; the scale is configurable, since tiny synthetic images need e.g. (0.5, 1))
and leave out, on purpose: flips (captions may say "left" or "right"), and RandAugment, colour
jitter and erasing (captions name colours and objects, which these change or remove; and they cost
CPU the data pipeline does not have). To add one, apply it in ``ImageTextTransform._augment``.

Rows whose image does not decode, or that have no caption, are dropped from the batch and counted
by reason in the transform's ``skip_counter`` (any object with ``add(dict)``; tcl.ray.data has one
that counts across all Ray workers); without one they are logged.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from PIL import Image

from tcl import storage
from tcl.images import decode_image_with_reason

log = logging.getLogger(__name__)

DEFAULT_IMAGE_COLUMNS = ("jpg", "png", "webp", "image")  # tried in order when none is named
DEFAULT_CAPTION_COLUMNS = ("txt", "caption")
SHARD_NAME = "shard-{index:05d}.parquet"
SHARD_PATTERN = re.compile(r"^shard-(\d{5,})\.parquet$")


# --------------------------------------------------------------------------------------------------
# writing

class ShardWriter:
    """Write (image bytes, caption) rows to ``{prefix}/shard-{i:05d}.parquet``, local or s3://.

    Each shard is built in memory (about one shard of encoded images) and written atomically, so a
    reader never sees a half-written shard, also when the writer dies midway.

        with ShardWriter("s3://bucket/shards", rows_per_shard=1000) as w:
            for jpeg_bytes, caption in pairs:
                w.write(jpeg_bytes, caption)
        print(w.paths)
    """

    def __init__(
        self,
        prefix: str,
        *,
        rows_per_shard: int = 1000,
        row_group_size: int = 256,
        image_column: str = "jpg",
        caption_column: str = "txt",
        start_index: int = 0,
        endpoint_url: str | None = None,
    ):
        if rows_per_shard < 1 or row_group_size < 1:
            raise ValueError("rows_per_shard and row_group_size must be >= 1")
        self.prefix = prefix
        self.rows_per_shard = rows_per_shard
        self.row_group_size = min(row_group_size, rows_per_shard)
        self.image_column = image_column
        self.caption_column = caption_column
        self.endpoint_url = endpoint_url
        self.schema = pa.schema([
            ("key", pa.string()), (image_column, pa.binary()), (caption_column, pa.string()),
        ])
        self.paths: list[str] = []
        self.rows_written = 0
        self._index = start_index
        self._rows: list[tuple[str, bytes, str]] = []
        self._closed = False

    def write(self, image: bytes, caption: str, key: str | None = None) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if key is None:
            key = f"{self._index:05d}{len(self._rows):06d}"
        self._rows.append((key, bytes(image), caption))
        if len(self._rows) >= self.rows_per_shard:
            self._flush()

    def write_all(self, rows: Iterable[tuple[bytes, str]]) -> None:
        for image, caption in rows:
            self.write(image, caption)

    def _flush(self) -> None:
        if not self._rows:
            return
        keys, images, captions = zip(*self._rows)
        table = pa.table(
            {"key": list(keys), self.image_column: list(images), self.caption_column: list(captions)},
            schema=self.schema,
        )
        buf = pa.BufferOutputStream()
        pq.write_table(
            table, buf, row_group_size=self.row_group_size,
            compression={"key": "zstd", self.image_column: "none", self.caption_column: "zstd"},
        )
        uri = storage.join(self.prefix, SHARD_NAME.format(index=self._index))
        storage.write_bytes_atomic(uri, memoryview(buf.getvalue()), endpoint_url=self.endpoint_url)
        self.paths.append(uri)
        self.rows_written += len(self._rows)
        self._rows = []
        self._index += 1

    def close(self) -> list[str]:
        """Write the last partial shard; returns the URIs of all shards written."""
        if not self._closed:
            self._flush()
            self._closed = True
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On error, keep what was complete but do not write a final shard from a broken stream.
        if exc_type is None:
            self.close()
        else:
            self._closed = True


def write_shards(rows: Iterable[tuple[bytes, str]], prefix: str, **writer_kwargs) -> list[str]:
    """Write all ``(image_bytes, caption)`` rows as shards under ``prefix``; returns the shard URIs."""
    with ShardWriter(prefix, **writer_kwargs) as w:
        w.write_all(rows)
    return w.paths


# --------------------------------------------------------------------------------------------------
# reading

def pick_column(names: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str, where: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise ValueError(f"{what} column {wanted!r} not found in {where}; columns found: {list(names)}")
        return wanted
    for name in defaults:
        if name in names:
            return name
    raise ValueError(
        f"no {what} column in {where}: looked for {list(defaults)}, columns found: {list(names)}; "
        f"name it explicitly"
    )


def find_shard_files(uri: str, *, endpoint_url: str | None = None) -> list[str]:
    """Parquet files under ``uri`` (or ``uri`` itself if it is one), sorted; error if there are none."""
    files = storage.list_files(uri, (".parquet",), endpoint_url=endpoint_url)
    if not files:
        raise FileNotFoundError(f"no .parquet files under {uri}")
    return files


def resolve_columns(
    uri: str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    endpoint_url: str | None = None,
) -> tuple[str, str]:
    """The (image, caption) column names of the shards at ``uri``, checked against the first file."""
    first = find_shard_files(uri, endpoint_url=endpoint_url)[0]
    fs, path = storage.resolve(first, endpoint_url=endpoint_url)
    return image_and_caption_columns(pq.read_schema(path, filesystem=fs).names, image_column, caption_column, first)


def image_and_caption_columns(names: Sequence[str], image_column: str | None, caption_column: str | None,
                              where: str) -> tuple[str, str]:
    """(image, caption) columns among a file's `names`: the ones named, checked, else the defaults."""
    return (pick_column(names, image_column, DEFAULT_IMAGE_COLUMNS, "image", where),
            pick_column(names, caption_column, DEFAULT_CAPTION_COLUMNS, "caption", where))


def reason_category(reason: str) -> str:
    # Keep counter keys few: "broken: OSError: image file is truncated (3 bytes...)" -> "broken".
    return reason.split(":", 1)[0]


# --------------------------------------------------------------------------------------------------
# transform

def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) crop box, sampled as torchvision's RandomResizedCrop does."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the largest centred crop whose aspect ratio is within bounds.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


Tokenizer = Callable[[list[str]], Any]


class ImageTextTransform:
    """``map_batches`` callable: decode and random-resized-crop images; tokenize captions.

    Input batch (numpy format): ``image`` (object array of bytes), ``caption`` (object array of str).
    Output: ``image`` uint8 [B, 3, S, S] (not normalised), ``text`` int64 [B, L]. Bad rows are dropped and counted
    in ``skip_counter`` (see module docstring).

    ``tokenizer`` is a callable ``list[str] -> [B, L]`` tensor/array (e.g. ``open_clip.get_tokenizer``)
    or an open_clip model name, in which case the tokenizer is built lazily inside each worker
    (cheaper to ship than the 2 MB vocabulary). tcl.ray.data.training_dataset maps it over shards.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | str,
        *,
        image_size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        skip_counter: Any = None,  # anything with add({reason: count}), e.g. tcl.ray.data.SkipCounter
    ):
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.skip_counter = skip_counter

    def _tokenize(self, captions: list[str]) -> np.ndarray:
        if isinstance(self.tokenizer, str):
            import open_clip
            self.tokenizer = open_clip.get_tokenizer(self.tokenizer)
        tokens = self.tokenizer(captions)
        if hasattr(tokens, "numpy"):
            tokens = tokens.numpy()
        return np.asarray(tokens, dtype=np.int64)

    def _augment(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        box = random_resized_crop_box(img.width, img.height, rng, self.scale, self.ratio)
        size = (self.image_size, self.image_size)
        # resize(box=...) crops and resizes in one pass, without materialising the crop.
        return img.resize(size, Image.Resampling.BILINEAR, box=box)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Fresh OS entropy per batch: the transform object is pickled into every task, so a seeded
        # generator stored on it would repeat the same crops in every task.
        rng = np.random.default_rng()
        pixels: list[np.ndarray] = []
        captions: list[str] = []
        kept: list[int] = []
        skipped: Counter[str] = Counter()
        for row, (data, caption) in enumerate(zip(batch["image"], batch["caption"])):
            if isinstance(caption, bytes):
                caption = caption.decode("utf-8", errors="replace")
            if not isinstance(caption, str):
                skipped["no caption"] += 1
                continue
            img, reason = decode_image_with_reason(data)
            if img is None:
                skipped[reason_category(reason)] += 1
                continue
            pixels.append(np.asarray(self._augment(img, rng), dtype=np.uint8))
            captions.append(caption)
            kept.append(row)
        # other columns (a row's position in the data stream, ...) travel with the rows kept
        extra = {name: np.asarray(values)[kept] for name, values in batch.items() if name not in ("image", "caption")}

        if skipped:
            if self.skip_counter is not None:
                self.skip_counter.add(dict(skipped))
            else:
                log.warning("skipped %d bad rows in a batch: %s", sum(skipped.values()), dict(skipped))

        s = self.image_size
        if not pixels:
            # Keep the token width of the other batches so Ray can concatenate blocks.
            return {"image": np.zeros((0, 3, s, s), np.uint8), "text": self._tokenize([""])[:0], **extra}
        images = np.ascontiguousarray(np.stack(pixels).transpose(0, 3, 1, 2))  # [B, 3, S, S] uint8
        return {"image": images, "text": self._tokenize(captions), **extra}
