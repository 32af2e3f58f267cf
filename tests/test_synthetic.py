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
    world = synthetic.SceneConfig()
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
        assert all(o.area <= world.max_area * 1.2 for o in scene.objects)
        object_counts.add(len(scene.objects))
        shape_counts.update(o.shape for o in scene.objects)
    assert stuff_counts == set(range(1, world.max_stuff + 1))
    assert object_counts <= set(range(world.max_shapes + 1)) and set(range(1, world.max_shapes + 1)) <= object_counts
    assert shape_counts == set(synthetic.SHAPES)


def test_world_config_parses_overrides_and_rejects_nonsense():
    world = synthetic.scene_config(["max_shapes=2", "max_rotation=0", "min_area=0.1"])
    assert (world.max_shapes, world.max_rotation, world.min_area) == (2, 0, 0.1)
    assert synthetic.scene_config([]) == synthetic.SceneConfig()
    with pytest.raises(ValueError, match="unknown"):
        synthetic.scene_config(["max_shape=2"])
    with pytest.raises(ValueError):
        synthetic.SceneConfig(max_shapes=0)
    with pytest.raises(ValueError):
        synthetic.SceneConfig(min_area=0.5, max_area=0.2)


def test_world_knobs_bound_shape_and_stuff_counts_and_sizes():
    for max_shapes, max_stuff in ((1, 1), (2, 2), (4, 3)):
        world = synthetic.SceneConfig(max_shapes=max_shapes, max_stuff=max_stuff, min_area=0.05)
        objects, stuff = set(), set()
        for scene in synthetic.scenes(60, seed=2, image_size=48, world=world):
            objects.add(len(scene.objects))
            stuff.add(len(scene.stuff))
        assert objects == set(range(1, max_shapes + 1))
        assert stuff == set(range(1, max_stuff + 1))
    small = synthetic.SceneConfig(max_shapes=1, min_area=0.02, max_area=0.04)
    large = synthetic.SceneConfig(max_shapes=1, min_area=0.2, max_area=0.3)
    small_areas = [s.objects[0].area for s in synthetic.scenes(30, seed=1, image_size=64, world=small)]
    large_areas = [s.objects[0].area for s in synthetic.scenes(30, seed=1, image_size=64, world=large)]
    assert max(small_areas) <= 0.04 * 1.2 and min(large_areas) > 0.1 and max(large_areas) <= 0.3 * 1.2


def _bounding_box_fill(mask: np.ndarray) -> float:
    ys, xs = np.nonzero(mask)
    return mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))


def test_rotation_zero_draws_upright_shapes():
    def square_fills(max_rotation: float) -> list[float]:
        world = synthetic.SceneConfig(max_shapes=1, min_area=0.1, max_area=0.2, max_rotation=max_rotation)
        return [_bounding_box_fill(scene.shape_map > 0) for scene in synthetic.scenes(200, seed=0, image_size=64, world=world)
                if scene.objects and scene.objects[0].shape == "square"]
    upright, tilted = square_fills(0), square_fills(45)
    assert len(upright) >= 10 and min(upright) > 0.9  # an upright square fills its bounding box
    assert min(tilted) < 0.75  # a square at up to 45 degrees often does not


def test_stuff_contrast_and_colour_distance_change_the_pixels():
    def ground_std(stuff_contrast: float) -> float:
        world = synthetic.SceneConfig(max_stuff=1, stuff_contrast=stuff_contrast, sensor_noise=0, blur=0)
        stds = []
        for scene in synthetic.scenes(20, seed=3, image_size=64, world=world):
            pixels = np.asarray(scene.image, np.float32)[scene.shape_map == 0]
            stds.append(pixels.std(axis=0).mean())
        return float(np.mean(stds))
    assert ground_std(0.0) < 0.5 * ground_std(1.0)

    # with a large minimum distance, no shape is painted in the colour of the stuff it stands on
    world = synthetic.SceneConfig(max_shapes=1, max_stuff=1, stuff_dullness=0.3, min_colour_distance=110)
    forbidden = {"grass": "green", "water": "blue", "brick": "red"}
    colours_on = {name: set() for name in forbidden}
    for scene in synthetic.scenes(300, seed=4, image_size=48, world=world):
        if scene.objects and scene.stuff[0] in forbidden:
            colours_on[scene.stuff[0]].add(scene.objects[0].colour)
    for name, colour in forbidden.items():
        assert colours_on[name] and colour not in colours_on[name], (name, colours_on[name])


