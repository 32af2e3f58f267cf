"""jobs/segment.py: labels equal direct Segmenter calls, corrupt images listed, safe names, a kill
midway then a rerun that completes with nothing twice, and S3 in and out."""
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import segment as segment_job
from tcl import storage
from tcl.batch import list_sources, output_name, walk_images
from tcl.data.shards import ShardWriter
from tcl.images import encode_image
from tcl.segment import Segmenter
from tests.helpers import save_trained_looking_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = ["--short-side", "32", "--window", "32", "--stride", "16"]
TEXTS = "a red star,grass,sky"


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(24, 48, 2))
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_trained_looking_checkpoint(str(tmp_path_factory.mktemp("segment-job") / "ckpt"), seed=11)


def read_index(output: str) -> list[dict]:
    if not os.path.isdir(os.path.join(output, "index")):
        return []
    return [row for f in sorted(os.listdir(os.path.join(output, "index")))
            for row in pq.read_table(os.path.join(output, "index", f)).to_pylist()]


def test_output_names_stay_inside_the_output_folder_and_are_unique():
    keys = ["../../etc/passwd", "a/./b.png", "a/b.png", "a/b.jpg", "/abs/x.png", "sp ace/ü.png", "..", "a\\..\\..\\c.png"]
    names = [output_name(k) for k in keys]
    assert len(set(names)) == len(keys)
    for name in names:
        assert not name.startswith("/") and ".." not in name.split("/")
        assert os.path.normpath(os.path.join("/out", name)).startswith("/out/")
        assert all(c.isalnum() or c in "._-/" for c in name)
    assert names[1].startswith("a/b-") and names[2].startswith("a/b-")  # readable where the key is


def test_folder_with_corrupt_images(ray_cluster, checkpoint, tmp_path):
    images = {f"sub/img{i}.png": picture(i) for i in range(5)} | {"top.jpg": picture(9)}
    for key, image in images.items():
        os.makedirs(os.path.dirname(tmp_path / "in" / key), exist_ok=True)
        image.save(tmp_path / "in" / key, quality=95)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "in" / "sub" / "truncated.jpg").write_bytes(encode_image(picture(7), "JPEG")[:300])
    summary = segment_job.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "in"), "--texts", TEXTS,
                                "--output", str(tmp_path / "out"), "--actors", "2", "--batch-size", "2", "--overlays", *PROTOCOL])
    assert summary["images"] == 8 and summary["segmented_now"] == 6 and summary["unreadable_now"] == 2

    direct = Segmenter.from_checkpoint(checkpoint, short_side=32, window=32, stride=16)
    index = {row["key"]: row for row in read_index(str(tmp_path / "out"))}
    assert sorted(index) == sorted(images)
    for key, row in index.items():
        with Image.open(os.path.join(tmp_path / "in", key)) as source:
            [expected] = direct.segment(source.convert("RGB"), TEXTS.split(","))
        with Image.open(row["label_path"]) as label_map:
            assert np.array_equal(np.asarray(label_map), expected.labels)
        assert row["label_path"].startswith(str(tmp_path / "out" / "labels") + "/")
        assert (row["width"], row["height"]) == (expected.labels.shape[1], expected.labels.shape[0])
        for i, name in enumerate(["background", *TEXTS.split(",")]):
            assert row[f"fraction/{name}"] == pytest.approx(np.mean(expected.labels == i))
        assert os.path.isfile(tmp_path / "out" / "overlays" / (output_name(key) + ".png"))
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in errors) == ["broken.png", "sub/truncated.jpg"]
    assert all(e["reason"] for e in errors)

    again = segment_job.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "in"), "--texts", TEXTS,
                              "--output", str(tmp_path / "out"), *PROTOCOL])
    assert again["segmented_now"] == 0 and again["done_before"] == 8  # idempotent
    with pytest.raises(SystemExit, match="other settings"):
        segment_job.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "in"), "--texts", "dog",
                          "--output", str(tmp_path / "out"), *PROTOCOL])


