"""Batch segmentation without Ray: what a job over an image collection needs besides the
distribution (tcl.ray.batch runs these pieces on Ray Data and an actor pool).

Output layout (local or s3://):
    labels/<name>.png     palette PNG, pixel value = class index (classes in job.json)
    overlays/<name>.png   with overlays on
    index/part-*.parquet  key, source, label_path, width, height, fraction/<class> per class
    errors/part-*.parquet key, source, reason for inputs that could not be segmented
    errors.jsonl, job.json, summary.json
Output names come from the source keys, made safe (no path leaves the output folder) and unique
(a short hash of the key). Every file is written atomically; a label PNG is written last for its
image, so its presence means the image is done.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import io
import os
import re
import time

import numpy as np

from tcl import storage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IMAGE_COLUMNS = ("image", "jpg", "png", "webp")


@dataclasses.dataclass
class BatchJob:
    """A batch segmentation job: what to segment into which texts, and where the results go."""

    checkpoint: str  # checkpoint directory or run folder, local or s3://
    input: str  # folder, glob, s3:// prefix, or Parquet shards
    texts: list[str]
    output: str
    image_column: str | None = None  # Parquet input: default image, jpg, png or webp
    segmenter: dict = dataclasses.field(default_factory=dict)  # SegmenterConfig overrides
    overlays: bool = False
    actors: int | None = None  # default: one per GPU, else 2
    resources_per_actor: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 8  # images per actor call
    index_every: int = 1000  # index rows per Parquet part
    max_pixels: int = 64 * 2**20
    s3_endpoint: str | None = None


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
    fixed = parts[: next(i for i, p in enumerate(parts) if glob.has_magic(p))]
    return os.sep.join(fixed) or "."


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob relative to its base as a regex over '/'-separated paths: `**/` any folders (or
    none), `*` and `?` within one name, [...] as in glob."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1:end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def walk_images(root: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """Image files under a local folder, by suffix, hidden names included: ([(key, path)], problems).
    Symbolic links are followed and resolved, so each real file is listed once (under the first
    key in sorted order) and a link back to a folder being walked is not entered again; links
    to nothing, loops and folders with an image's name are problems: {key, source, reason}."""
    found, problems, seen_files = [], [], set()

    def visit(folder: str, prefix: str, ancestors: frozenset) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as error:
            problems.append({"key": prefix.rstrip("/") or ".", "source": folder, "reason": f"unreadable folder: {error}"})
            return
        for entry in entries:
            key, path = prefix + entry.name, entry.path
            image_name = entry.name.lower().endswith(IMAGE_SUFFIXES)
            if entry.is_symlink() and not os.path.exists(path):
                if image_name:
                    problems.append({"key": key, "source": path, "reason": f"a symbolic link to nothing ({os.readlink(path)})"})
                continue
            if entry.is_dir():
                real = os.path.realpath(path)
                if real in ancestors:
                    problems.append({"key": key, "source": path, "reason": f"a symbolic link loop: it leads back to {real}"})
                elif image_name:
                    problems.append({"key": key, "source": path, "reason": "a folder, not an image file"})
                else:
                    visit(path, key + "/", ancestors | {real})
            elif image_name and entry.is_file():
                real = os.path.realpath(path)
                if real not in seen_files:
                    seen_files.add(real)
                    found.append((key, os.path.abspath(path)))

    root = os.path.abspath(root)
    visit(root, "", frozenset({os.path.realpath(root)}))
    return found, problems


def list_sources(uri: str, s3: dict) -> tuple[list[dict], list[dict]]:
    """([{key, source, row}], problems): an image file (row -1) or row `row` of a Parquet file, and
    the inputs that cannot be sources ({key, source, reason}: broken links, loops, ...)."""
    if not storage.is_s3(uri) and glob.has_magic(uri):
        base = _glob_base(uri)
        pattern = _glob_regex(os.path.relpath(uri, base).replace(os.sep, "/"))
        files, problems = walk_images(base)
        keep = [(key, path) for key, path in files if pattern.match(key)]
        return ([{"key": key, "source": path, "row": -1} for key, path in keep],
                [p for p in problems if pattern.match(p["key"])])
    if not storage.is_s3(uri) and os.path.isdir(uri) and not storage.list_files(uri, (".parquet",)):
        files, problems = walk_images(uri)
        return [{"key": key, "source": path, "row": -1} for key, path in files], problems
    parquet = storage.list_files(uri, (".parquet",), **s3)
    if parquet:
        import pyarrow.parquet as pq

        sources = []
        for file in parquet:
            fs, path = storage.resolve(file, **s3)
            rows = pq.ParquetFile(path, filesystem=fs).metadata.num_rows
            stem = os.path.splitext(_relative(file, uri))[0]
            sources += [{"key": f"{stem}/{row:07d}", "source": file, "row": row} for row in range(rows)]
        return sources, []
    files = storage.list_files(uri, IMAGE_SUFFIXES, hidden=True, **s3)
    return [{"key": _relative(f, uri), "source": f, "row": -1} for f in files], []


def _relative(file: str, root: str) -> str:
    root = root.rstrip("/")
    return file[len(root) + 1:] if file.startswith(root + "/") else os.path.basename(file)


# --------------------------------------------------------------------------------------------------
# the two stages: read + decode (CPU tasks), segment + write (Segmenter actors)