def test_shape_markings_paint_only_inside_shapes_and_change_nothing_else():
    # one shape a scene: a second shape's colour depends on the paint under it, markings included
    plain = list(synthetic.scenes(12, seed=8, image_size=64, world=synthetic.SceneConfig(max_shapes=1, shape_markings=0.0)))
    marked = list(synthetic.scenes(12, seed=8, image_size=64, world=synthetic.SceneConfig(max_shapes=1, shape_markings=0.5)))
    changed_inside = []
    for a, b in zip(plain, marked):  # same random draws: same layout, captions and ground truth
        assert a.caption == b.caption and np.array_equal(a.shape_map, b.shape_map)
        difference = np.abs(np.asarray(a.image, np.float32) - np.asarray(b.image, np.float32)).max(axis=2)
        blurred_edge = np.zeros_like(a.shape_map, bool)  # blur may carry a marking a pixel or two outside
        for dy in range(-3, 4):
            for dx in range(-3, 4):
                blurred_edge |= np.roll(a.shape_map > 0, (dy, dx), axis=(0, 1))
        assert difference[~blurred_edge].max() == 0
        changed_inside.append((difference[a.shape_map > 0] > 20).mean())
    assert np.mean(changed_inside) > 0.2  # the lines cover a good part of each shape


def test_each_shape_class_has_its_own_marking_and_a_flip_keeps_it():
    assert set(synthetic.MARKINGS) == set(synthetic.SHAPES)

    def spectrum(marking: np.ndarray) -> np.ndarray:  # what a pattern is, whatever its phase
        power = np.abs(np.fft.fft2(marking - marking.mean()))
        return power.ravel() / np.linalg.norm(power)

    maps = {shape: synthetic.shape_marking(shape, 64, (32.0, 32.0), angle=0.0).astype(np.float32) for shape in synthetic.SHAPES}
    spectra = {shape: spectrum(m) for shape, m in maps.items()}
    for shape in synthetic.SHAPES:
        assert 0.15 < maps[shape].mean() < 0.7, shape  # lines and paint both present
        # the random horizontal flip of training turns no class's marking into another's
        flipped = spectrum(maps[shape][:, ::-1])
        own = flipped @ spectra[shape]
        others = max(flipped @ spectra[other] for other in synthetic.SHAPES if other != shape)
        assert own > 0.8 and others < 0.6, (shape, own, others)  # ring: a flip turns its spokes by 30 degrees


def test_a_world_is_reproducible_and_differs_from_another():
    world = synthetic.SceneConfig(max_shapes=2, max_rotation=0, min_area=0.08)
    a = list(synthetic.scenes(4, seed=6, image_size=48, world=world))
    b = list(synthetic.scenes(4, seed=6, image_size=48, world=world))
    c = list(synthetic.scenes(4, seed=6, image_size=48, world=synthetic.SceneConfig(max_shapes=4, max_rotation=60)))
    assert all(np.array_equal(np.asarray(x.image), np.asarray(y.image)) and x.caption == y.caption for x, y in zip(a, b))
    assert any(not np.array_equal(x.shape_map, y.shape_map) for x, y in zip(a, c))


@pytest.mark.parametrize("stuff", synthetic.STUFF)
def test_stuff_textures_are_patterned_not_flat(stuff):
    texture = synthetic.stuff_texture(stuff, np.random.default_rng(0), 64)
    assert texture.shape == (64, 64, 3) and texture.min() >= 0 and texture.max() <= 255
    assert texture.std(axis=(0, 1)).mean() > 8  # not a flat colour


def test_captions_read_like_alt_text():
    words_allowed = set(synthetic.SHAPES) | set(synthetic._PLURAL.values()) | set(synthetic.COLOURS)
    mentions_largest = mentions_stuff = everything = 0
    scenes = list(synthetic.scenes(400, seed=1, image_size=48, world=synthetic.SceneConfig(max_shapes=4)))
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


