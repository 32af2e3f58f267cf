"""Segmenter: sizes, windows, background threshold, batching, bad input."""
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from tcl.segment import Segmenter, SegmenterConfig, centered_padding, resized_shape, window_boxes

SMALL = SegmenterConfig(short_side=32, window=32, stride=16, pamr=False)


def _image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_resized_shape_follows_short_side_and_long_side_cap():
    assert resized_shape(375, 500, 448, 2048) == (448, 597)
    assert resized_shape(500, 375, 448, 2048) == (597, 448)
    assert resized_shape(100, 3000, 448, 2048) == (68, 2048)  # long side capped
    assert resized_shape(20, 20, 448, 2048) == (448, 448)  # small images are enlarged


@pytest.mark.parametrize("height,width", [(448, 597), (448, 448), (300, 200), (448, 1000)])
def test_window_boxes_cover_the_image_flush_with_its_edges(height, width):
    boxes = window_boxes(height, width, 448, 224)
    covered = np.zeros((height, width), dtype=int)
    for y1, y2, x1, x2 in boxes:
        assert y2 - y1 == min(448, height) and x2 - x1 == min(448, width)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert max(b[1] for b in boxes) == height and max(b[3] for b in boxes) == width
    if (height, width) == (448, 597):
        assert boxes == [(0, 448, 0, 448), (0, 448, 149, 597)]


def test_centered_padding():
    assert centered_padding(32, 32, 8) == (0, 0, 0, 0)
    assert centered_padding(30, 27, 8) == (2, 3, 1, 1)


@pytest.mark.parametrize("height,width", [(32, 32), (50, 90), (90, 50), (37, 41), (12, 200)])
def test_labels_and_probabilities_at_the_original_size(grounder, height, width):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    [result] = segmenter.segment(_image(height, width), ["star", "ring", "sky"], background_threshold=None)
    assert result.labels.shape == (height, width)
    assert result.probabilities.shape == (3, height, width)
    assert result.class_names == ["star", "ring", "sky"]
    assert np.array_equal(result.labels, result.probabilities.argmax(axis=0))


