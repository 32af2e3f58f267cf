import pytest

from tcl import config as config_lib
from tcl.model import TCLConfig


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  area_weight: 0.2\ngrounder:\n  clip:\n    model_name: ViT-B-32\n")
    cfg = config_lib.load(TCLConfig, str(path), ["loss.tv_weight=0.5", "unfreeze_block_step=7", "grounder.image_mean=[0.5,0.5,0.5]"])
    assert cfg.loss.area_weight == 0.2 and cfg.loss.tv_weight == 0.5 and cfg.loss.tcl_weight == 0.1
    assert cfg.grounder.clip.model_name == "ViT-B-32" and cfg.grounder.clip.pretrained == "openai"
    assert cfg.unfreeze_block_step == 7
    assert cfg.grounder.image_mean == (0.5, 0.5, 0.5)
    assert config_lib.from_dict(TCLConfig, config_lib.to_dict(cfg)) == cfg


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown LossConfig option\(s\) \['area_wieght'\]"):
        config_lib.load(TCLConfig, None, ["loss.area_wieght=1"])
    with pytest.raises(ValueError, match="key.sub=value"):
        config_lib.load(TCLConfig, None, ["loss.area_weight"])