def test_killed_midway_then_rerun_completes_without_duplicates(ray_cluster, checkpoint, tmp_path):
    import ray

    with ShardWriter(str(tmp_path / "shards"), rows_per_shard=20) as writer:  # Parquet input this time
        for i in range(60):
            writer.write(encode_image(picture(100 + i)), f"caption {i}")
    # the default --index-every (1000): a kill loses the index rows not yet written, not the work
    command = [sys.executable, os.path.join(REPO, "jobs", "segment.py"), "--checkpoint", checkpoint,
               "--input", str(tmp_path / "shards"), "--texts", TEXTS, "--output", str(tmp_path / "out"),
               "--actors", "1", "--batch-size", "2", *PROTOCOL, "--ray-address", ray.get_runtime_context().gcs_address]
    job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    labels = tmp_path / "out" / "labels"

    def committed() -> int:
        return sum(1 for _, _, files in os.walk(labels) for f in files if f.endswith(".png")) if labels.is_dir() else 0

    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None and committed() < 10:
        time.sleep(0.1)
    assert job.poll() is None, "the job ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    done = committed()
    assert 10 <= done < 60 and read_index(str(tmp_path / "out")) == []  # done images, no index rows yet

    summary = segment_job.main(["--checkpoint", checkpoint, "--input", str(tmp_path / "shards"), "--texts", TEXTS,
                                "--output", str(tmp_path / "out"), "--actors", "1", "--batch-size", "4", *PROTOCOL])
    assert summary["recovered_from_labels"] == summary["done_before"] == done  # found by their label PNGs
    assert summary["segmented_now"] == 60 - done  # only what had no committed output
    keys = [row["key"] for row in read_index(str(tmp_path / "out"))]
    assert len(keys) == len(set(keys)) == 60
    labels = sorted(os.listdir(tmp_path / "out" / "labels" / "shard-00000")) + sorted(os.listdir(tmp_path / "out" / "labels" / "shard-00001"))
    assert len(os.listdir(tmp_path / "out" / "labels")) == 3 and len(labels) == 40  # one PNG per image, no extra files
    for root, _, files in os.walk(tmp_path / "out"):
        for name in files:
            assert not name.endswith(".tmp"), f"partial file left: {root}/{name}"
            if name.endswith(".png"):
                with Image.open(os.path.join(root, name)) as image:
                    image.load()  # complete


def test_s3_input_and_output(ray_cluster, checkpoint, s3_server):
    bucket = s3_server.create_bucket("segment-job")
    for i in range(4):
        storage.write_bytes_atomic(storage.join(bucket, "photos", f"p{i}.png"), encode_image(picture(200 + i)))
    storage.write_bytes_atomic(storage.join(bucket, "photos", "bad.jpg"), b"nope")
    output = storage.join(bucket, "masks")
    summary = segment_job.main(["--checkpoint", checkpoint, "--input", storage.join(bucket, "photos"), "--texts", TEXTS,
                                "--output", output, "--actors", "1", *PROTOCOL])
    assert summary["segmented_now"] == 4 and summary["unreadable_now"] == 1
    keys = s3_server.list_keys("segment-job", "masks/")
    assert sum(k.startswith("masks/labels/") for k in keys) == 4 and "masks/errors.jsonl" in keys
    direct = Segmenter.from_checkpoint(checkpoint, short_side=32, window=32, stride=16)
    [expected] = direct.segment(picture(202), TEXTS.split(","))
    label = storage.read_bytes(storage.join(output, "labels", output_name("p2.png") + ".png"))
    with Image.open(io.BytesIO(label)) as label_map:
        assert np.array_equal(np.asarray(label_map), expected.labels)


