"""Benchmark readers on tiny fabricated copies of each layout, converters on hand-made arrays."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcl.data.benchmarks import (
    BENCHMARKS, BenchmarkError, COCO_THING_IDS, COCO_UNUSED_THING_IDS, coco_object_from_stuffthingmaps,
    coco_object_train_ids, coco_stuff_171_from_stuffthingmaps, coco_stuff_171_train_ids, convert_folder,
    load_label, open_benchmark, open_custom)
from tests.helpers import HEIGHT, LAYOUTS, make_layout, raw_label, write_image, write_label


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_reader_pairs_images_with_their_labels_and_maps_values(tmp_path, name):
    values = make_layout(tmp_path, name)
    benchmark = open_benchmark(name, tmp_path)
    spec = BENCHMARKS[name]
    # split-file order where there is one, else sorted keys
    expected_keys = list(values) if LAYOUTS[name][2] else sorted(values)
    assert [sample.key for sample in benchmark.samples] == expected_keys
    for sample in benchmark.samples:
        value = values[sample.key]
        image, label = benchmark.load(sample)
        assert image.mode == "RGB" and image.size == (8 + value, HEIGHT)  # the right image
        assert label.dtype == np.int64 and label.shape == (HEIGHT, 8 + value)
        if spec.reduce_zero_label:  # 0 -> ignore, v -> v - 1, ignore stays
            assert label[1, 0] == 255 and label[1, -1] == value - 1
        else:
            assert label[1, 0] == 0 and label[1, -1] == value
        assert (label[0] == 255).all()
    assert benchmark.ignore_index == 255
    assert open_benchmark(name, tmp_path, limit=1).samples == benchmark.samples[:1]


def test_class_counts_and_names():
    counts = {"voc": 21, "voc20": 20, "context": 60, "context59": 59, "coco_object": 81,
              "coco_stuff": 171, "cityscapes": 19, "ade20k": 150}
    assert set(counts) == set(BENCHMARKS)
    for name, count in counts.items():
        names = BENCHMARKS[name].class_names
        assert len(names) == count, name
        assert len(set(names)) == count, f"{name} has duplicate class names"
    names = {name: spec.class_names for name, spec in BENCHMARKS.items()}
    assert names["voc"][:2] == ("background", "aeroplane") and names["voc"][-1] == "tvmonitor"
    assert names["voc20"] == names["voc"][1:]
    assert names["context"][:3] == ("background", "aeroplane", "bag") and names["context"][-1] == "wood"
    assert names["context59"] == names["context"][1:]
    assert names["coco_object"][:2] == ("background", "person") and names["coco_object"][-1] == "toothbrush"
    assert names["coco_stuff"][79:81] == ("toothbrush", "banner") and names["coco_stuff"][-1] == "wood"
    assert names["cityscapes"][0] == "road" and names["cityscapes"][-1] == "bicycle"
    assert names["ade20k"][:2] == ("wall", "building") and names["ade20k"][-1] == "flag"


@pytest.mark.parametrize("name, background", [("voc", True), ("voc20", False), ("context", True),
                                              ("context59", False), ("coco_object", True),
                                              ("coco_stuff", False), ("cityscapes", False), ("ade20k", False)])
def test_background_is_scored_but_not_prompted(tmp_path, name, background):
    make_layout(tmp_path, name)
    benchmark = open_benchmark(name, tmp_path)
    assert benchmark.has_background is background
    assert benchmark.num_classes == len(benchmark.class_names)
    expected = benchmark.class_names[1:] if background else benchmark.class_names
    assert benchmark.prompt_names == expected
    assert "background" not in benchmark.prompt_names


def test_load_label_reads_palette_indices_and_reduces_zero(tmp_path):
    raw = np.array([[0, 1, 2], [254, 255, 20]], dtype=np.uint8)
    path = tmp_path / "label.png"
    image = Image.fromarray(raw).convert("P")
    image.putpalette([255 - i for i in range(256)] * 3)
    image.putdata(raw.ravel().tolist())
    image.save(path)
    np.testing.assert_array_equal(load_label(path), raw)
    np.testing.assert_array_equal(load_label(path, reduce_zero_label=True), [[255, 0, 1], [253, 255, 19]])
    Image.new("RGB", (2, 2)).save(tmp_path / "rgb.png")
    with pytest.raises(BenchmarkError, match="single-channel"):
        load_label(tmp_path / "rgb.png")


def make_custom(root: Path, class_names: list[str]) -> None:
    for value, stem in [(1, "b"), (2, "a")]:
        write_image(root / "images" / f"{stem}.png", value)
        write_label(root / "labels" / f"{stem}.png", value)
    (root / "classes.txt").write_text("\n".join(class_names) + "\n\n")


def test_custom_layout_with_background(tmp_path):
    make_custom(tmp_path, ["Background", "cat", "dog"])
    benchmark = open_benchmark(f"custom:{tmp_path}")
    assert benchmark.has_background and benchmark.num_classes == 3
    assert benchmark.prompt_names == ("cat", "dog")
    assert [sample.key for sample in benchmark.samples] == ["a", "b"]
    image, label = benchmark.load(benchmark.samples[0])
    assert image.size == (10, HEIGHT) and label[1, -1] == 2 and label[1, 0] == 0
    # an explicit argument wins over the first line
    assert open_custom(tmp_path, background=False).prompt_names == ("Background", "cat", "dog")


def test_custom_layout_without_background(tmp_path):
    make_custom(tmp_path, ["sky", "cat", "dog"])
    benchmark = open_custom(tmp_path)
    assert not benchmark.has_background and benchmark.prompt_names == ("sky", "cat", "dog")
    assert open_custom(tmp_path, background=True).prompt_names == ("cat", "dog")


def test_label_value_out_of_range_is_an_error_at_load_time(tmp_path):
    make_custom(tmp_path, ["background", "cat"])  # labels hold 1 and 2; 2 is not a class
    benchmark = open_custom(tmp_path)
    image, label = benchmark.load(benchmark.samples[1])  # "b" holds 1: fine
    with pytest.raises(BenchmarkError, match=r"a\.png.*\[2\].*0\.\.1"):
        benchmark.load(benchmark.samples[0])


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(BenchmarkError) as error:
        open_benchmark("voc", tmp_path)
    message = str(error.value)
    assert "VOCdevkit/VOC2012/JPEGImages" in message and str(tmp_path) in message
    assert "Preparing the benchmarks" in message
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(BenchmarkError, match="classes.txt"):
        open_custom(tmp_path)


def test_missing_split_file_and_listed_image(tmp_path):
    make_layout(tmp_path, "context")
    split = tmp_path / LAYOUTS["context"][2]
    split.write_text("2008_000009\nmissing_image\n")
    with pytest.raises(BenchmarkError, match="missing_image"):
        open_benchmark("context", tmp_path)
    split.unlink()
    with pytest.raises(BenchmarkError, match="ImageSets/SegmentationContext/val.txt"):
        open_benchmark("context", tmp_path)


def test_missing_label_file_names_image_and_expected_label(tmp_path):
    make_layout(tmp_path, "cityscapes")
    label = tmp_path / LAYOUTS["cityscapes"][1].format("lindau/lindau_000000_000019")
    label.unlink()
    with pytest.raises(BenchmarkError, match=r"lindau_000000_000019_leftImg8bit\.png.*lindau_000000_000019_gtFine"):
        open_benchmark("cityscapes", tmp_path)


def test_unknown_name_lists_known_ones(tmp_path):
    with pytest.raises(BenchmarkError, match="known: voc, voc20, context.*custom:"):
        open_benchmark("pascal", tmp_path)


# --- COCO converters -------------------------------------------------------------------------

def test_coco_thing_ids_facts():
    assert len(COCO_THING_IDS) == 80 and len(COCO_UNUSED_THING_IDS) == 11
    assert set(COCO_THING_IDS) | set(COCO_UNUSED_THING_IDS) == set(range(1, 92))


# stuffthingmap pixel = COCO id - 1: 0 person(1), 1 bicycle(2), 12 stop sign(13), 89 toothbrush(90),
# 91 banner(92), 181 wood(182), 255 unlabeled; 11 = street sign(12), never annotated
STUFFTHINGMAP = np.array([[0, 1, 12, 89],
                          [91, 181, 255, 11]], dtype=np.uint8)


def test_coco_stuff_171_train_ids():
    np.testing.assert_array_equal(coco_stuff_171_train_ids(STUFFTHINGMAP),
                                  [[0, 1, 11, 79],
                                   [80, 170, 255, 255]])


def test_coco_object_train_ids():
    np.testing.assert_array_equal(coco_object_train_ids(STUFFTHINGMAP),
                                  [[1, 2, 12, 80],
                                   [0, 0, 0, 255]])


def test_converters_on_files_and_convert_folder_is_idempotent(tmp_path):
    src = tmp_path / "val2017"
    src.mkdir()
    Image.fromarray(STUFFTHINGMAP).save(src / "000000000139.png")
    coco_object_from_stuffthingmaps(src / "000000000139.png", tmp_path / "one.png")
    coco_stuff_171_from_stuffthingmaps(src / "000000000139.png", tmp_path / "two.png")
    assert np.array(Image.open(tmp_path / "one.png"))[0, 3] == 80
    assert np.array(Image.open(tmp_path / "two.png"))[1, 0] == 80

    assert convert_folder(src, "coco_object") == 1
    assert convert_folder(src, "coco_stuff") == 1
    # outputs sit alongside (MMSegmentation's layout) and are not taken as inputs on a second run
    assert convert_folder(src, "coco_object") == 0 and convert_folder(src, "coco_stuff") == 0
    assert sorted(path.name for path in src.iterdir()) == [
        "000000000139.png", "000000000139_instanceTrainIds.png", "000000000139_labelTrainIds.png"]
    assert np.array(Image.open(src / "000000000139_instanceTrainIds.png"))[0, 2] == 12
    assert np.array(Image.open(src / "000000000139_labelTrainIds.png"))[0, 2] == 11
    assert convert_folder(src, "coco_object", overwrite=True) == 1
    with pytest.raises(BenchmarkError, match="nowhere"):
        convert_folder(tmp_path / "nowhere", "coco_object")
