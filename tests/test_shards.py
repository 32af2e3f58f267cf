"""Training shards: writer, Ray Data reader, transform, corrupt-image skipping, S3, and jobs/make_shards."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import tarfile
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import make_shards
from tcl import storage
from tcl import images
from tcl.data import shards
from tcl.ray.data import SkipCounter, training_dataset
from tcl.training import DataConfig, TrainConfig

# Distinct solid colours, so a decoded/cropped image tells which row it came from.
COLOURS = [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(64)]


def solid_png(i: int, size: int = 16) -> bytes:
    return images.encode_image(Image.new("RGB", (size, size + 4), COLOURS[i]), "PNG")


def caption(i: int) -> str:
    return f"row {i}"


def row_tokenizer(captions: list[str]) -> np.ndarray:
    """Token = row number, so the test can check image/text rows stay aligned after drops."""
    return np.array([[int(c.split()[1]) if c else -1, 0, 0] for c in captions], dtype=np.int32).reshape(-1, 3)


@pytest.fixture
def ray_session(ray_cluster):
    import ray

    return ray


def exact_transform(**kw) -> shards.ImageTextTransform:
    # scale = ratio = 1: the "random" crop is the whole image, so pixels are predictable.
    return shards.ImageTextTransform(row_tokenizer, image_size=8, scale=(1.0, 1.0), ratio=(1.0, 1.0), **kw)


def check_rows(images: np.ndarray, text: np.ndarray) -> None:
    """Every output image is the solid colour of the row its tokens name, as uint8 (normalised on the device)."""
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 8, 8)
    assert text.dtype == np.int64 and len(text) == len(images)
    for img, tok in zip(images, text):
        assert (img == np.array(COLOURS[tok[0]], np.uint8).reshape(3, 1, 1)).all()  # the row's solid colour


# --------------------------------------------------------------------------------------------------
# pure functions (no Ray)

def test_decode_image_reasons():
    img = images.decode_image(images.encode_image(Image.new("L", (5, 3), 7), "PNG"))
    assert img.mode == "RGB" and img.size == (5, 3)
    good = images.encode_image(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
    assert images.decode_image_with_reason(good)[1] is None
    cases = {None: "missing", b"": "empty", b"\x00garbage" * 10: "not an image", 5: "not bytes (int)"}
    for data, reason in cases.items():
        assert images.decode_image_with_reason(data) == (None, reason)
    image, reason = images.decode_image_with_reason(good[: len(good) // 2])
    assert image is None and reason.startswith("broken")


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for w, h in [(10, 10), (300, 20), (20, 300), (1, 1), (640, 480)]:
        for _ in range(50):
            left, top, right, bottom = shards.random_resized_crop_box(w, h, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_transform_drops_and_counts_corrupt_rows():
    class ListCounter:
        def __init__(self):
            self.calls = []

        def add(self, reasons):
            self.calls.append(reasons)

    counter = ListCounter()
    tf = exact_transform(skip_counter=counter)
    noise = images.encode_image(Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)))
    batch = {
        "image": np.array([solid_png(1), b"junk", solid_png(2), None, noise[: len(noise) // 2]], dtype=object),
        "caption": np.array([caption(1), caption(9), caption(2), caption(9), caption(3)], dtype=object),
    }
    out = tf(batch)
    assert out["text"][:, 0].tolist() == [1, 2]
    check_rows(out["image"], out["text"])
    assert counter.calls == [{"not an image": 1, "missing": 1, "broken": 1}]

    # A batch of only bad rows: empty but well-shaped output, and still counted.
    out = tf({"image": np.array([b""], dtype=object), "caption": np.array(["row 0"], dtype=object)})
    assert out["image"].shape == (0, 3, 8, 8) and out["text"].shape == (0, 3)
    assert counter.calls[-1] == {"empty": 1}


def test_transform_random_crop_and_real_tokenizer():
    tf = shards.ImageTextTransform("ViT-B-16", image_size=24, scale=(0.08, 1.0))
    big = images.encode_image(Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)), "PNG")
    out = tf({"image": np.array([big, big], dtype=object), "caption": np.array(["a red cube", "b"], dtype=object)})
    assert out["image"].shape == (2, 3, 24, 24) and out["image"].dtype == np.uint8
    assert out["text"].shape == (2, 77) and out["text"].dtype == np.int64
    assert not np.array_equal(out["image"][0], out["image"][1])  # two independent crops


def test_shard_writer_layout(tmp_path):
    paths = shards.write_shards(((solid_png(i), caption(i)) for i in range(10)), str(tmp_path),
                                rows_per_shard=4, row_group_size=2)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    meta = pq.ParquetFile(paths[0]).metadata
    assert meta.num_rows == 4 and meta.num_row_groups == 2
    table = pq.read_table(paths[2])
    assert table.schema.names == ["key", "jpg", "txt"] and table["txt"].to_pylist() == [caption(8), caption(9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.rsplit("/", 1)[1] for p in paths]  # no temp files


def test_the_training_stream_reads_the_configured_columns(tmp_path):
    """data.image_column / data.caption_column name columns that are not img2dataset's (checked
    against the schema); without them the defaults are looked for, and their absence is named."""
    from tcl.ray.data import list_row_groups

    pq.write_table(pa.table({"picture": [b"x", b"y", b"z"], "words": ["a", "b", "c"]}), tmp_path / "a.parquet", row_group_size=2)
    _, files, columns = list_row_groups(str(tmp_path), image_column="picture", caption_column="words")
    assert columns == ("picture", "words") and [(g.index, g.rows) for g in files[0]] == [(0, 2), (1, 1)]
    with pytest.raises(ValueError, match=r"no image column.*columns found: \['picture', 'words'\]"):
        list_row_groups(str(tmp_path))
    with pytest.raises(ValueError, match="caption column 'text' not found"):
        list_row_groups(str(tmp_path), image_column="picture", caption_column="text")


def test_missing_column_error_lists_columns(tmp_path):
    pq.write_table(pa.table({"jpg": [b"x"], "text": ["a"]}), tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=r"no caption column.*columns found: \['jpg', 'text'\]"):
        shards.resolve_columns(str(tmp_path))
    with pytest.raises(ValueError, match=r"image column 'img' not found.*\['jpg', 'text'\]"):
        shards.resolve_columns(str(tmp_path), image_column="img", caption_column="text")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet files under"):
        shards.find_shard_files(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="nothing at"):
        shards.find_shard_files(str(tmp_path / "nope"))


# --------------------------------------------------------------------------------------------------
# through Ray Data

def stream(uri: str, counter: SkipCounter | None = None, epochs: int = 1, **data):
    """The training stream (tcl.ray.data.training_dataset: what training reads) over `epochs` passes."""
    cfg = TrainConfig(data=DataConfig(shards=uri, image_size=8, **data))
    return training_dataset(cfg, row_tokenizer, counter, epochs=epochs)


def test_round_trip_through_ray(tmp_path, ray_session):
    n = 23
    shards.write_shards(((solid_png(i), caption(i)) for i in range(n)), str(tmp_path), rows_per_shard=5)
    batches = list(stream(str(tmp_path), epochs=2).iter_batches(batch_size=8, batch_format="numpy"))
    images, text = np.concatenate([b["image"] for b in batches]), np.concatenate([b["text"] for b in batches])
    assert sorted(text[:, 0].tolist()) == sorted(list(range(n)) * 2)  # every row once an epoch
    check_rows(images, text)
    # each row carries its row group's place in the stream: the plan's, with that group's row count
    from tcl.ray.data import list_row_groups, stream_items

    _, files, _ = list_row_groups(str(tmp_path))
    items, _ = stream_items(files, seed=0, rows_needed=n, epochs=2)
    rows = {(g.path, g.index): g.rows for groups in files for g in groups}
    expected = [rows[(item["path"], item["row_group"])] for item in items]
    assert np.bincount(np.concatenate([b["position"] for b in batches])).tolist() == expected


@pytest.mark.parametrize("caption_col", ["txt", "caption"])
def test_img2dataset_column_names(tmp_path, ray_session, caption_col):
    table = pa.table({
        "key": ["0", "1", "2"], "status": ["success"] * 3, "width": [16] * 3,
        "jpg": [solid_png(i) for i in range(3)], caption_col: [caption(i) for i in range(3)],
    })
    pq.write_table(table, tmp_path / "00000.parquet")
    batch = stream(str(tmp_path)).take_batch(10, batch_format="numpy")
    assert sorted(batch["text"][:, 0].tolist()) == [0, 1, 2]
    check_rows(batch["image"], batch["text"])


def test_corrupt_images_skipped_and_counted(tmp_path, ray_session):
    good = [(solid_png(i), caption(i)) for i in range(12)]
    jpeg = images.encode_image(Image.new("RGB", (32, 32), (9, 9, 9)), "JPEG")
    bad = [b"garbage" * 5, jpeg[: len(jpeg) // 3], b"", None, b"\x89PNG\r\n\x1a\n" + b"\x00" * 30]
    rows = good[:6] + [(b, caption(50)) for b in bad] + good[6:]
    table = pa.table({"jpg": pa.array([r[0] for r in rows], pa.binary()), "txt": [r[1] for r in rows]})
    pq.write_table(table, tmp_path / "shard-00000.parquet", row_group_size=4)
    # A second shard made only of corrupt rows: whole batches with nothing left must count too.
    pq.write_table(pa.table({"jpg": pa.array([b"x", b"y"], pa.binary()), "txt": ["a", "b"]}),
                   tmp_path / "shard-00001.parquet")

    counter = SkipCounter()
    out = stream(str(tmp_path), counter).take_all()
    assert sorted(int(r["text"][0]) for r in out) == list(range(12))
    assert counter.total() == len(bad) + 2
    assert counter.by_reason()["missing"] == 1
    counter.reset()
    assert counter.total() == 0


def test_s3_write_and_read_through_ray(s3_server, ray_session):
    prefix = storage.join(s3_server.create_bucket("tcl-shards"), "train", "v1")
    paths = shards.write_shards(((solid_png(i), caption(i)) for i in range(9)), prefix,
                                rows_per_shard=4, endpoint_url=s3_server.endpoint_url)
    assert paths[0] == "s3://tcl-shards/train/v1/shard-00000.parquet"
    assert s3_server.list_keys("tcl-shards") == [f"train/v1/shard-0000{i}.parquet" for i in range(3)]

    batch = stream(prefix, endpoint_url=s3_server.endpoint_url).take_batch(100, batch_format="numpy")
    assert sorted(batch["text"][:, 0].tolist()) == list(range(9))
    check_rows(batch["image"], batch["text"])


# --------------------------------------------------------------------------------------------------
# make_shards (no Ray needed: it writes with pyarrow, reading back is checked with pyarrow)

def read_back(uri: str, **kw) -> list[tuple[bytes, str]]:
    out = []
    for f in shards.find_shard_files(uri, **kw):
        fs, path = storage.resolve(f, **kw)
        t = pq.read_table(path, filesystem=fs)
        out += list(zip(t["jpg"].to_pylist(), t["txt"].to_pylist()))
    return out


def test_make_shards_from_folder_and_csv(tmp_path, capsys):
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(7):
        (images / f"{i}.png").write_bytes(solid_png(i))
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "text"])
        w.writerows([f"{i}.png", caption(i)] for i in range(8))  # 7.png does not exist
    out = tmp_path / "out"
    rc = make_shards.main(["--source", "folder", "--images", str(images), "--captions", str(tmp_path / "caps.csv"),
                           "--file-column", "path", "--caption-column", "text", "--output", str(out),
                           "--rows-per-shard", "3"])
    assert rc == 0
    assert sorted(read_back(str(out)), key=lambda r: r[1]) == [(solid_png(i), caption(i)) for i in range(7)]
    assert len(list(out.iterdir())) == 3
    assert "skipped 1" in capsys.readouterr().out

    # Existing shards are protected unless --overwrite.
    args = ["--source", "folder", "--images", str(images), "--captions", str(tmp_path / "caps.jsonl"),
            "--output", str(out)]
    (tmp_path / "caps.jsonl").write_text(json.dumps({"file_name": "0.png", "caption": "only"}) + "\n")
    assert make_shards.main(args) == 2
    assert make_shards.main(args + ["--overwrite"]) == 0
    assert read_back(str(out)) == [(solid_png(0), "only")]

    (tmp_path / "bad.csv").write_text("file,caption\n0.png,x\n")
    assert make_shards.main(["--source", "folder", "--images", str(images), "--captions", str(tmp_path / "bad.csv"),
                             "--output", str(tmp_path / "o2")]) == 1
    assert re.search(r"column 'file_name' not in captions file.*\['file', 'caption'\]", capsys.readouterr().err)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_make_shards_from_webdataset_tar_to_s3(tmp_path, s3_server):
    wds = tmp_path / "wds"
    wds.mkdir()
    for t in range(2):
        with tarfile.open(wds / f"{t:05d}.tar", "w") as tar:
            for i in range(t * 4, t * 4 + 4):
                add_member(tar, f"{i:09d}.jpg", solid_png(i))
                add_member(tar, f"{i:09d}.json", b"{}")
                if i != 5:  # sample 5 has no caption
                    add_member(tar, f"{i:09d}.txt", caption(i).encode())
    out = storage.join(s3_server.create_bucket("wds-out"), "shards")
    rc = make_shards.main(["--source", "webdataset", "--input", str(wds), "--output", out,
                           "--endpoint-url", s3_server.endpoint_url, "--verify"])
    assert rc == 0
    rows = read_back(out, endpoint_url=s3_server.endpoint_url)
    assert rows == [(solid_png(i), caption(i)) for i in range(8) if i != 5]


def test_make_shards_reshards_img2dataset_parquet(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for s in range(2):
        imgs = [solid_png(i) for i in range(s * 5, s * 5 + 5)]
        imgs[1] = None  # a failed download
        pq.write_table(pa.table({"key": [str(i) for i in range(5)], "jpg": pa.array(imgs, pa.binary()),
                                 "caption": [caption(i) for i in range(s * 5, s * 5 + 5)]}), src / f"{s:05d}.parquet")
    out = tmp_path / "out"
    assert make_shards.main(["--source", "parquet", "--input", str(src), "--output", str(out),
                             "--rows-per-shard", "100"]) == 0
    assert read_back(str(out)) == [(solid_png(i), caption(i)) for i in range(10) if i not in (1, 6)]
    assert len(list(out.iterdir())) == 1


def test_make_shards_synthetic(tmp_path, monkeypatch):
    calls = []

    def caption_pairs(count: int, seed: int, image_size: int, world):
        calls.append((count, seed, image_size, world))
        for i in range(count):
            yield Image.new("RGB", (image_size, image_size), COLOURS[i]), caption(i)

    fake = types.ModuleType("tcl.data.synthetic")
    fake.caption_pairs = caption_pairs
    fake.scene_config = lambda overrides: tuple(overrides)
    monkeypatch.setitem(sys.modules, "tcl.data.synthetic", fake)
    out = tmp_path / "synth"
    assert make_shards.main(["--source", "synthetic", "--count", "5", "--seed", "3", "--image-size", "12",
                             "--world", "max_shapes=2", "--output", str(out)]) == 0
    assert calls == [(5, 3, 12, ("max_shapes=2",))]
    rows = read_back(str(out))
    assert [c for _, c in rows] == [caption(i) for i in range(5)]
    img = images.decode_image(rows[2][0])
    assert img.size == (12, 12) and img.getpixel((0, 0)) == COLOURS[2]  # PNG: lossless


def test_make_shards_with_real_synthetic_module(tmp_path):
    synthetic = pytest.importorskip("tcl.data.synthetic")
    if not hasattr(synthetic, "caption_pairs"):
        pytest.skip("tcl.data.synthetic has no caption_pairs yet")
    out = tmp_path / "synth"
    assert make_shards.main(["--source", "synthetic", "--count", "6", "--seed", "0", "--image-size", "32",
                             "--output", str(out), "--verify"]) == 0
    rows = read_back(str(out))
    assert len(rows) == 6 and all(isinstance(c, str) and c for _, c in rows)
    assert images.decode_image(rows[0][0]).size == (32, 32)


def test_make_shards_help_mentions_examples(capsys):
    with pytest.raises(SystemExit):
        make_shards.parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--source synthetic" in text and "s3://" in text
    with pytest.raises(SystemExit):
        make_shards.parse_args(["--source", "folder", "--output", "x"])
    assert "needs --images and --captions" in capsys.readouterr().err


def test_file_order_reshuffled_per_epoch_and_reproducible(tmp_path):
    """The stream's plan: each epoch every row group once, in a file order of its own; the same
    seed gives the same sequence of orders, another seed another."""
    from tcl.ray.data import list_row_groups, stream_items

    shards.write_shards(((solid_png(i), caption(i)) for i in range(8)), str(tmp_path), rows_per_shard=1)
    _, files, _ = list_row_groups(str(tmp_path))

    def orders(seed: int) -> list[list[str]]:
        items, per_epoch = stream_items(files, seed=seed, rows_needed=8, epochs=3)
        assert per_epoch == 8 and [item["position"] for item in items] == list(range(24))
        return [[item["path"] for item in items if item["epoch"] == e] for e in range(3)]

    first = orders(7)
    assert sorted(first[0]) == sorted(first[1]) == sorted(first[2]) and len(set(first[0])) == 8
    assert len({tuple(order) for order in first}) == 3  # a new order each epoch (8! orders: a clash is ~0 probability)
    assert orders(7) == first and orders(8) != first
