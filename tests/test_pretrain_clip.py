"""Tiny-CLIP pretraining: the contrastive module, its saved files, and the Ray Train run whose
weights become TCL's frozen CLIP (the pipeline's stages 2 and 3)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from tcl.clip import CLIP_WEIGHTS_FILE, CLIPConfig, ContrastiveCLIP, FrozenCLIP, tiny_model_cfg, zero_shot_predictions
from tcl.data import synthetic
from tcl.data.shards import ShardWriter
from tcl.images import encode_image
from tests.helpers import TINY, TRAIN_CONFIG as CONFIG

SMALL = tiny_model_cfg(image_size=32, width=32, layers=2, embed_dim=32, text_width=32, context_length=16)


def test_contrastive_clip_trains_both_towers_and_saves_a_loadable_clip(tmp_path):
    torch.manual_seed(0)
    model = ContrastiveCLIP(CLIPConfig("tiny", pretrained=None, model_cfg=SMALL))
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 400, (4, 16))
    losses = model(images, tokens)
    assert set(losses) == {"total"} and torch.isfinite(losses["total"])
    # 4 pairs, symmetric InfoNCE: at most a little above ln(4) for near-random embeddings
    assert 0 < losses["total"].item() < 3 * torch.log(torch.tensor(4.0)).item()
    losses["total"].backward()
    assert model.model.visual.conv1.weight.grad.abs().sum() > 0
    assert model.model.token_embedding.weight.grad.abs().sum() > 0
    assert model.model.logit_scale.grad is not None

    weights = model.save(str(tmp_path / "clip"))
    assert os.path.basename(weights) == CLIP_WEIGHTS_FILE
    frozen = FrozenCLIP(CLIPConfig("tiny", pretrained=weights))  # architecture from open_clip_config.json
    assert frozen.config.model_cfg == {**SMALL, "quick_gelu": False}  # the activation recorded with the architecture
    for key, value in load_file(weights).items():
        assert torch.equal(frozen.model.state_dict()[key], value)
    predictions = zero_shot_predictions(frozen, images, ["circle", "star", "ring"])
    assert predictions.shape == (4,) and predictions.max() < 3


def test_pretraining_starts_from_a_saved_clip_or_needs_an_architecture(tmp_path):
    """The pipeline's second CLIP stage continues from the first stage's saved weights."""
    from tcl import config as config_lib
    from tcl.training import TASKS, TrainConfig

    torch.manual_seed(1)
    weights = ContrastiveCLIP(CLIPConfig("tiny", pretrained=None, model_cfg=SMALL)).save(str(tmp_path / "first"))
    build = TASKS["clip"].build
    start = config_lib.load(TrainConfig, None, ["model.grounder.clip.model_name=tiny", f"model.grounder.clip.pretrained={weights}"])
    model = build(config_lib.to_dict(start))
    assert model.config.model_cfg == {**SMALL, "quick_gelu": False}  # read beside the weights
    for key, value in load_file(weights).items():
        assert torch.equal(model.model.state_dict()[key], value)
    torch.manual_seed(2)
    scratch = build(config_lib.to_dict(config_lib.load(TrainConfig, None, [
        "model.grounder.clip.model_name=tiny", "model.grounder.clip.pretrained=null", f"model.grounder.clip.model_cfg={json.dumps(SMALL)}"])))
    assert not torch.equal(scratch.model.visual.conv1.weight, model.model.visual.conv1.weight)  # from scratch
    nothing = config_lib.load(TrainConfig, None, ["model.grounder.clip.model_name=tiny", "model.grounder.clip.pretrained=null"])
    with pytest.raises(ValueError, match="model_cfg .* or model.grounder.clip.pretrained"):
        build(config_lib.to_dict(nothing))


def test_pretrained_clip_becomes_the_frozen_clip_of_tcl(ray_cluster, tmp_path):
    from jobs import pretrain_clip
    from jobs import train as train_job
    from tcl.segment import Segmenter

    with ShardWriter(str(tmp_path / "shards"), rows_per_shard=16) as writer:
        for image, caption in synthetic.caption_pairs(32, seed=0, image_size=32):
            writer.write(encode_image(image), caption)
    common = ["--config", CONFIG, f"data.shards={tmp_path / 'shards'}", f"run.storage={tmp_path / 'runs'}", *TINY]
    clip = pretrain_clip.main([*common, "run.name=clip", "optim.total_steps=4"])
    assert 0 <= clip["zero_shot_accuracy"] <= 1
    assert os.path.isfile(tmp_path / "runs" / "clip" / "zero_shot.json")
    pretrained = load_file(clip["clip_weights"])
    architecture = FrozenCLIP(CLIPConfig("tiny", clip["clip_weights"])).config.model_cfg
    torch.manual_seed(0)  # the training loop's seed (run.seed): these are the weights it started from
    initial = ContrastiveCLIP(CLIPConfig("tiny", None, architecture)).model.state_dict()
    assert not torch.equal(pretrained["visual.conv1.weight"], initial["visual.conv1.weight"])  # it trained

    tcl = train_job.main([*common, "run.name=tcl", "optim.total_steps=2",
                          f"model.grounder.clip.pretrained={clip['clip_weights']}", "model.grounder.clip.model_cfg=null"])
    segmenter = Segmenter.from_checkpoint(tcl["checkpoint"])
    state = segmenter.grounder.clip.model.state_dict()
    for key, value in pretrained.items():  # the grounder's frozen CLIP is exactly the pretrained one
        assert torch.equal(state[key], value), key
