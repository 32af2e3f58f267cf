import os

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


def save_trained_looking_checkpoint(path: str, seed: int = 0) -> str:
    """A tiny grounder whose decoder gates are open (as after training, so TCL differs from the
    baseline), saved as a checkpoint directory."""
    from tcl.checkpoint import save_grounder

    grounder = make_grounder(seed)
    with torch.no_grad():
        for name, param in grounder.named_parameters():
            if name.endswith("gate"):
                param.fill_(0.5)
    save_grounder(path, grounder)
    return path


@pytest.fixture
def grounder() -> Grounder:
    return make_grounder()


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for a test module, with more logical CPUs than this machine's 2 cores
    so that Ray Data and two training workers all get slots."""
    import ray
    os.environ.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "1")
    ray.init(num_cpus=8, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()
