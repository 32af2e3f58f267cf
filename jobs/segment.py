"""Segment a large image collection offline, as a Ray job: CPU tasks read and decode, an actor
pool of Segmenters (one per GPU where there are GPUs) segments, and each image gets a label PNG
(and optionally an overlay) plus a row in Parquet index files.

    ray job submit --working-dir . -- python jobs/segment.py --checkpoint s3://bucket/runs/my-run \\
        --input s3://bucket/photos/ --texts "a dog,a cat,grass,sky" --output s3://bucket/masks/
    python jobs/segment.py --checkpoint outputs/pipeline/runs/synthetic-tcl --input 'photos/**/*.jpg' \\
        --texts "a red star,grass,sky" --output outputs/masks --overlays

--input: a local folder, a glob, an s3:// prefix (image files by suffix), or Parquet shards (a
.parquet file, or a folder/prefix holding them) with an encoded image column.
--output (local or s3://) receives
    labels/<name>.png     palette PNG, pixel value = class index (classes in job.json)
    overlays/<name>.png   with --overlays
    index/part-*.parquet  key, source, label_path, width, height, fraction/<class> per class
    errors/part-*.parquet key, source, reason for images that could not be read
    errors.jsonl, job.json, summary.json
Output names come from the source keys, made safe (no path leaves the output folder) and unique
(a short hash of the key). Every file is written atomically. Rerunning the same command after a
kill processes only the images that are in neither the index nor the errors: nothing twice.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jobs.common import add_segmenter_arguments, segmenter_overrides  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="TCL checkpoint directory or run folder, local or s3://")
    p.add_argument("--input", required=True, help="folder, glob, s3:// prefix, or Parquet shards")
    p.add_argument("--texts", required=True, help="comma-separated texts, e.g. 'a dog,grass,sky'")
    p.add_argument("--output", required=True, help="output folder, local or s3://")
    p.add_argument("--image-column", default=None, help="Parquet image column (default: image, jpg, png or webp)")
    p.add_argument("--background-threshold", default="0.4", help="score below which a pixel is background; 'none': every pixel gets a text")
    p.add_argument("--no-pamr", action="store_true", help="skip PAMR refinement (use threshold 0.5 for the protocol's setting)")
    p.add_argument("--overlays", action="store_true", help="also write an overlay PNG with legend per image")
    add_segmenter_arguments(p)
    p.add_argument("--actors", type=int, default=None, help="Segmenter actors (default: one per GPU, else 2 on CPU)")
    p.add_argument("--resources-per-actor", type=json.loads, default={},
                   help='extra Ray resources per actor, JSON, e.g. \'{"node_slot": 1}\' to place one per node')
    p.add_argument("--batch-size", type=int, default=8, help="images per actor call (default: %(default)s)")
    p.add_argument("--index-every", type=int, default=1000, help="index rows per Parquet part (default: %(default)s)")
    p.add_argument("--max-pixels", type=int, default=64 * 2**20, help="larger images go to the errors (default: %(default)s)")
    p.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL)")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for a local Ray instance")
    return p.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# names and sources

def output_name(key: str) -> str:
    """A safe relative file stem for a source key: path parts kept where harmless ('..', '.', empty
    and odd characters dropped or replaced), plus a hash of the whole key so two keys never share
    an output."""
    parts = [re.sub(r"[^A-Za-z0-9._-]", "_", part) for part in key.replace("\\", "/").split("/")]
    parts = [part.lstrip(".") for part in parts if part not in ("", ".", "..")]
    stem = "/".join(p for p in parts if p)
    stem = os.path.splitext(stem)[0][:150] or "image"
    return f"{stem}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _glob_base(pattern: str) -> str:
    parts = pattern.split(os.sep)
    fixed = [p for p in parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]]
    return os.sep.join(fixed) or "."


def list_sources(uri: str, s3: dict) -> list[dict]:
    """[{key, source, row}]: an image file (row -1) or row `row` of a Parquet file."""
    from tcl import storage

    if not storage.is_s3(uri) and glob.has_magic(uri):
        base = _glob_base(uri)
        files = sorted(f for f in glob.glob(uri, recursive=True) if os.path.isfile(f))
        return [{"key": os.path.relpath(f, base), "source": os.path.abspath(f), "row": -1} for f in files]
    parquet = storage.list_files(uri, (".parquet",), **s3)
    if parquet:
        import pyarrow.parquet as pq

        sources = []
        for file in parquet:
            fs, path = storage.resolve(file, **s3)
            rows = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
            stem = os.path.splitext(_relative(file, uri))[0]
            sources += [{"key": f"{stem}/{row:07d}", "source": file, "row": row} for row in range(rows)]
        return sources
    files = storage.list_files(uri, IMAGE_SUFFIXES, **s3)
    return [{"key": _relative(f, uri), "source": f, "row": -1} for f in files]


def _relative(file: str, root: str) -> str:
    root = root.rstrip("/")
    return file[len(root) + 1:] if file.startswith(root + "/") else os.path.basename(file)


# --------------------------------------------------------------------------------------------------
# Ray Data stages

def read_images(batch: dict[str, np.ndarray], image_column: str | None, s3: dict, max_pixels: int) -> dict[str, np.ndarray]:
    """CPU task: source -> decoded uint8 [H, W, 3] image, or an empty one and the reason it failed."""
    from tcl import storage
    from tcl.images import decode_image_with_reason

    tables: dict[str, list] = {}
    images, errors = [], []
    for source, row in zip(batch["source"], batch["row"]):
        try:
            if row < 0:
                data = storage.read_bytes(str(source), **s3)
            else:
                if source not in tables:
                    tables[source] = _image_column_values(str(source), image_column, s3)
                data = tables[source][int(row)]
            image, reason = decode_image_with_reason(data, max_pixels=max_pixels)
        except Exception as error:  # noqa: BLE001 - unreadable source: counted, never fatal
            image, reason = None, f"unreadable: {type(error).__name__}: {error}"
        images.append(np.asarray(image) if image is not None else np.zeros((0, 0, 3), np.uint8))
        errors.append(reason or "")
    return {**batch, "image": np.array(images + [None], dtype=object)[:-1], "error": np.array(errors, dtype=object)}


def _image_column_values(file: str, image_column: str | None, s3: dict) -> list:
    import pyarrow.parquet as pq

    from tcl import storage
    from tcl.data.shards import _pick_column

    fs, path = storage.resolve(file, **s3)
    names = pq.ParquetFile(path, filesystem=fs).schema_arrow.names
    column = _pick_column(names, image_column, ("image", "jpg", "png", "webp"), "image", file)
    return pq.read_table(path, columns=[column], filesystem=fs).column(column).to_pylist()


class SegmentActor:
    """One Segmenter per actor: decoded images -> label PNGs (and overlays) written atomically, and
    their index rows."""

    def __init__(self, checkpoint: str, texts: list[str], output: str, overrides: dict, overlays: bool, s3: dict):
        from tcl.segment import Segmenter

        self.segmenter = Segmenter.from_checkpoint(checkpoint, **overrides)
        self.texts, self.output, self.overlays, self.s3 = texts, output, overlays, s3

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tcl import storage
        from tcl.images import encode_image
        from tcl.encoding import pixel_fractions
        from tcl.visualize import label_png, overlay_with_legend

        good = [i for i, error in enumerate(batch["error"]) if not error]
        results = dict(zip(good, self.segmenter.segment([batch["image"][i] for i in good], self.texts, with_probabilities=False)))
        names = len(self.texts) + (1 if self.segmenter.config.background_threshold is not None else 0)
        paths, sizes, fractions = [], [], np.full((len(batch["key"]), names), np.nan, np.float64)
        for i, key in enumerate(batch["key"]):
            if i not in results:
                paths.append("")
                sizes.append((0, 0))
                continue
            result, name = results[i], output_name(str(key))
            label_path = storage.join(self.output, "labels", name + ".png")
            storage.write_bytes_atomic(label_path, encode_image(label_png(result.labels, result.class_names)), **self.s3)
            if self.overlays:
                from PIL import Image

                overlay = overlay_with_legend(Image.fromarray(batch["image"][i]), result.labels, result.class_names, title=str(key)[:60])
                storage.write_bytes_atomic(storage.join(self.output, "overlays", name + ".png"), encode_image(overlay), **self.s3)
            paths.append(label_path)
            sizes.append(result.labels.shape)
            fractions[i] = list(pixel_fractions(result.labels, result.class_names).values())
        return {"key": batch["key"], "source": batch["source"], "error": batch["error"], "label_path": np.array(paths, dtype=object),
                "height": np.array([s[0] for s in sizes]), "width": np.array([s[1] for s in sizes]), "fractions": fractions}


# --------------------------------------------------------------------------------------------------
# the index: what is done

def _write_parquet(uri: str, columns: dict, s3: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tcl import storage

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), **s3)


def _read_parts(folder: str, s3: dict) -> list[dict]:
    import pyarrow.parquet as pq

    from tcl import storage

    if not storage.exists(folder, **s3):
        return []
    rows = []
    for file in storage.list_files(folder, (".parquet",), **s3):
        fs, path = storage.resolve(file, **s3)
        rows += pq.read_table(path, filesystem=fs).to_pylist()
    return rows


def done_keys(output: str, s3: dict) -> set[str]:
    from tcl import storage

    return {r["key"] for part in ("index", "errors") for r in _read_parts(storage.join(output, part), s3)}


def remove_stale_temp_files(output: str) -> int:
    """Hidden temp files left by a write that was killed mid-way (local outputs; S3 writes are
    atomic by themselves)."""
    count = 0
    for path in glob.glob(os.path.join(output, "**", ".*.tmp"), recursive=True):
        os.unlink(path)
        count += 1
    return count


class IndexWriter:
    """Buffers result rows; writes index and error parts of `every` rows, each atomically."""

    def __init__(self, output: str, class_names: list[str], every: int, s3: dict):
        self.output, self.class_names, self.every, self.s3 = output, class_names, every, s3
        self.run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.parts, self.rows, self.errors = 0, [], []
        self.written = self.failed = 0

    def add(self, batch: dict[str, np.ndarray]) -> None:
        for i, key in enumerate(batch["key"]):
            if batch["error"][i]:
                self.errors.append({"key": str(key), "source": str(batch["source"][i]), "reason": str(batch["error"][i])})
            else:
                row = {"key": str(key), "source": str(batch["source"][i]), "label_path": str(batch["label_path"][i]),
                       "width": int(batch["width"][i]), "height": int(batch["height"][i])}
                row.update({f"fraction/{name}": float(f) for name, f in zip(self.class_names, batch["fractions"][i])})
                self.rows.append(row)
        if len(self.rows) + len(self.errors) >= self.every:
            self.flush()

    def flush(self) -> None:
        from tcl import storage

        name = f"part-{self.run}-{self.parts:05d}.parquet"
        for folder, rows in (("index", self.rows), ("errors", self.errors)):
            if rows:
                _write_parquet(storage.join(self.output, folder, name), {k: [r[k] for r in rows] for k in rows[0]}, self.s3)
        self.written += len(self.rows)
        self.failed += len(self.errors)
        self.parts += 1
        self.rows, self.errors = [], []


# --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from jobs.train import init_ray

    from tcl import storage
    from tcl.checkpoint import checkpoint_for_workers
    from tcl.segment import validate_texts

    s3 = storage.s3_options(args.s3_endpoint) if storage.is_s3(args.input) or storage.is_s3(args.output) else {}
    texts = list(dict.fromkeys(t.strip() for t in args.texts.split(",") if t.strip()))
    try:
        validate_texts(texts)
    except ValueError as error:
        raise SystemExit(f"--texts: {error}") from None
    threshold = None if args.background_threshold.lower() == "none" else float(args.background_threshold)
    class_names = (["background"] if threshold is not None else []) + texts
    overrides = {**segmenter_overrides(args), "background_threshold": threshold, "pamr": not args.no_pamr}
    try:
        args.checkpoint = checkpoint_for_workers(args.checkpoint)
    except FileNotFoundError as error:
        raise SystemExit(f"--checkpoint: {error}") from None
    if not storage.is_s3(args.output):
        args.output = os.path.abspath(args.output)
        os.makedirs(args.output, exist_ok=True)
        if removed := remove_stale_temp_files(args.output):
            print(f"removed {removed} temp files of writes that were cut off")

    # the job's settings: a rerun into the same output must mean the same job
    job = {"checkpoint": args.checkpoint, "input": args.input, "texts": texts, "classes": class_names, "segmenter": overrides}
    job_uri = storage.join(args.output, "job.json")
    if storage.exists(job_uri, **s3):
        previous = json.loads(storage.read_bytes(job_uri, **s3))
        if {k: previous.get(k) for k in job} != job:
            raise SystemExit(f"{args.output} holds a run with other settings ({job_uri}); use another --output")
    else:
        storage.write_bytes_atomic(job_uri, json.dumps(job, indent=2).encode(), **s3)

    try:
        sources = list_sources(args.input, s3)
    except FileNotFoundError as error:
        raise SystemExit(f"--input: {error}") from None
    done = done_keys(args.output, s3)
    todo = [s for s in sources if s["key"] not in done]
    print(f"{len(sources)} images at {args.input}: {len(sources) - len(todo)} already done, {len(todo)} to segment", flush=True)

    writer = IndexWriter(args.output, class_names, args.index_every, s3)
    start = time.perf_counter()
    if todo:
        init_ray(argparse.Namespace(ray_address=args.ray_address, num_cpus=args.num_cpus))
        import ray

        gpus = int(ray.cluster_resources().get("GPU", 0))
        actors = args.actors or (gpus if gpus else 2)
        items = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // args.batch_size, 10 * actors)))
        decoded = items.map_batches(read_images, batch_size=args.batch_size, num_cpus=1,
                                    fn_kwargs=dict(image_column=args.image_column, s3=s3, max_pixels=args.max_pixels))
        segmented = decoded.map_batches(
            SegmentActor, batch_size=args.batch_size, compute=ray.data.ActorPoolStrategy(size=actors), num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1,
            resources=args.resources_per_actor or None,
            fn_constructor_kwargs=dict(checkpoint=args.checkpoint, texts=texts, output=args.output, overrides=overrides,
                                       overlays=args.overlays, s3=s3))
        last, first = 0.0, None
        for batch in segmented.iter_batches(batch_format="numpy", batch_size=None):
            if first is None:  # startup (Ray Data planning, actors loading the model) ends here
                first, first_count = time.perf_counter(), len(batch["key"])
            writer.add(batch)
            seen = writer.written + writer.failed + len(writer.rows) + len(writer.errors)
            if time.perf_counter() - last > 10 or seen == len(todo):
                last = time.perf_counter()
                print(f"  {seen}/{len(todo)} images, {writer.failed + len(writer.errors)} unreadable, "
                      f"{seen / (last - start):.1f} images/s", flush=True)
        writer.flush()

    errors = _read_parts(storage.join(args.output, "errors"), s3)
    storage.write_bytes_atomic(storage.join(args.output, "errors.jsonl"), "".join(json.dumps(e) + "\n" for e in errors).encode(), **s3)
    end = time.perf_counter()
    summary = {"images": len(sources), "segmented_now": writer.written, "unreadable_now": writer.failed,
               "done_before": len(sources) - len(todo), "unreadable_total": len(errors), "seconds": end - start}
    if todo and len(todo) > first_count:
        summary.update(startup_seconds=first - start, steady_images_per_second=(len(todo) - first_count) / (end - first))
    storage.write_bytes_atomic(storage.join(args.output, "summary.json"), json.dumps(summary, indent=2).encode(), **s3)
    print(f"segmented {writer.written}, unreadable {writer.failed} (listed in errors.jsonl), "
          f"{summary['done_before']} done before; index in {storage.join(args.output, 'index')}/")
    return summary


if __name__ == "__main__":
    main()
