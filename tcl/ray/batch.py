"""Batch segmentation of an image collection on Ray: CPU tasks read and decode, an actor pool of
Segmenters (one per GPU where there are GPUs) segments and writes; the driver keeps the index.
The output layout and its rules are tcl.batch's.
"""
from __future__ import annotations

import json
import os
import time

from tcl import storage
from tcl.batch import (BatchJob, IndexWriter, SegmentAndWrite, committed_labels, done_keys, index_row_from_label, list_sources,
                       output_name, read_images, read_parts, remove_stale_temp_files)
from tcl.console import Progress, say


def run(job: BatchJob) -> dict:
    """Segment every input of `job` that is not done yet; returns the summary (also summary.json)."""
    import ray

    from tcl.ray.pools import actor_count, checkpoint_for_actors, consume, map_with_pool
    from tcl.ray.runtime import init
    from tcl.segment import SegmenterConfig, background_name, background_threshold, validate_texts

    s3 = storage.s3_options(job.s3_endpoint) if storage.is_s3(job.input) or storage.is_s3(job.output) else {}
    texts = validate_texts(list(dict.fromkeys(t.strip() for t in job.texts if t.strip())))
    settings = SegmenterConfig(**job.segmenter)
    threshold = background_threshold(settings.background_threshold, settings.pamr)
    class_names = ([background_name(texts)] if threshold is not None else []) + texts
    checkpoint = checkpoint_for_actors(job.checkpoint)
    output = job.output if storage.is_s3(job.output) else os.path.abspath(job.output)
    if not storage.is_s3(output):
        os.makedirs(output, exist_ok=True)
        if removed := remove_stale_temp_files(output):
            say(f"removed {removed} temp files of writes that were cut off")

    # the job's settings: a rerun into the same output must mean the same job
    settings_record = {"checkpoint": checkpoint, "input": job.input, "texts": texts, "classes": class_names, "segmenter": job.segmenter}
    job_uri = storage.join(output, "job.json")
    if storage.exists(job_uri, **s3):
        previous = json.loads(storage.read_bytes(job_uri, **s3))
        if {k: previous.get(k) for k in settings_record} != settings_record:
            raise ValueError(f"{output} holds a run with other settings ({job_uri}); use another output folder")
    else:
        storage.write_bytes_atomic(job_uri, json.dumps(settings_record, indent=2).encode(), **s3)

    sources, problems = list_sources(job.input, s3)
    done = done_keys(output, s3)
    writer = IndexWriter(output, class_names, job.index_every, s3)
    # images whose label PNG was written before a kill, but not their index row: done, their rows rebuilt
    committed = committed_labels(output, s3)
    recovered = [s for s in sources if s["key"] not in done and output_name(s["key"]) in committed]
    if recovered:
        writer.add_rows([index_row_from_label(s, output, class_names, s3) for s in recovered])
        done |= {s["key"] for s in recovered}
    new_problems = [p for p in problems if p["key"] not in done]
    if new_problems:
        writer.add_errors(new_problems)
    todo = [s for s in sources if s["key"] not in done]
    say(f"{len(sources) + len(problems)} inputs at {job.input}: {len(sources) - len(todo)} images done before"
        + (f" ({len(recovered)} of them found by their label PNGs)" if recovered else "")
        + f", {len(problems)} unusable (errors.jsonl), {len(todo)} to segment")
    start = time.perf_counter()
    timing = None
    if todo:
        init()
        actors, use_gpu = actor_count(job.actors)
        items = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // job.batch_size, 10 * actors)))
        decoded = items.map_batches(read_images, batch_size=job.batch_size, num_cpus=1,
                                    fn_kwargs=dict(image_column=job.image_column, s3=s3, max_pixels=job.max_pixels))
        segmented = map_with_pool(decoded, SegmentAndWrite, dict(checkpoint=checkpoint, texts=texts, output=output,
                                                                 overrides=job.segmenter, overlays=job.overlays, s3=s3),
                                  actors=actors, use_gpu=use_gpu, batch_size=job.batch_size, resources=job.resources_per_actor)
        timing = consume(segmented, lambda batch: len(batch["key"]), writer.add, Progress("segmenting", len(todo), "images"),
                         note=lambda: f"{writer.unreadable} unreadable")
        writer.flush()

    errors = read_parts(storage.join(output, "errors"), s3)
    storage.write_bytes_atomic(storage.join(output, "errors.jsonl"), "".join(json.dumps(e) + "\n" for e in errors).encode(), **s3)
    summary = {"images": len(sources), "segmented_now": writer.written - len(recovered), "recovered_from_labels": len(recovered),
               "unreadable_now": writer.failed, "done_before": len(sources) - len(todo), "unreadable_total": len(errors),
               "seconds": time.perf_counter() - start}
    if timing is not None:
        summary.update(startup_seconds=timing.startup_seconds, steady_images_per_second=timing.steady_items_per_second)
    storage.write_bytes_atomic(storage.join(output, "summary.json"), json.dumps(summary, indent=2).encode(), **s3)
    say(f"segmented {summary['segmented_now']}, unreadable {writer.failed} (listed in errors.jsonl), "
        f"{summary['done_before']} done before; index in {storage.join(output, 'index')}/")
    return summary

