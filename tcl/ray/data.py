"""Ray Data pipelines over training shards: Parquet -> decode + crop + tokenize in CPU tasks.

`training_stream` is what training consumes: one stream over every epoch a run needs, so the next
epoch's data flows while the current one ends (no drain at epoch boundaries). Each epoch visits
the shards' row groups in its own seeded file order; every row carries its `position` in the
stream, and a run that resumes from a checkpoint continues the stream at the position the
checkpoint recorded (`DataPosition`): the same epochs, the same file order, nothing replayed.
A row group is one task's work (read, decode, crop, tokenize), so the pipeline spreads over as
many CPUs as there are row groups in flight.

The shards are a local folder or an s3:// prefix (tcl.storage resolves the filesystem). Bad rows
are dropped and counted across all workers by a `SkipCounter`.
"""
from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import pyarrow.parquet as pq

from tcl import storage
from tcl.data.shards import ImageTextTransform, find_shard_files, image_and_caption_columns


@dataclasses.dataclass(frozen=True)
class RowGroup:
    path: str  # in the shards' filesystem
    index: int  # row group within the file
    rows: int


def list_row_groups(uri: str, endpoint_url: str | None = None, image_column: str | None = None,
                    caption_column: str | None = None, threads: int = 32) -> tuple[Any, list[list[RowGroup]], tuple[str, str]]:
    """(filesystem, the row groups of each shard file in sorted file order, (image column,
    caption column): the ones named, checked, else the defaults found in the first file's schema).
    One listing; the footers (small; on S3 one request each) read in `threads` threads."""
    files = find_shard_files(uri, endpoint_url=endpoint_url)
    filesystem, _ = storage.resolve(files[0], endpoint_url=endpoint_url)
    paths = [storage.resolve(f, endpoint_url=endpoint_url)[1] for f in files]

    def footer(path: str):
        with filesystem.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    with ThreadPoolExecutor(max(1, min(threads, len(paths)))) as pool:
        footers = list(pool.map(footer, paths))
    columns = image_and_caption_columns(footers[0].schema.to_arrow_schema().names, image_column, caption_column, files[0])
    groups = [[RowGroup(path, i, metadata.row_group(i).num_rows) for i in range(metadata.num_row_groups)]
              for path, metadata in zip(paths, footers)]
    return filesystem, groups, columns


def stream_items(files: list[list[RowGroup]], seed: int, rows_needed: int, epochs: int | None = None) -> tuple[list[dict], int]:
    """The stream: epoch after epoch, each in its own seeded file order, or exactly `epochs`.
    Twice the epochs that `rows_needed` rows take, and one more: a run stops at its step count,
    and the slack is for rows it never trains on (unreadable images, and on each restart the rows
    of row groups that were in flight past the checkpoint's position). Returns (items, items per
    epoch); item i = {position: i, epoch, path, row_group}."""
    per_epoch = sum(len(groups) for groups in files)
    rows_per_epoch = sum(g.rows for groups in files for g in groups)
    if rows_per_epoch == 0:
        raise ValueError("the shards hold no rows")
    epochs = epochs or 2 * -(-rows_needed // rows_per_epoch) + 1
    items = []
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(files))
        for f in order:
            for group in files[f]:
                items.append({"position": len(items), "epoch": epoch, "path": group.path, "row_group": group.index})
    return items, per_epoch


class _MailboxHandle:
    """A handle on the run's mailbox actor (tcl.ray.runtime.run_mailbox, on the driver's node, so it
    outlives any worker node a run loses); made on the driver, it pickles as the actor's handle."""

    def __init__(self, mailbox: Any = None):
        if mailbox is None:
            from tcl.ray.runtime import run_mailbox

            mailbox = run_mailbox()
        self._mailbox = mailbox

    def __reduce__(self):
        return (type(self), (self._mailbox,))


class DataPosition(_MailboxHandle):
    """Where the stream starts: the position a resumed run's checkpoint recorded. Workers set it
    when they resume (before they ask for data); the stream drops the items before it, so a run
    restarted after a failure, or rerun, reads on from there. Kept in the run's mailbox actor on
    the driver's node (tcl.ray.runtime)."""

    def set(self, position: int) -> None:
        import ray

        ray.get(self._mailbox.set_position.remote(int(position)))

    def get(self) -> int:
        import ray

        return ray.get(self._mailbox.get_position.remote())


