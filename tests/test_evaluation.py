"""The evaluation protocol per data set, on the synthetic sets in the custom layout."""
import numpy as np
import pytest
import torch
from PIL import Image

from tcl.clip import CLIPConfig, tiny_model_cfg
from tcl.data import synthetic
from tcl.data.benchmarks import open_custom
from tcl.evaluation import evaluate, predict_labels, protocol_overrides, sample_confusion
from tcl.metrics import confusion_matrix
from tcl.model import Grounder, GrounderConfig
from tcl.segment import Segmenter, SegmenterConfig, background_threshold


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    clip = CLIPConfig(model_name="tiny", pretrained=None, model_cfg=tiny_model_cfg(image_size=32, width=32, layers=2, embed_dim=32, text_width=32))
    grounder = Grounder(GrounderConfig(clip=clip))
    with torch.no_grad():  # a decoder that is not the identity, so TCL and the baseline differ
        for gate in [p for n, p in grounder.named_parameters() if n.endswith("gate")]:
            gate.fill_(0.5)
    return Segmenter(grounder, SegmenterConfig(short_side=32, window=32, stride=16))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {name: open_custom(synthetic.write_eval_set(str(root / name), name, count=3, seed=9, image_size=32))
            for name in synthetic.EVAL_SETS}


def test_protocol_overrides_follow_the_official_thresholds(sets):
    things, stuff = sets["shapes-things"], sets["shapes-stuff"]
    assert things.has_background and not stuff.has_background
    assert protocol_overrides(things) == {"pamr": True, "background_threshold": "auto"}
    assert protocol_overrides(things, pamr=False) == {"pamr": False, "background_threshold": "auto"}
    assert background_threshold("auto", True) == 0.4 and background_threshold("auto", False) == 0.5  # the official values
    assert protocol_overrides(stuff) == {"pamr": True, "background_threshold": None}
    assert protocol_overrides(stuff, baseline=True)["kp_weight"] == 1.0
    assert list(things.prompt_names) == list(synthetic.SHAPES)  # background is the threshold, never a prompt


@pytest.mark.parametrize("name", list(synthetic.EVAL_SETS))
def test_evaluate_sums_per_image_matrices_of_direct_segmenter_calls(segmenter, sets, name):
    benchmark = sets[name]
    result = evaluate(segmenter, benchmark)
    expected = np.zeros((benchmark.num_classes,) * 2, np.int64)
    for sample in benchmark.samples:
        image, label = benchmark.load(sample)
        overrides = protocol_overrides(benchmark)
        [direct] = segmenter.segment([image], list(benchmark.prompt_names), **overrides)
        assert direct.labels.max() < benchmark.num_classes
        expected += confusion_matrix(direct.labels, label, benchmark.num_classes)
        assert np.array_equal(sample_confusion(segmenter, benchmark, sample, **overrides),
                              confusion_matrix(direct.labels, label, benchmark.num_classes))
    assert np.array_equal(result.confusion.matrix, expected)
    assert result.confusion.matrix.sum() == 3 * 32 * 32  # every pixel counted once, none ignored
    assert 0 <= result.miou <= 1 and result.images == 3
    assert set(result.as_dict()["iou"]) == set(benchmark.class_names)


def test_baseline_mode_is_the_frozen_clip_alone(segmenter, sets):
    benchmark = sets["shapes-stuff"]
    image, _ = benchmark.load(benchmark.samples[0])
    baseline = predict_labels(segmenter, benchmark, [image], **protocol_overrides(benchmark, baseline=True))[0]
    tcl = predict_labels(segmenter, benchmark, [image], **protocol_overrides(benchmark))[0]
    [direct] = segmenter.segment([image], list(benchmark.prompt_names), background_threshold=None, kp_weight=1.0)
    assert np.array_equal(baseline, direct.labels)
    assert not np.array_equal(baseline, tcl)


def test_overlay_leaves_ignored_and_background_pixels_unpainted():
    from tcl.visualize import overlay_with_legend, palette

    image = Image.new("RGB", (6, 4), (100, 100, 100))
    labels = np.array([[0, 0, 1, 1, 255, 255]] * 4)
    picture = np.asarray(overlay_with_legend(image, labels, ["background", "star"], alpha=0.5, ignore_index=255))
    assert (picture[:4, [0, 1, 4, 5]] == 100).all()  # background and ignored: the image itself
    expected = np.round(0.5 * palette(2, has_background=True)[1] + 0.5 * 100)
    assert (picture[:4, 2:4] == expected).all()