def test_segmenter_flags_name_the_protocol_defaults_and_override_only_what_is_given():
    import argparse
    import dataclasses
    import re

    from tcl.cli import SEGMENTER_FLAGS, add_segmenter_arguments, segmenter_overrides
    from tcl.segment import SegmenterConfig

    parser = argparse.ArgumentParser()
    add_segmenter_arguments(parser)
    helps = {a.dest: a.help for a in parser._actions if a.dest in SEGMENTER_FLAGS}
    assert set(helps) == set(SEGMENTER_FLAGS)
    defaults = dataclasses.asdict(SegmenterConfig())
    assert {dest: int(re.search(r"default: (\d+)", text).group(1)) for dest, text in helps.items()} == \
        {dest: defaults[dest] for dest in helps}
    assert segmenter_overrides(parser.parse_args([])) == {"pamr": True, "background_threshold": "auto"}
    assert segmenter_overrides(parser.parse_args(["--no-pamr", "--window", "64", "--background-threshold", "none"])) == \
        {"window": 64, "pamr": False, "background_threshold": None}
    assert segmenter_overrides(parser.parse_args(["--precision", "bf16", "--compile"])) == \
        {"pamr": True, "background_threshold": "auto", "precision": "bf16", "compile": True}
    assert SegmenterConfig(**segmenter_overrides(parser.parse_args(["--precision", "bf16", "--compile"]))).compile
    with pytest.raises(SystemExit):
        parser.parse_args(["--precision", "fp16"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--background-threshold", "1.5"])


def test_listing_follows_links_once_reports_loops_and_broken_links_and_keeps_hidden_names(tmp_path):
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "_x.png", ".x.png", "sub/b.jpg"):
        picture(1).save(root / name)
    (root / "notes.txt").write_text("not an image")
    os.symlink("a.png", root / "same-as-a.png")  # one real file under two names: segmented once
    os.symlink("nowhere.png", root / "gone.png")  # to nothing
    os.symlink(".", root / "sub" / "again")  # a loop
    (root / "folder.png").mkdir()  # a folder with an image's name
    files, problems = walk_images(str(root))
    assert [key for key, _ in files] == [".x.png", "_x.png", "a.png", "sub/b.jpg"]
    reasons = {p["key"]: p["reason"] for p in problems}
    assert set(reasons) == {"gone.png", "sub/again", "folder.png"}
    assert "link to nothing" in reasons["gone.png"] and "loop" in reasons["sub/again"] and "folder" in reasons["folder.png"]
    sources, globbed = list_sources(str(root / "**" / "*.png"), {})
    assert [s["key"] for s in sources] == [".x.png", "_x.png", "a.png"] and {p["key"] for p in globbed} == {"gone.png", "folder.png"}
    assert [s["key"] for s in list_sources(str(root / "*.jpg"), {})[0]] == []  # * stays within a folder
    assert [s["key"] for s in list_sources(str(root / "**" / "*.jpg"), {})[0]] == ["sub/b.jpg"]


def test_batch_job_reports_each_unusable_input_once_and_segments_hidden_names(ray_cluster, checkpoint, tmp_path):
    import ray

    root = tmp_path / "in"
    root.mkdir()
    for i, name in enumerate(("a.png", "_x.png", ".x.png")):
        picture(30 + i).save(root / name)
    os.symlink("a.png", root / "same-as-a.png")
    os.symlink("nowhere.png", root / "gone.png")
    os.symlink(".", root / "again")
    (root / "folder.png").mkdir()
    (root / "broken.png").write_bytes(b"not a png")
    argv = ["--checkpoint", checkpoint, "--input", str(root), "--texts", "background,sky,grass", "--output", str(tmp_path / "out"),
            *PROTOCOL]
    # the first run as users start it, its console read whole: our lines, none of Ray Data's
    console = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "segment.py"), *argv, "--actors", "2",
                              "--ray-address", ray.get_runtime_context().gcs_address],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert console.returncode == 0, console.stdout + console.stderr
    assert "segmented 3, unreadable 4 (listed in errors.jsonl)" in console.stdout
    for ray_data_line in ("execution finished", "Progress bars disabled", "minimum number of concurrent actors"):
        assert ray_data_line not in console.stdout + console.stderr  # kept in Ray Data's log file
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == 4 and summary["segmented_now"] == 3
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["key"] for e in errors) == ["again", "broken.png", "folder.png", "gone.png"]  # each once
    index = {row["key"]: row for row in read_index(str(tmp_path / "out"))}
    assert sorted(index) == [".x.png", "_x.png", "a.png"]
    row = index["a.png"]  # a text named "background" beside the threshold's class: both counted
    assert row["fraction/background (threshold)"] + row["fraction/background"] + row["fraction/sky"] + row["fraction/grass"] == pytest.approx(1)
    again = segment_job.main(argv)
    assert again["segmented_now"] == 0 and again["unreadable_now"] == 0  # nothing redone, no error listed twice
    assert len((tmp_path / "out" / "errors.jsonl").read_text().splitlines()) == 4