def _drop_consumed(items: dict[str, np.ndarray], position: DataPosition) -> dict[str, np.ndarray]:
    keep = items["position"] >= position.get()
    return {name: values[keep] for name, values in items.items()}


class _ReadRowGroup:
    """An item -> its row group's rows, decoded, cropped and tokenized (ImageTextTransform), each
    with its stream position; in slices of `rows_per_batch` rows."""

    def __init__(self, filesystem, columns: tuple[str, str], transform: ImageTextTransform, rows_per_batch: int):
        self.filesystem, self.columns, self.transform, self.rows_per_batch = filesystem, columns, transform, rows_per_batch

    def __call__(self, items: dict[str, np.ndarray]):
        image_column, caption_column = self.columns
        for position, path, row_group in zip(items["position"], items["path"], items["row_group"]):
            with self.filesystem.open_input_file(str(path)) as f:
                table = pq.ParquetFile(f).read_row_group(int(row_group), columns=[image_column, caption_column])
            for start in range(0, table.num_rows, self.rows_per_batch):
                part = table.slice(start, self.rows_per_batch)
                batch = {"image": np.array(part.column(image_column).to_pylist() + [None], dtype=object)[:-1],
                         "caption": np.array(part.column(caption_column).to_pylist() + [None], dtype=object)[:-1],
                         "position": np.full(part.num_rows, position, dtype=np.int64)}
                yield self.transform(batch)


@dataclasses.dataclass
class TrainingStream:
    dataset: Any  # the Ray Dataset: image uint8 [3, S, S], text int64 [L], position int64
    position: DataPosition
    items_per_epoch: int


def training_stream(cfg, tokenizer, skip_counter: "SkipCounter | None" = None, epochs: int | None = None,
                    position: DataPosition | None = None) -> TrainingStream:
    """The stream training consumes (cfg: tcl.training.TrainConfig): every epoch the run needs (or
    exactly `epochs`), row groups in each epoch's seeded file order, decoded + randomly resized
    and cropped + tokenized in CPU tasks (uint8 images), each row with its position in the stream."""
    import ray.data

    if not cfg.data.shards:
        raise ValueError("data.shards is not set: give the Parquet shards' folder or s3:// prefix (data.shards=...)")
    filesystem, files, columns = list_row_groups(cfg.data.shards, cfg.data.endpoint_url, cfg.data.image_column, cfg.data.caption_column)
    items, per_epoch = stream_items(files, cfg.run.seed, cfg.optim.total_steps * cfg.optim.batch_size, epochs)
    position = position if position is not None else DataPosition()
    transform = ImageTextTransform(tokenizer, image_size=cfg.data.image_size, scale=cfg.data.crop_scale, skip_counter=skip_counter)
    # a few row groups per block: the items are tiny, and one block per item would mean one
    # object per row group in the object store
    dataset = (ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // 4)))
               .map_batches(_drop_consumed, fn_kwargs={"position": position}, batch_format="numpy", batch_size=None)
               .map_batches(_ReadRowGroup(filesystem, columns, transform, rows_per_batch=256), batch_format="numpy", batch_size=1))
    return TrainingStream(dataset, position, per_epoch)


def training_dataset(cfg, tokenizer, skip_counter: "SkipCounter | None" = None, epochs: int = 1):
    """The training pipeline as a plain Dataset over `epochs` passes of the shards: what
    bench/data_pipeline.py measures against a bare loop."""
    return training_stream(cfg, tokenizer, skip_counter, epochs=epochs).dataset


class SkipCounter(_MailboxHandle):
    """Rows the transform dropped, by reason, counted across all Ray workers, in the run's mailbox
    actor on the driver's node (it must outlive any worker node a run loses). Create it on the
    driver and hand it to the transform; it pickles as a handle. Why an actor rather than a
    column: a column can only carry a count on rows that survive, so a batch whose rows are all
    bad would lose its count. `add` is awaited (it only happens for batches with bad rows), so
    `total()` is exact once the batches that caused it have been produced.
    """

    def add(self, reasons: dict[str, int]) -> None:
        import ray

        ray.get(self._mailbox.add_counts.remote(reasons))

    def by_reason(self) -> dict[str, int]:
        import ray

        return ray.get(self._mailbox.counts.remote())

    def total(self) -> int:
        return sum(self.by_reason().values())

    def reset(self) -> None:
        import ray

        ray.get(self._mailbox.reset_counts.remote())
