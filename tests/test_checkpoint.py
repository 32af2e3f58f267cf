import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.checkpoint import (import_official, load_grounder, official_to_grounder_state, save_grounder,
                            trainable_state_dict)
from tcl.checkpoint import main as checkpoint_main
from tcl.segment import Segmenter, SegmenterConfig
from tests.conftest import make_grounder, tiny_grounder_config


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


# --------------------------------------------------------------------------------------------------
# the official checkpoint (kakaobrain/tcl v1.0.0): key names and shapes from tests/fixtures

def official_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the official release's key names and shapes (for the tiny grounder)."""
    facts = json.loads((Path(__file__).parent / "fixtures" / "official_tcl_keys.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    return {key: torch.randn(shape, generator=generator) for key, shape in facts["shapes"].items()}


def test_official_keys_map_onto_every_trained_part_of_the_grounder():
    grounder = make_grounder()
    official = official_state()
    ours = official_to_grounder_state(official)
    trainable = trainable_state_dict(grounder)
    assert sorted(ours) == sorted(trainable)  # nothing missing, nothing left over
    for key, value in ours.items():
        assert value.shape == trainable[key].shape, key
    # spot checks that each tensor lands where it belongs, not only somewhere of the right shape
    assert ours["self_only_block.attn.in_proj_weight"] is official["masker.image_encoder.backbone.transformer.resblocks.0.attn.in_proj_weight"]
    assert ours["grounding_decoder.1.block2.conv.weight"] is official["masker.image_encoder.decoder.decoder.net.1.conv2.conv.weight"]
    assert ours["grounding_decoder.0.block1.gate"] is official["masker.image_encoder.decoder.decoder.net.0.conv.gate.gate"]
    assert ours["grounding_decoder.0.block2.norm.bias"] is official["masker.image_encoder.decoder.decoder.net.0.conv2.norm.bias"]
    assert ours["ln_post.weight"] is official["masker.image_encoder.decoder.image_proj.ln.weight"]
    assert ours["proj"] is official["masker.image_encoder.decoder.image_proj.proj"]
    assert ours["mask_weight"] is official["masker.sim2mask.w"] and ours["mask_bias"] is official["masker.sim2mask.b"]


def test_official_state_with_an_unplaceable_key_is_refused():
    official = official_state()
    official["masker.image_encoder.backbone.transformer.resblocks.1.ln_1.weight"] = torch.ones(32)  # ie_freeze 10: two copied blocks
    with pytest.raises(ValueError, match="resblocks.1.ln_1.weight"):
        official_to_grounder_state(official)


def _save_like_the_release(path, state):
    """torch.save({"model": ..., "config": <an object of a package that is not installed>}), as the
    release pickles its OmegaConf config beside the weights."""
    fake = types.ModuleType("not_installed_conf")

    class DictConfig:
        def __init__(self, content):
            self.content = content

    DictConfig.__module__, DictConfig.__qualname__ = fake.__name__, "DictConfig"
    fake.DictConfig = DictConfig
    sys.modules[fake.__name__] = fake
    try:
        torch.save({"model": state, "config": DictConfig({"model": {"type": "TCL"}}), "step": 50000}, path)
    finally:
        del sys.modules[fake.__name__]


def test_import_official_writes_a_checkpoint_that_segments_with_those_weights(tmp_path):
    official = official_state(seed=1)
    _save_like_the_release(tmp_path / "tcl.pth", official)
    clip = tiny_grounder_config().clip
    with pytest.raises(ValueError, match="--trust-pickle"):
        import_official(str(tmp_path / "tcl.pth"), str(tmp_path / "imported"), clip)
    import_official(str(tmp_path / "tcl.pth"), str(tmp_path / "imported"), clip, trust_pickle=True)

    loaded = load_grounder(str(tmp_path / "imported"))
    for key, value in official_to_grounder_state(official).items():
        assert torch.equal(trainable_state_dict(loaded)[key], value), key
    [result] = Segmenter.from_checkpoint(str(tmp_path / "imported"), device="cpu", short_side=32, window=32, stride=16).segment(
        Image.new("RGB", (40, 32), (200, 30, 30)), ["star", "sky"])
    assert result.labels.shape == (32, 40)


def test_import_official_cli_names_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not found: .*missing.pth"):
        checkpoint_main(["import-official", str(tmp_path / "missing.pth"), str(tmp_path / "out")])
    state = official_state()
    del state["masker.sim2mask.b"]
    torch.save({"model": state}, tmp_path / "partial.pth")  # tensors only: loads weights-only
    with pytest.raises(SystemExit, match=r"missing \['mask_bias'\]"):
        checkpoint_main(["import-official", str(tmp_path / "partial.pth"), str(tmp_path / "out"), "--clip-pretrained", ""])
