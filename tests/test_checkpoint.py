import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tcl.checkpoint import (import_official, load_grounder, official_to_grounder_state, save_grounder,
                            trainable_state_dict)
from tcl.checkpoint import main as checkpoint_main
from tcl.segment import Segmenter, SegmenterConfig
from open_clip.transformer import QuickGELU

from tcl.clip import CLIPConfig, FrozenCLIP
from tcl.model import Grounder, GrounderConfig
from tests.helpers import make_grounder
from tests.helpers import official_fixture, official_state, openai_vit_b16_hub_cache, save_like_the_official_code


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
# the official checkpoint (kakaobrain/tcl): key names and ViT-B/16 shapes from tests/fixtures, each
# fact with its source line in the official code

@pytest.fixture(scope="module")
def vit_b16_grounder():
    """A Grounder on the architecture of ViT-B-16 / openai (QuickGELU) with random CLIP weights."""
    torch.manual_seed(0)
    clip = FrozenCLIP(CLIPConfig("ViT-B-16", "openai"), load_weights=False)
    return Grounder(GrounderConfig(clip=clip.config), clip)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    return openai_vit_b16_hub_cache(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def offline_hub(hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def test_fixture_holds_the_released_structure():
    facts = official_fixture()
    keys = [entry["key"] for entry in facts["keys"]]
    assert len(keys) == len(set(keys)) and all(entry["source"] for entry in facts["keys"])
    trained = [entry for entry in facts["keys"] if entry["role"] == "trained"]
    assert len(trained) == 37 and sum(int(np.prod(e["shape"])) for e in trained) == 28_725_510
    copied = [k for k in keys if ".backbone." in k]
    assert len(copied) == 12 and all(".resblocks.11." in k for k in copied)  # the slice keeps block 11's index


def test_official_keys_map_onto_every_trained_part_of_the_grounder(vit_b16_grounder):
    official = official_state()
    ours = official_to_grounder_state(official, last_block=11)
    trainable = trainable_state_dict(vit_b16_grounder)
    assert sorted(ours) == sorted(trainable)  # nothing missing, nothing left over
    for key, value in ours.items():
        assert value.shape == trainable[key].shape, key
    # each tensor lands where it belongs, not only somewhere of the right shape
    assert ours["self_only_block.attn.in_proj_weight"] is official["masker.image_encoder.backbone.transformer.resblocks.11.attn.in_proj_weight"]
    assert ours["self_only_block.mlp.c_fc.weight"] is official["masker.image_encoder.backbone.transformer.resblocks.11.mlp.c_fc.weight"]
    assert ours["grounding_decoder.1.block2.conv.weight"] is official["masker.image_encoder.decoder.decoder.net.1.conv2.conv.weight"]
    assert ours["grounding_decoder.0.block1.gate"] is official["masker.image_encoder.decoder.decoder.net.0.conv.gate.gate"]
    assert ours["grounding_decoder.0.block2.norm.bias"] is official["masker.image_encoder.decoder.decoder.net.0.conv2.norm.bias"]
    assert ours["ln_post.weight"] is official["masker.image_encoder.decoder.image_proj.ln.weight"]
    assert ours["proj"] is official["masker.image_encoder.decoder.image_proj.proj"]
    assert ours["mask_weight"] is official["masker.sim2mask.w"] and ours["mask_bias"] is official["masker.sim2mask.b"]


def test_training_only_keys_buffers_and_frozen_clip_are_accepted_and_dropped():
    everything = official_state(roles=("trained", "training-only", "fixed-buffer"))
    everything["clip_image_encoder.clip_visual.conv1.weight"] = torch.zeros(768, 3, 16, 16)
    assert sorted(official_to_grounder_state(everything, 11)) == sorted(official_to_grounder_state(official_state(), 11))


def test_unknown_keys_and_other_copied_blocks_are_refused():
    official = official_state()
    official["masker.image_encoder.decoder.decoder.net.2.conv.gate.extra"] = torch.zeros(())
    with pytest.raises(ValueError, match=r"no place in this model: \['masker.image_encoder.decoder.decoder.net.2.conv.gate.extra'\]"):
        official_to_grounder_state(official, 11)
    official = official_state()
    official["masker.image_encoder.backbone.transformer.resblocks.10.ln_1.weight"] = torch.ones(768)  # ie_freeze 10: two blocks
    with pytest.raises(ValueError, match=r"copies CLIP block\(s\) \[10\], but this CLIP's last block is 11"):
        official_to_grounder_state(official, 11)
    renamed = {k.replace("resblocks.11.", "resblocks.0."): v for k, v in official_state().items()}  # the names this project once expected
    with pytest.raises(ValueError, match=r"block\(s\) \[0\]"):
        official_to_grounder_state(renamed, 11)


def test_import_refuses_a_file_missing_a_trained_key_before_loading_any_weights(tmp_path):
    state = official_state()
    del state["masker.sim2mask.b"]
    torch.save({"model": state}, tmp_path / "partial.pth")  # tensors only: loads weights-only
    with pytest.raises(SystemExit, match=r"missing \['mask_bias'\]"):  # offline, no weights cached: it must fail on the keys first
        checkpoint_main(["import-official", str(tmp_path / "partial.pth"), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_import_official_places_every_key_on_the_openai_quickgelu_clip(tmp_path, offline_hub):
    official = official_state(seed=1, roles=("trained", "training-only"))
    save_like_the_official_code(tmp_path / "tcl.pth", official)
    with pytest.raises(ValueError, match="--trust-pickle"):
        import_official(str(tmp_path / "tcl.pth"), str(tmp_path / "imported"))
    import_official(str(tmp_path / "tcl.pth"), str(tmp_path / "imported"), trust_pickle=True)

    recorded = json.loads((tmp_path / "imported" / "config.json").read_text())["clip"]
    assert recorded["model_name"] == "ViT-B-16" and recorded["pretrained"] == "openai"
    assert recorded["model_cfg"]["quick_gelu"] is True  # the checkpoint records the activation
    assert not (tmp_path / "imported" / "clip.safetensors").exists()  # a hub tag: not copied
    loaded = load_grounder(str(tmp_path / "imported"))
    for key, value in official_to_grounder_state(official, 11).items():
        assert torch.equal(trainable_state_dict(loaded)[key], value), key
    assert isinstance(loaded.self_only_block.mlp.gelu, QuickGELU)
    [result] = Segmenter(loaded, SegmenterConfig(short_side=32, window=32, stride=16, pamr=False), device="cpu").segment(
        Image.new("RGB", (40, 32), (200, 30, 30)), ["star", "sky"])
    assert result.labels.shape == (32, 40)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"<html>404 Not Found</html>", "not a PyTorch checkpoint"),
    (b"\x80\x04garbage that only starts like a pickle", "damaged or not a checkpoint"),
    (b"PK\x03\x04 a zip header and nothing else", "damaged or not a checkpoint"),
])
def test_import_official_tells_damaged_files_from_pickles(tmp_path, content, message):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(SystemExit, match=message) as error:
        checkpoint_main(["import-official", str(tmp_path / "bad.pth"), str(tmp_path / "out"), "--trust-pickle"])
    assert "bad.pth" in str(error.value)


def test_import_official_cli_names_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="not found: .*missing.pth"):
        checkpoint_main(["import-official", str(tmp_path / "missing.pth"), str(tmp_path / "out")])


