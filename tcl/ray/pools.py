"""Actor pools of Segmenters, shared by the evaluation job and batch segmentation: the checkpoint
checked once on the driver, how many actors and on what, the pool itself, and consuming its
results with progress and the startup / steady-state timing the benchmarks read."""
from __future__ import annotations

import dataclasses
import time
from typing import Callable

from tcl import storage
from tcl.console import Progress, say


def checkpoint_for_actors(path: str) -> str:
    """A checkpoint path as the actors get it: a local checkpoint directory or run folder resolved
    to its newest intact checkpoint directory, checked once on the driver (one clear error rather
    than one per actor; damaged newer checkpoints skipped, and said so); s3:// unchanged (each
    actor downloads it, skipping damaged ones the same way)."""
    import os

    from tcl.checkpoint import intact_checkpoint

    if storage.is_s3(path):
        return path
    directory, skipped = intact_checkpoint(path)
    for reason in skipped:
        say(f"warning: skipping a damaged checkpoint: {reason}")
    return os.path.abspath(directory)


def actor_count(requested: int | None) -> tuple[int, bool]:
    """(actors, on GPUs): `requested`, else one per GPU of the cluster, else 2 CPU actors."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    return (requested or (gpus if gpus else 2)), gpus > 0


def map_with_pool(dataset, actor_class: type, constructor_kwargs: dict, *, actors: int, use_gpu: bool, batch_size: int,
                  resources: dict | None = None, start_timeout_s: float = 900.0):
    """dataset.map_batches over a pool of `actors` instances of `actor_class`, one GPU each where
    there are GPUs. All actors start before the first batch, so the work spreads over all of them;
    a pool the cluster cannot place fails after `start_timeout_s` with Ray Data's error rather
    than waiting forever (GPU nodes may take minutes to come up)."""
    import ray

    dataset.context.wait_for_min_actors_s = start_timeout_s  # a dataset keeps the context it was made with
    return dataset.map_batches(actor_class, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                               num_gpus=1 if use_gpu else 0, num_cpus=0 if use_gpu else 1, resources=resources or None,
                               fn_constructor_kwargs=constructor_kwargs)


@dataclasses.dataclass
class PoolTiming:
    seconds: float
    startup_seconds: float  # until the first results: Ray Data's planning, actors loading the model
    steady_items_per_second: float | None  # after the first results


def consume(results, count: Callable[[dict], int], on_batch: Callable[[dict], None], progress: Progress,
            note: Callable[[], str] = lambda: "") -> PoolTiming:
    """Iterate the pool's output batches (numpy), handing each to `on_batch`, with progress."""
    start = time.perf_counter()
    first = first_count = None
    done = 0
    for batch in results.iter_batches(batch_format="numpy", batch_size=None):
        if first is None:
            first, first_count = time.perf_counter(), count(batch)
        on_batch(batch)
        done += count(batch)
        progress.update(done, note())
    end = time.perf_counter()
    steady = (done - first_count) / (end - first) if first is not None and done > first_count and end > first else None
    progress.close(note())
    return PoolTiming(end - start, (first or end) - start, steady)
