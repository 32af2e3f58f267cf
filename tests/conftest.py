import pytest
import torch

from tcl.clip import CLIPConfig, tiny_model_cfg
from tcl.model import Grounder, GrounderConfig

pytest_plugins = ["tests.s3_server"]


def tiny_grounder_config(**clip_overrides) -> GrounderConfig:
    model_cfg = tiny_model_cfg(image_size=32, patch_size=8, width=32, layers=2, heads=2, embed_dim=32, context_length=16, text_width=32, text_layers=1)
    return GrounderConfig(clip=CLIPConfig(model_name="tiny-test", pretrained=None, model_cfg=model_cfg, **clip_overrides))


def make_grounder(seed: int = 0) -> Grounder:
    torch.manual_seed(seed)
    return Grounder(tiny_grounder_config())


@pytest.fixture
def grounder() -> Grounder:
    return make_grounder()
