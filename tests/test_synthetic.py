"""The synthetic world: vocabulary, reproducibility, scene ground truth, captions, evaluation sets."""
import re

import numpy as np
import pytest
from PIL import Image

from tcl.data import synthetic


def test_vocabulary_is_exactly_the_issue_words():
    assert synthetic.SHAPES == ("circle", "square", "triangle", "star", "heart", "cross", "ring", "crescent")
    assert list(synthetic.COLOURS) == ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
    assert synthetic.STUFF == ("sky", "grass", "water", "sand", "brick", "wood")
    assert synthetic.EVAL_SETS["shapes-things"] == ("background", *synthetic.SHAPES)
    assert synthetic.EVAL_SETS["shapes-stuff"] == (*synthetic.SHAPES, *synthetic.STUFF)


def test_same_seed_same_world_and_scene_i_independent_of_count():
    a = list(synthetic.scenes(5, seed=3, image_size=48))
    b = list(synthetic.scenes(8, seed=3, image_size=48))[:5]
    c = list(synthetic.scenes(5, seed=4, image_size=48))
    for x, y in zip(a, b):
        assert x.caption == y.caption
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert np.array_equal(x.shape_map, y.shape_map) and np.array_equal(x.stuff_map, y.stuff_map)
    assert [s.caption for s in a] != [s.caption for s in c]
    assert not np.array_equal(np.asarray(a[0].image), np.asarray(c[0].image))


@pytest.mark.parametrize("shape", synthetic.SHAPES)
def test_shapes_are_sized_by_area_and_distinct(shape):
    size, area = 128, 0.12
    radius = np.sqrt(area * size * size / synthetic._FILL[shape])
    mask = synthetic.shape_mask(shape, size, (64.0, 64.0), radius, angle=0.4)
    assert abs(mask.mean() - area) < 0.15 * area  # the area the scene asked for, within 15%
    circle = synthetic.shape_mask("circle", size, (64.0, 64.0), radius, angle=0.4)
    if shape != "circle":
        assert (mask ^ circle).mean() > 0.02  # not just another circle


def test_scene_ground_truth_is_consistent():
    shape_counts, stuff_counts, object_counts = set(), set(), set()
    for scene in synthetic.scenes(120, seed=0, image_size=64):
        assert scene.image.size == (64, 64) and scene.image.mode == "RGB"
        assert scene.shape_map.shape == scene.stuff_map.shape == (64, 64)
        assert scene.shape_map.max() <= len(synthetic.SHAPES) and scene.stuff_map.max() < len(synthetic.STUFF)
        stuff = set(np.unique(scene.stuff_map))
        stuff_counts.add(len(stuff))
        assert [synthetic.STUFF[i] for i in stuff] and set(scene.stuff) == {synthetic.STUFF[i] for i in stuff}
        # every visible object is on the map with its class, and the map holds nothing else
        classes_on_map = set(np.unique(scene.shape_map)) - {0}
        assert {1 + synthetic.SHAPES.index(o.shape) for o in scene.objects} <= classes_on_map
        assert abs(sum(o.area for o in scene.objects) - (scene.shape_map > 0).mean()) < 4 * 4 / 64 ** 2
        assert [o.area for o in scene.objects] == sorted((o.area for o in scene.objects), reverse=True)
        assert all(o.area <= synthetic.MAX_AREA * 1.2 for o in scene.objects)
        object_counts.add(len(scene.objects))
        shape_counts.update(o.shape for o in scene.objects)
    assert stuff_counts == {1, 2, 3}
    assert object_counts <= {0, 1, 2, 3, 4} and {1, 2, 3, 4} <= object_counts
    assert shape_counts == set(synthetic.SHAPES)


@pytest.mark.parametrize("stuff", synthetic.STUFF)
def test_stuff_textures_are_patterned_not_flat(stuff):
    texture = synthetic.stuff_texture(stuff, np.random.default_rng(0), 64)
    assert texture.shape == (64, 64, 3) and texture.min() >= 0 and texture.max() <= 255
    assert texture.std(axis=(0, 1)).mean() > 8  # not a flat colour


def test_captions_read_like_alt_text():
    words_allowed = set(synthetic.SHAPES) | set(synthetic._PLURAL.values()) | set(synthetic.COLOURS)
    mentions_largest = mentions_stuff = everything = 0
    scenes = list(synthetic.scenes(400, seed=1, image_size=48))
    for scene in scenes:
        text = scene.caption.lower()
        if scene.objects and re.search(rf"\b{scene.objects[0].shape}", text):
            mentions_largest += 1
        if any(w in text for w in ("sky", "grass", "water", "sea", "sand", "beach", "desert", "brick", "wood", "lawn", "field")):
            mentions_stuff += 1
        named = [w for w in re.findall(r"[a-z]+", text) if w in words_allowed and w not in synthetic.COLOURS]
        if len(scene.objects) == 4 and len(named) >= 4:
            everything += 1
    assert mentions_largest / len(scenes) > 0.8  # the salient object is named
    assert 0.2 < mentions_stuff / len(scenes) < 0.6  # the stuff sometimes
    assert everything == 0  # never every object
    assert len({s.caption for s in scenes}) > 300  # varied phrasing


@pytest.mark.parametrize("name", list(synthetic.EVAL_SETS))
def test_eval_set_written_in_custom_layout(tmp_path, name):
    root = synthetic.write_eval_set(str(tmp_path / name), name, count=4, seed=5, image_size=32)
    classes = (tmp_path / name / "classes.txt").read_text().split()
    assert tuple(classes) == synthetic.EVAL_SETS[name]
    for i, scene in enumerate(synthetic.scenes(4, seed=5, image_size=32)):
        image = Image.open(f"{root}/images/{i:05d}.png")
        label = np.asarray(Image.open(f"{root}/labels/{i:05d}.png"))
        assert np.array_equal(np.asarray(image), np.asarray(scene.image))
        assert np.array_equal(label, scene.label_map(name))
        assert label.max() < len(classes)
        if name == "shapes-stuff":  # no background: each pixel a shape or its stuff
            shapes = scene.shape_map > 0
            assert np.array_equal(label[shapes], scene.shape_map[shapes] - 1)
            assert np.array_equal(label[~shapes], len(synthetic.SHAPES) + scene.stuff_map[~shapes])
        else:
            assert np.array_equal(label, scene.shape_map)


def test_single_object_images_have_a_dominant_shape():
    pairs = list(synthetic.single_object_images(20, seed=2, image_size=48))
    assert len(pairs) == 20 and all(shape in synthetic.SHAPES for _, shape in pairs)
    assert len({shape for _, shape in pairs}) >= 5


def test_command_line_preview_and_eval_set(tmp_path, capsys):
    synthetic.main(["--preview", str(tmp_path / "p.png"), "--count", "4"])
    assert Image.open(tmp_path / "p.png").size[0] > 96
    synthetic.main(["--eval-set", "shapes-things", "--output", str(tmp_path / "e"), "--count", "2"])
    assert len(list((tmp_path / "e" / "labels").iterdir())) == 2
    with pytest.raises(ValueError, match="unknown evaluation set"):
        synthetic.write_eval_set(str(tmp_path / "x"), "shapes", 1, 0)