def test_background_threshold(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    image = _image(40, 56)
    texts = ["star", "ring"]
    [plain] = segmenter.segment(image, texts, background_threshold=None)
    threshold = float(np.median(plain.probabilities.max(axis=0)))
    [with_bg] = segmenter.segment(image, texts, background_threshold=threshold)
    assert with_bg.class_names == ["background", "star", "ring"]
    assert np.allclose(with_bg.probabilities[0], threshold)
    weak = plain.probabilities.max(axis=0) <= threshold  # a tie with the threshold goes to background (first in argmax)
    assert weak.any() and (~weak).any()
    assert (with_bg.labels[weak] == 0).all()
    assert np.array_equal(with_bg.labels[~weak], plain.labels[~weak] + 1)
    [everything] = segmenter.segment(image, texts, background_threshold=1.0)  # mask scores are sigmoids, below 1
    assert (everything.labels == 0).all()
    # "auto" is the protocol's threshold for the PAMR setting: 0.4 with PAMR, 0.5 without
    for pamr, value in ((True, 0.4), (False, 0.5)):
        [auto] = segmenter.segment(image, texts, pamr=pamr)
        [explicit] = segmenter.segment(image, texts, pamr=pamr, background_threshold=value)
        assert np.array_equal(auto.labels, explicit.labels) and np.allclose(auto.probabilities[0], value)
    for bad in (1.5, -0.1, True, "0.4"):
        with pytest.raises(ValueError, match="background_threshold must be"):
            segmenter.segment(image, texts, background_threshold=bad)


def test_batched_call_equals_one_image_at_a_time(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    images = [_image(32, 48, 1), _image(64, 40, 2), np.asarray(_image(33, 35, 3))]
    texts = ["circle", "square"]
    together = segmenter.segment(images, texts, windows_per_batch=5)
    for image, result in zip(images, together):
        [alone] = segmenter.segment(image, texts, windows_per_batch=1)
        assert np.allclose(alone.probabilities, result.probabilities, atol=1e-5)


def test_pamr_option_changes_the_result(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    image = _image(40, 40)
    [without] = segmenter.segment(image, ["a", "b"], pamr=False)
    [with_pamr] = segmenter.segment(image, ["a", "b"], pamr=True)
    assert with_pamr.labels.shape == without.labels.shape
    assert not np.allclose(with_pamr.probabilities, without.probabilities)


def test_text_embeddings_are_cached(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    first = segmenter.text_embeddings(["cat", "dog"])
    assert segmenter.text_embeddings.misses == 2
    again = segmenter.text_embeddings(["dog", "cat", "dog"])
    assert segmenter.text_embeddings.misses == 2
    assert torch.equal(again[1], first[0]) and torch.equal(again[0], first[1])
    assert torch.allclose(first.norm(dim=-1), torch.ones(2))
    # the embedding is the normalised mean of the un-normalised template embeddings
    clip = grounder.clip
    from tcl.clip import PROMPT_TEMPLATES
    tokens = clip.tokenize([t.format("cat") for t in PROMPT_TEMPLATES])
    expected = torch.nn.functional.normalize(clip.encode_text(tokens).mean(dim=0), dim=-1)
    assert torch.allclose(first[0], expected, atol=1e-6)
    assert len(PROMPT_TEMPLATES) == 9


def test_bad_input_is_a_clear_error(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    with pytest.raises(ValueError, match="no texts"):
        segmenter.segment(_image(32, 32), [])
    with pytest.raises(ValueError, match="text 1 is empty"):
        segmenter.segment(_image(32, 32), ["a", "  "])
    with pytest.raises(TypeError, match="list of strings"):
        segmenter.segment(_image(32, 32), "star")
    with pytest.raises(ValueError, match="mode is 'L'"):
        segmenter.segment(Image.new("L", (32, 32)), ["a"])
    with pytest.raises(ValueError, match="zero size"):
        segmenter.segment(np.zeros((0, 10, 3), dtype=np.uint8), ["a"])
    with pytest.raises(ValueError, match=r"shape \(10, 10\)"):
        segmenter.segment(np.zeros((10, 10), dtype=np.uint8), ["a"])


def test_segment_each_equals_one_call_per_image_with_its_own_texts(grounder):
    segmenter = Segmenter(grounder, SegmenterConfig(short_side=32, window=32, stride=16), device="cpu")
    rng = np.random.default_rng(5)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 52), (32, 32), (36, 60))]
    texts = [["star", "sky"], ["sky", "a red ring", "grass"], ["grass"]]
    together = segmenter.segment_each(images, texts, background_threshold=0.5)
    for image, image_texts, result in zip(images, texts, together):
        [alone] = segmenter.segment(image, image_texts, background_threshold=0.5)
        assert result.class_names == ["background", *image_texts] == alone.class_names
        assert result.probabilities.shape == (len(image_texts) + 1, image.height, image.width)
        assert np.allclose(result.probabilities, alone.probabilities, atol=1e-5)
        assert np.array_equal(result.labels, alone.labels)
    with pytest.raises(ValueError, match="3 images but 2 text lists"):
        segmenter.segment_each(images, texts[:2])


def test_resize_matches_the_official_opencv_resize_of_8_bit_images():
    """The official evaluation resizes the uint8 image with OpenCV's bilinear filter (mmcv
    imrescale). Ours, on the same images: at most one grey level apart, and closer than resizing
    floats without rounding (the project's earlier way, 0.27 levels on average)."""
    cv2 = pytest.importorskip("cv2")
    from tcl.segment import resize_image

    rng = np.random.default_rng(0)
    for (height, width), (new_height, new_width) in [((375, 500), (448, 597)), ((1024, 768), (597, 448)), ((91, 130), (448, 640))]:
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 2)  # photo-like
        reference = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        tensor = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
        ours = resize_image(tensor, (new_height, new_width))[0].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(ours - reference).max() <= 1 + 1e-4  # float32 / 255 * 255
        assert np.abs(ours - reference).mean() < 0.2
        unrounded = resize_image(tensor.float() / 255, (new_height, new_width))[0].permute(1, 2, 0).double().numpy() * 255
        assert np.abs(unrounded - reference).mean() > np.abs(ours - reference).mean()


def test_memory_bounded_paths_give_the_reference_labels_and_scores(grounder):
    """Labels computed a band of rows at a time (with_probabilities=False), scores accumulated for
    each image's own texts, few windows x texts per model call: the same labels as the full
    upsampling (the reference), and the same scores to float rounding."""
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    images = [_image(120, 90), _image(30, 44), _image(64, 64)]
    texts = [["star", "ring", "sky"], ["grass"], ["ring", "water", "a red heart", "sand"]]
    reference = segmenter.segment_each(images, texts)
    for overrides in ({}, {"max_window_texts": 3}, {"pamr": False, "background_threshold": None}):
        bounded = segmenter.segment_each(images, texts, with_probabilities=False, **overrides)
        full = segmenter.segment_each(images, texts, **overrides)
        for ref, got, whole in zip(reference, bounded, full):
            assert got.probabilities is None and got.class_names == whole.class_names
            assert np.array_equal(got.labels, whole.labels)
            if overrides.get("pamr", True):  # the reference's settings
                assert np.allclose(whole.probabilities, ref.probabilities, atol=1e-5)


def test_a_text_named_background_is_kept_apart_from_the_threshold_class(grounder):
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    [result] = segmenter.segment(_image(40, 40), ["background", "sky"])
    assert result.class_names == ["background (threshold)", "background", "sky"]
    assert segmenter.class_names(["background", "sky"]) == result.class_names
    [plain] = segmenter.segment(_image(40, 40), ["background", "sky"], background_threshold=None)
    assert plain.class_names == ["background", "sky"]
    taken = ["background", "background (threshold)"]  # every class keeps a name of its own
    assert segmenter.class_names(taken) == ["background (threshold) (threshold)", *taken]


def test_compiled_segmenter_gives_the_eager_labels_and_scores(grounder):
    """SegmenterConfig.compile (torch.compile of the model call; PAMR's loop left out of the graph,
    its iteration compiled alone): the eager path's labels and, to float rounding, its scores.
    About a minute of compiling on 2 cores, so one image and one setting (PAMR on: every part)."""
    counters.clear()
    segmenter = Segmenter(grounder, dataclasses.replace(SMALL, pamr=True), device="cpu")
    image, texts = _image(40, 56), ["star", "ring", "sky"]
    [eager] = segmenter.segment(image, texts)
    [compiled] = segmenter.segment(image, texts, compile=True)
    assert np.array_equal(eager.labels, compiled.labels) and eager.class_names == compiled.class_names
    assert np.allclose(eager.probabilities, compiled.probabilities, atol=1e-5)
    # Dynamo traced the model call up to PAMR, PAMR's affinity, its iteration, the model call after
    assert counters["stats"]["unique_graphs"] >= 4, dict(counters["stats"])


def test_images_of_one_shape_are_preprocessed_together_with_the_same_values(grounder):
    """Resize + normalisation of same-shaped images at once (bounded by max_pixels) equal the
    image-at-a-time path exactly, whatever the mix of shapes and pixel types."""
    from tcl.segment import resize_image, resized_shape, to_image_tensor

    segmenter = Segmenter(grounder, SMALL, device="cpu")
    rng = np.random.default_rng(3)
    images = [to_image_tensor(_image(40, 56, seed=s)) for s in range(3)] + [to_image_tensor(_image(30, 20))]
    images.insert(2, to_image_tensor(rng.random((40, 56, 3)).astype(np.float32)))  # same shape, float
    expected = [grounder.normalize(resize_image(im.unsqueeze(0), resized_shape(*im.shape[1:], 32, 2048)))[0] for im in images]
    for max_pixels in (1 << 24, 40 * 56 * 2, 1):  # all together; two at a time; one at a time
        got = segmenter.preprocess(images, SMALL, max_pixels=max_pixels)
        assert [g.shape for g in got] == [e.shape for e in expected]
        assert all(torch.equal(g, e) for g, e in zip(got, expected)), max_pixels


def test_labels_past_255_classes_are_kept_whole(grounder):
    """Labels wait on the device in one byte a pixel up to 256 classes, in four bytes past that:
    with 300 texts, labels past 255 come back as they are, in both paths, as int64."""
    segmenter = Segmenter(grounder, SMALL, device="cpu")
    texts = [f"thing {i}" for i in range(300)]
    [bounded] = segmenter.segment(_image(64, 64), texts, with_probabilities=False, background_threshold=None)
    [full] = segmenter.segment(_image(64, 64), texts, background_threshold=None)
    assert bounded.labels.dtype == full.labels.dtype == np.int64
    assert np.array_equal(bounded.labels, full.labels) and np.array_equal(full.labels, full.probabilities.argmax(axis=0))
    assert bounded.labels.max() > 255, np.unique(bounded.labels)
