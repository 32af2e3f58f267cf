"""The frozen CLIP is built as its pretrained weights were trained: QuickGELU for OpenAI's (open_clip's
pretrained table: ViT-B-16 / openai has quick_gelu=True), on every path, recorded in checkpoints."""
import glob
import os
import re
import warnings

import pytest
import torch
from open_clip.transformer import QuickGELU
from torch import nn

from tcl import config as config_lib
from tcl.checkpoint import load_grounder, save_grounder
from tcl.clip import CLIPConfig, FrozenCLIP, resolve, tiny_model_cfg
from tcl.model import Grounder, GrounderConfig
from tcl.training import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def activations(module: nn.Module) -> set[type]:
    return {type(block.mlp.gelu) for block in module}


def build_without_weights(config: CLIPConfig) -> Grounder:
    with torch.device("meta"):  # structure only: instant, no memory, no download
        clip = FrozenCLIP(config, load_weights=False)
        return Grounder(GrounderConfig(clip=clip.config), clip)


def test_openai_vit_b16_is_quickgelu_in_every_block_and_in_the_copied_one():
    grounder = build_without_weights(CLIPConfig("ViT-B-16", "openai"))
    assert activations(grounder.clip.visual.transformer.resblocks) == {QuickGELU}
    assert activations(grounder.clip.model.transformer.resblocks) == {QuickGELU}  # the text tower
    assert len(grounder.clip.visual.transformer.resblocks) == 12
    assert type(grounder.self_only_block.mlp.gelu) is QuickGELU


def test_a_tag_trained_with_gelu_builds_gelu():
    grounder = build_without_weights(CLIPConfig("ViT-B-16", "laion2b_s34b_b88k"))
    assert activations(grounder.clip.visual.transformer.resblocks) == {nn.GELU}


def test_an_explicit_mismatch_is_refused_naming_both_sides():
    architecture = resolve(CLIPConfig("ViT-B-16", "openai")).model_cfg
    with pytest.raises(ValueError, match=r"quick_gelu=False, but the pretrained weights 'openai' were trained with quick_gelu=True.*'ViT-B-16-quickgelu'"):
        resolve(CLIPConfig("ViT-B-16", "openai", model_cfg={**architecture, "quick_gelu": False}))
    with pytest.raises(ValueError, match="quick_gelu=True, but the pretrained weights 'laion2b_s34b_b88k' were trained with quick_gelu=False"):
        resolve(CLIPConfig("ViT-B-16", "laion2b_s34b_b88k", model_cfg={**architecture, "quick_gelu": True}))
    assert resolve(CLIPConfig("ViT-B-16-quickgelu", "openai")).model_cfg["quick_gelu"] is True
    with pytest.raises(ValueError, match="neither a local weights file nor an open_clip tag"):
        resolve(CLIPConfig("ViT-B-16", "no-such-tag"))


def every_clip_the_project_builds() -> list[CLIPConfig]:
    """The configs' CLIPs, the official import's, the benchmarks' (ViT-B-16 with the openai architecture)."""
    configs = [config_lib.load(TrainConfig, path).model.grounder.clip for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))]
    return [*configs, CLIPConfig("ViT-B-16", "openai"), CLIPConfig()]


def test_no_clip_the_project_builds_warns_about_quickgelu():
    configs = every_clip_the_project_builds()
    assert any(c.pretrained == "openai" for c in configs)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*QuickGELU.*")
        for config in configs:
            resolved = resolve(config)
            build_without_weights(config)
            if config.pretrained == "openai":
                assert resolved.model_cfg["quick_gelu"] is True


def test_clips_are_built_in_one_place():
    """Every CLIP goes through tcl.clip.create_open_clip, which resolves the activation; a direct
    open_clip.create_model or open_clip.CLIP elsewhere would bypass it."""
    offenders = []
    for folder in ("tcl", "jobs", "serve", "bench", "scripts"):  # the tests may build open_clip's own as a reference
      for path in glob.glob(os.path.join(REPO, folder, "**", "*.py"), recursive=True):
        if path.endswith(os.path.join("tcl", "clip.py")):
            continue
        with open(path, encoding="utf-8") as f:
            if re.search(r"open_clip\.(create_model|create_model_and_transforms|CLIP)\(", f.read()):
                offenders.append(os.path.relpath(path, REPO))
    assert offenders == []


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_a_checkpoint_records_the_activation_and_loading_rebuilds_it(tmp_path, quick_gelu):
    torch.manual_seed(0)
    architecture = {**tiny_model_cfg(image_size=32, width=32, layers=2, embed_dim=32, text_width=32, context_length=16), "quick_gelu": quick_gelu}
    grounder = Grounder(GrounderConfig(clip=CLIPConfig("tiny", None, architecture)))
    save_grounder(str(tmp_path), grounder)
    loaded = load_grounder(str(tmp_path))
    assert loaded.clip.config.model_cfg["quick_gelu"] is quick_gelu
    expected = QuickGELU if quick_gelu else nn.GELU
    assert activations(loaded.clip.visual.transformer.resblocks) == {expected}
    assert type(loaded.self_only_block.mlp.gelu) is expected
    images = torch.randn(1, 3, 32, 32)
    assert torch.allclose(loaded.clip.encode_image(images), grounder.clip.encode_image(images), atol=1e-6)
