import json

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.checkpoint import load_grounder, save_grounder, trainable_state_dict
from tcl.segment import Segmenter, SegmenterConfig
from tests.conftest import make_grounder


def test_checkpoint_round_trip_gives_identical_segmentation(tmp_path):
    grounder = make_grounder(seed=3)
    with torch.no_grad():  # make the trained parts differ from their CLIP initialisation
        grounder.grounding_decoder[0].block1.gate.fill_(0.5)
        grounder.mask_bias.fill_(-1.0)
    save_grounder(str(tmp_path / "ckpt"), grounder)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["clip.safetensors", "config.json", "grounder.safetensors"]
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["clip"]["pretrained"] == "clip.safetensors"

    loaded = load_grounder(str(tmp_path / "ckpt"))
    for key, value in trainable_state_dict(grounder).items():
        assert torch.equal(trainable_state_dict(loaded)[key], value), key
    for key, value in grounder.clip.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[key], value), key

    config = SegmenterConfig(short_side=32, window=32, stride=16)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8))
    [expected] = Segmenter(grounder, config, device="cpu").segment(image, ["star", "sky"])
    [got] = Segmenter.from_checkpoint(str(tmp_path / "ckpt"), device="cpu", short_side=32, window=32, stride=16).segment(image, ["star", "sky"])
    assert np.array_equal(expected.labels, got.labels)
    assert np.allclose(expected.probabilities, got.probabilities, atol=1e-6)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_grounder(str(tmp_path / "nowhere"))
