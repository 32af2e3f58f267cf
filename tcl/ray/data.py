"""Ray Data pipelines over training shards: Parquet -> decode + crop + tokenize in CPU tasks.

`read_shards` gives a Dataset with the canonical columns `image` (bytes) and `caption`, from a
local folder or an s3:// prefix (tcl.storage resolves the filesystem and credentials).
`training_dataset` adds the transform (tcl.data.shards.ImageTextTransform); bad rows are dropped and
counted across all workers by a `SkipCounter`.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tcl import storage
from tcl.data.shards import (DEFAULT_CAPTION_COLUMNS, DEFAULT_IMAGE_COLUMNS, ImageTextTransform, find_shard_files,
                             pick_column, resolve_columns)


def read_shards(
    uri: str,
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
    filesystem: Any = None,
    shuffle_files: bool = True,
    shuffle_files_seed: int | None = None,
    endpoint_url: str | None = None,
):
    """Parquet shards as a Ray Dataset with canonical columns `image` (bytes) and `caption` (str).

    The columns default to img2dataset's names (`jpg`; `txt` then `caption`). File order is
    shuffled per execution (epoch); with `shuffle_files_seed` the sequence of orders is
    reproducible. `filesystem` overrides the one tcl.storage resolves (then `uri` is a path within
    it, e.g. `bucket/prefix`).
    """
    import ray.data
    from ray.data import FileShuffleConfig

    if filesystem is None:
        files = find_shard_files(uri, endpoint_url=endpoint_url)
        image_col, caption_col = resolve_columns(uri, image_column=image_column, caption_column=caption_column,
                                                 endpoint_url=endpoint_url)
        filesystem, _ = storage.resolve(files[0], endpoint_url=endpoint_url)
        paths = [storage.resolve(f, endpoint_url=endpoint_url)[1] for f in files]
    else:
        info = filesystem.get_file_info(uri)
        if info.type == pafs.FileType.File:
            paths = [uri]
        else:
            selector = pafs.FileSelector(uri, recursive=True)
            paths = sorted(i.path for i in filesystem.get_file_info(selector)
                           if i.path.endswith(".parquet") and not i.base_name.startswith((".", "_")))
        if not paths:
            raise FileNotFoundError(f"no .parquet files under {uri}")
        names = pq.read_schema(paths[0], filesystem=filesystem).names
        image_col = pick_column(names, image_column, DEFAULT_IMAGE_COLUMNS, "image", paths[0])
        caption_col = pick_column(names, caption_column, DEFAULT_CAPTION_COLUMNS, "caption", paths[0])

    if not shuffle_files:
        shuffle = None
    elif shuffle_files_seed is not None:
        shuffle = FileShuffleConfig(seed=shuffle_files_seed, reseed_after_execution=True)
    else:
        shuffle = "files"
    # select_columns (read_parquet(columns=...) is deprecated in Ray 2.60) is pushed down to the reader.
    # Ray 2.60's Parquet reader packs row groups into read tasks of up to 128 MiB (measured), so
    # the read granularity is not a parameter here.
    dataset = ray.data.read_parquet(paths, filesystem=filesystem, shuffle=shuffle).select_columns([image_col, caption_col])
    renames = {c: n for c, n in ((image_col, "image"), (caption_col, "caption")) if c != n}
    return dataset.rename_columns(renames) if renames else dataset


def training_dataset(cfg, tokenizer, skip_counter: "SkipCounter | None" = None):
    """The pipeline training consumes (cfg: tcl.training.TrainConfig): shards -> decode + random
    resized crop + tokenize, in CPU tasks, uint8 images."""
    if not cfg.data.shards:
        raise ValueError("data.shards is not set: give the Parquet shards' folder or s3:// prefix (data.shards=...)")
    transform = ImageTextTransform(tokenizer, image_size=cfg.data.image_size, scale=cfg.data.crop_scale, skip_counter=skip_counter)
    dataset = read_shards(cfg.data.shards, image_column=cfg.data.image_column, caption_column=cfg.data.caption_column,
                          endpoint_url=cfg.data.endpoint_url, shuffle_files_seed=cfg.run.seed)
    per_worker = max(16, cfg.optim.batch_size // max(1, cfg.run.num_workers))
    return dataset.map_batches(transform, batch_format="numpy", batch_size=per_worker)


class _Counts:
    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def add(self, reasons: dict[str, int]) -> None:
        self.reasons.update(reasons)

    def get(self) -> dict[str, int]:
        return dict(self.reasons)

    def reset(self) -> None:
        self.reasons.clear()


class SkipCounter:
    """Rows the transform dropped, by reason, counted across all Ray workers.

    A tiny actor on the driver's node (it must outlive any worker node a run loses). Create it on
    the driver and hand it to the transform; it pickles as a handle. Why an actor rather than a
    column: a column can only carry a count on rows that survive, so a batch whose rows are all
    bad would lose its count. `add` is awaited (it only happens for batches with bad rows), so
    `total()` is exact once the batches that caused it have been produced.
    """

    def __init__(self, handle: Any = None):
        if handle is None:
            from tcl.ray.runtime import driver_actor

            handle = driver_actor(_Counts)
        self._handle = handle

    def __reduce__(self):
        return (SkipCounter, (self._handle,))

    def add(self, reasons: dict[str, int]) -> None:
        import ray

        ray.get(self._handle.add.remote(reasons))

    def by_reason(self) -> dict[str, int]:
        import ray

        return ray.get(self._handle.get.remote())

    def total(self) -> int:
        return sum(self.by_reason().values())

    def reset(self) -> None:
        import ray

        ray.get(self._handle.reset.remote())