# --------------------------------------------------------------------------------------------------
# damaged checkpoints: errors that name the file, and a run folder falls back to its last intact checkpoint

def run_folder_with_two_checkpoints(root) -> tuple[str, str, str]:
    older, newer = str(root / "checkpoint_2026-01-01_00-00-00.000001"), str(root / "checkpoint_2026-01-01_00-00-10.000001")
    save_grounder(older, make_grounder(seed=1))
    save_grounder(newer, make_grounder(seed=2))
    return str(root), older, newer


@pytest.mark.parametrize("damage, file, message", [
    ("garbage_config", "config.json", "is not a checkpoint's config"),
    ("list_config", "config.json", "a JSON list, not an object"),
    ("unknown_option", "config.json", "unknown GrounderConfig option"),
    ("header_too_large", "grounder.safetensors", "not a readable safetensors file"),
    ("truncated_weights", "grounder.safetensors", "not a readable safetensors file"),
    ("truncated_clip", "clip.safetensors", "clip.safetensors"),
])
def test_a_damaged_checkpoint_is_an_error_naming_the_file(tmp_path, damage, file, message):
    directory = tmp_path / "ckpt"
    save_grounder(str(directory), make_grounder())
    path = directory / file
    if damage == "garbage_config":
        path.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "list_config":
        path.write_text("[1, 2]")
    elif damage == "unknown_option":
        path.write_text(json.dumps({"nonsense": 1}))
    elif damage == "header_too_large":
        path.write_bytes((2**60).to_bytes(8, "little") + b"{}")
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=message) as error:
        load_grounder(str(directory))
    assert str(path) in str(error.value)


def test_a_run_folder_skips_its_damaged_latest_checkpoint_and_says_so(tmp_path):
    from tcl.checkpoint import intact_checkpoint

    run, older, newer = run_folder_with_two_checkpoints(tmp_path / "run")
    (tmp_path / "run" / os.path.basename(newer) / "grounder.safetensors").write_bytes(b"\x00" * 10)
    with pytest.warns(UserWarning, match="1 newer checkpoint"):
        loaded = load_grounder(run)
    expected = trainable_state_dict(make_grounder(seed=1))
    assert all(torch.equal(v, expected[k]) for k, v in trainable_state_dict(loaded).items())
    assert intact_checkpoint(run)[0] == older  # what the jobs hand their actors
    (tmp_path / "run" / os.path.basename(older) / "config.json").write_text("{")
    with pytest.raises(ValueError, match="no intact checkpoint in"):
        load_grounder(run)


def test_a_hub_tag_that_is_not_cached_fails_at_once_when_offline(tmp_path, monkeypatch):
    import time

    import tcl.hub

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/clip either
    for offline_setting in (True, False):
        if offline_setting:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
            monkeypatch.setattr(tcl.hub, "reachable", lambda host, *a, **k: False)  # as on a machine without a network
        start = time.perf_counter()
        with pytest.raises(FileNotFoundError, match="tag 'openai' of ViT-B-16 are not cached locally"):
            FrozenCLIP(CLIPConfig("ViT-B-16", "openai"))
        assert time.perf_counter() - start < 10


def test_reachable_answers_within_its_time(tmp_path):
    import socket

    from tcl.hub import reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert reachable("127.0.0.1", port, seconds=2)
    assert not reachable("127.0.0.1", port, seconds=2)  # closed now