def read_images(batch: dict[str, np.ndarray], image_column: str | None, s3: dict, max_pixels: int) -> dict[str, np.ndarray]:
    """Sources -> decoded uint8 [H, W, 3] images, or an empty one and the reason it failed."""
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

    from tcl.data.shards import pick_column

    fs, path = storage.resolve(file, **s3)
    names = pq.ParquetFile(path, filesystem=fs).schema_arrow.names
    column = pick_column(names, image_column, IMAGE_COLUMNS, "image", file)
    return pq.read_table(path, columns=[column], filesystem=fs).column(column).to_pylist()


class SegmentAndWrite:
    """One Segmenter: decoded images -> label PNGs (and overlays) written atomically, and their
    index rows. The map_batches callable of the actor pool."""

    def __init__(self, checkpoint: str, texts: list[str], output: str, overrides: dict, overlays: bool, s3: dict):
        from tcl.segment import Segmenter

        self.segmenter = Segmenter.from_checkpoint(checkpoint, **overrides)
        self.texts, self.output, self.overlays, self.s3 = texts, output, overlays, s3

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from tcl.encoding import pixel_fractions
        from tcl.images import encode_image
        from tcl.visualize import label_png, overlay_with_legend

        good = [i for i, error in enumerate(batch["error"]) if not error]
        results = dict(zip(good, self.segmenter.segment([batch["image"][i] for i in good], self.texts, with_probabilities=False)))
        names = len(self.segmenter.class_names(self.texts))
        paths, sizes, fractions = [], [], np.full((len(batch["key"]), names), np.nan, np.float64)
        for i, key in enumerate(batch["key"]):
            if i not in results:
                paths.append("")
                sizes.append((0, 0))
                continue
            result, name = results[i], output_name(str(key))
            if self.overlays:  # before the label PNG, which marks the image done
                from PIL import Image

                overlay = overlay_with_legend(Image.fromarray(batch["image"][i]), result.labels, result.class_names, title=str(key)[:60])
                storage.write_bytes_atomic(storage.join(self.output, "overlays", name + ".png"), encode_image(overlay), **self.s3)
            label_path = storage.join(self.output, "labels", name + ".png")
            storage.write_bytes_atomic(label_path, encode_image(label_png(result.labels, result.class_names)), **self.s3)
            paths.append(label_path)
            sizes.append(result.labels.shape)
            fractions[i] = list(pixel_fractions(result.labels, result.class_names).values())
        return {"key": batch["key"], "source": batch["source"], "error": batch["error"], "label_path": np.array(paths, dtype=object),
                "height": np.array([s[0] for s in sizes]), "width": np.array([s[1] for s in sizes]), "fractions": fractions}


# --------------------------------------------------------------------------------------------------
# the index: what is done

def write_parquet(uri: str, columns: dict, s3: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(columns), sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), **s3)


def read_parts(folder: str, s3: dict) -> list[dict]:
    import pyarrow.parquet as pq

    if not storage.exists(folder, **s3):
        return []
    rows = []
    for file in storage.list_files(folder, (".parquet",), **s3):
        fs, path = storage.resolve(file, **s3)
        rows += pq.read_table(path, filesystem=fs).to_pylist()
    return rows


def done_keys(output: str, s3: dict) -> set[str]:
    """Keys the index or the errors record."""
    return {r["key"] for part in ("index", "errors") for r in read_parts(storage.join(output, part), s3)}


def committed_labels(output: str, s3: dict) -> set[str]:
    """Output names (labels/<name>.png) whose label PNG is written: those images are done, whether
    or not the index recorded them before a kill (the label PNG is each image's last write)."""
    folder = storage.join(output, "labels")
    if not storage.exists(folder, **s3):
        return set()
    prefix = folder.rstrip("/") + "/"
    return {f[len(prefix):-len(".png")] for f in storage.list_files(folder, (".png",), hidden=True, **s3) if f.startswith(prefix)}


def index_row_from_label(source: dict, output: str, class_names: list[str], s3: dict) -> dict:
    """The index row of an image from its committed label PNG (for images done before a kill)."""
    from PIL import Image

    from tcl.encoding import pixel_fractions

    label_path = storage.join(output, "labels", output_name(source["key"]) + ".png")
    with Image.open(io.BytesIO(storage.read_bytes(label_path, **s3))) as image:
        labels = np.asarray(image)
    row = {"key": source["key"], "source": str(source["source"]), "label_path": label_path,
           "width": int(labels.shape[1]), "height": int(labels.shape[0])}
    row.update({f"fraction/{name}": value for name, value in pixel_fractions(labels, class_names).items()})
    return row


def remove_stale_temp_files(output: str) -> int:
    """Hidden temp files left by a write that was killed midway (local outputs; S3 writes are
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

    @property
    def seen(self) -> int:
        return self.written + self.failed + len(self.rows) + len(self.errors)

    @property
    def unreadable(self) -> int:
        return self.failed + len(self.errors)

    def add_rows(self, rows: list[dict]) -> None:
        self.rows += rows
        self.flush()

    def add_errors(self, errors: list[dict]) -> None:
        self.errors += errors
        self.flush()

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
        name = f"part-{self.run}-{self.parts:05d}.parquet"
        for folder, rows in (("index", self.rows), ("errors", self.errors)):
            if rows:
                write_parquet(storage.join(self.output, folder, name), {k: [r[k] for r in rows] for k in rows[0]}, self.s3)
        self.written += len(self.rows)
        self.failed += len(self.errors)
        self.parts += 1
        self.rows, self.errors = [], []

