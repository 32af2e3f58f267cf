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


def test_paper_config_has_the_papers_training_setting():
    import os

    from tcl.training import TrainConfig

    cfg = config_lib.load(TrainConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "cc3m_cc12m.yaml"))
    assert (cfg.model.grounder.clip.model_name, cfg.model.grounder.clip.pretrained) == ("ViT-B-16", "openai")
    assert (cfg.optim.batch_size, cfg.optim.total_steps, cfg.optim.warmup_steps) == (1024, 50000, 15000)
    assert (cfg.optim.base_lr, cfg.optim.min_lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (3e-4, 4e-5, 0.05, 5.0)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.optim.eps == 1e-6
    assert cfg.model.unfreeze_block_step == 30000 and cfg.data.image_size == 224
    assert (cfg.model.loss.tcl_weight, cfg.model.loss.area_weight, cfg.model.loss.tv_weight) == (0.1, 0.4, 1.0)
    assert cfg.run.num_workers * 64 == cfg.optim.batch_size and cfg.run.use_gpu  # 64 per GPU, as the paper