def test_caption_knobs_control_colour_and_stuff_mentions():
    def captions(**knobs):
        return [s.caption.lower() for s in synthetic.scenes(200, seed=2, image_size=32, world=synthetic.SceneConfig(**knobs))
                if s.objects]

    shapes = "|".join(list(synthetic.SHAPES) + list(synthetic._PLURAL.values()))

    def has_colour(text):  # a shape named with its colour (stuff phrases have their own: "blue sky")
        return any(re.search(rf"\b{c} ({shapes})\b", text) for c in synthetic.COLOURS)

    never, always = captions(colour_mention=0.0), captions(colour_mention=1.0, stuff_mention=1.0)
    assert not any(has_colour(t) for t in never)
    assert np.mean([has_colour(t) for t in always]) > 0.85  # all but the ~8% of captions about the ground alone
    assert captions() == captions(colour_mention=0.6, stuff_mention=0.35)  # the defaults: the world as it was


def test_object_captions_name_only_the_shapes_plainly():
    """The tiny CLIP's first stage (jobs/pipeline.py OBJECT_CAPTIONS): every caption names the
    largest shape, with nothing but shapes, counts and joining words; and it describes the same
    scenes as the web-like captions."""
    from tcl.ray.pipeline import OBJECT_CAPTIONS

    plain = synthetic.scene_config(OBJECT_CAPTIONS)
    assert (plain.background_caption, plain.caption_noise, plain.colour_mention, plain.stuff_mention) == (0, False, 0, 0)
    vocabulary = set(synthetic.SHAPES) | set(synthetic._PLURAL.values()) | set(synthetic._NUMBER.values()) | {
        "a", "an", "and", "with", "next", "to"}
    scenes = list(synthetic.scenes(300, seed=3, image_size=32, world=plain))
    for scene in scenes:
        words = scene.caption.split()
        assert set(words) <= vocabulary, scene.caption
        assert re.search(rf"\b{scene.objects[0].shape}", scene.caption), scene.caption
    assert len({s.caption for s in scenes}) > 20  # still phrases, not class ids
    web = list(synthetic.scenes(300, seed=3, image_size=32))
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(scenes[:20], web[:20]))
    assert any(not s.objects or not re.search(rf"\b{s.objects[0].shape}", s.caption.lower()) for s in web)  # the web-like ones do not always


def test_pipeline_refuses_a_first_clip_stage_without_its_shards(capsys):
    from jobs.pipeline import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--object-pairs", "0"])
    assert "--clip-object-steps 0" in capsys.readouterr().err
    args = parse_args(["--object-pairs", "0", "--clip-object-steps", "0"])
    assert (args.object_pairs, args.clip_object_steps) == (0, 0)


@pytest.mark.parametrize("name", list(synthetic.EVAL_SETS))
def test_eval_set_written_in_custom_layout(tmp_path, name):
    root = synthetic.write_eval_set(str(tmp_path / name), name, count=4, seed=5, image_size=32)
    classes = (tmp_path / name / "classes.txt").read_text().split()
    assert tuple(classes) == synthetic.EVAL_SETS[name]
    for i, scene in enumerate(synthetic.scenes(4, seed=5, image_size=32)):  # the default world
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
    world = synthetic.SceneConfig(max_shapes=1, max_rotation=0)
    upright = list(synthetic.single_object_images(5, seed=2, image_size=48, world=world))
    assert [shape for _, shape in upright] != [shape for _, shape in pairs[:5]]  # drawn from the world it is given


def test_command_line_preview_and_eval_set(tmp_path, capsys):
    synthetic.main(["--preview", str(tmp_path / "p.png"), "--count", "4"])
    assert Image.open(tmp_path / "p.png").size[0] > 96
    synthetic.main(["--eval-set", "shapes-things", "--output", str(tmp_path / "e"), "--count", "2"])
    assert len(list((tmp_path / "e" / "labels").iterdir())) == 2
    synthetic.main(["--eval-set", "shapes-things", "--output", str(tmp_path / "f"), "--count", "2", "--world", "min_area=0.3"])
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "e" / "images" / "00000.png")),
                              np.asarray(Image.open(tmp_path / "f" / "images" / "00000.png")))
    with pytest.raises(ValueError, match="unknown evaluation set"):
        synthetic.write_eval_set(str(tmp_path / "x"), "shapes", 1, 0)
