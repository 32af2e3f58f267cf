"""Shared test helpers: tiny models, checkpoints, shards and an offline hub cache."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent
TRAIN_CONFIG = str(REPO / "configs" / "synthetic.yaml")
# a tiny TCL run: 2 CPU workers, a 32 px CLIP, a checkpoint every 2 steps
TINY = [
    "model.grounder.clip.model_cfg.vision_cfg={image_size: 32, patch_size: 8, width: 32, layers: 2, head_width: 16}",
    "model.grounder.clip.model_cfg.text_cfg={context_length: 16, vocab_size: 49408, width: 32, heads: 2, layers: 1}",
    "model.grounder.clip.model_cfg.embed_dim=32",
    "data.image_size=32", "optim.batch_size=8", "optim.warmup_steps=2", "run.num_workers=2",
    "run.cpus_per_worker=0.5", "run.log_every=2", "run.checkpoint_every=2",
]
# dummy AWS credentials, for the moto S3 server and for every process of a test session
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service for credentials
}
OPENAI_VIT_B16_REPO = "timm/vit_base_patch16_clip_224.openai"  # open_clip's hf_hub entry for ViT-B-16 / openai


def official_fixture() -> dict:
    """Facts of the official TCL checkpoint (kakaobrain/tcl), with the source line of each."""
    return json.loads((FIXTURES / "official_tcl_keys.json").read_text())


def official_state(seed: int = 0, roles: tuple[str, ...] = ("trained",)) -> dict[str, torch.Tensor]:
    """Random tensors under the official checkpoint's key names and ViT-B/16 shapes, for the keys of `roles`."""
    generator = torch.Generator().manual_seed(seed)
    return {entry["key"]: torch.randn(entry["shape"], generator=generator)
            for entry in official_fixture()["keys"] if entry["role"] in roles}


def save_like_the_official_code(path, state) -> None:
    """torch.save as kakaobrain/tcl utils/checkpoint.py:120-137 does: the model's state under "model",
    beside the optimizer's and an OmegaConf DictConfig (here: a class of a package that is not installed)."""
    fake = types.ModuleType("not_installed_omegaconf")

    class DictConfig:
        def __init__(self, content):
            self.content = content

    DictConfig.__module__, DictConfig.__qualname__ = fake.__name__, "DictConfig"
    fake.DictConfig = DictConfig
    sys.modules[fake.__name__] = fake
    try:
        torch.save({"model": state, "optimizer": {"state": {}}, "lr_scheduler": {}, "scaler": {}, "step": 50000,
                    "config": DictConfig({"model": {"type": "TCL", "ie_freeze": 11}})}, path)
    finally:
        del sys.modules[fake.__name__]


def openai_vit_b16_hub_cache(root: Path) -> Path:
    """A Hugging Face hub cache folder in which open_clip's ViT-B-16 `openai` weights are random
    (the architecture the tag was trained with, QuickGELU), so the tag resolves offline: set
    HF_HUB_CACHE to the returned folder. Stored in fp16 (286 MB instead of 572)."""
    from safetensors.torch import save_file

    from tcl.clip import CLIPConfig, create_open_clip

    commit = "0" * 40
    repo = root / ("models--" + OPENAI_VIT_B16_REPO.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = create_open_clip(CLIPConfig("ViT-B-16", "openai"), load_weights=False)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(snapshot / "open_clip_model.safetensors"))
    return root


# ------------------------------------------------------------------ benchmark layouts (MMSegmentation's)

HEIGHT = 6


def write_image(path: Path, value: int) -> None:
    """An image whose width encodes `value`, so a label can be checked to pair with the right image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8 + value, HEIGHT), (10 * value, 0, 0)).save(path)


def raw_label(value: int) -> np.ndarray:
    """Label content that depends on its file: `value` on the right, 0 on the left, 255 on the top row."""
    label = np.full((HEIGHT, 8 + value), value, dtype=np.uint8)
    label[:, :2] = 0
    label[0] = 255
    return label


def write_label(path: Path, value: int, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw_label(value))
    if palette:  # VOC / Context labels are palette PNGs; they must be read as indices, not colours
        image = image.convert("P")
        image.putpalette([channel for i in range(256) for channel in (i, 255 - i, (7 * i) % 256)])
        image.putdata(raw_label(value).ravel().tolist())
    image.save(path)


# name -> (image path pattern, label path pattern, split file or None, keys, palette labels)
LAYOUTS = {
    "voc": ("VOCdevkit/VOC2012/JPEGImages/{}.jpg", "VOCdevkit/VOC2012/SegmentationClass/{}.png",
            "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", ["2007_000033", "2007_000002"], True),
    "context": ("VOCdevkit/VOC2010/JPEGImages/{}.jpg", "VOCdevkit/VOC2010/SegmentationClassContext/{}.png",
                "VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt", ["2008_000009", "2008_000002"], False),
    "coco_object": ("coco_stuff164k/images/val2017/{}.jpg", "coco_stuff164k/annotations/val2017/{}_instanceTrainIds.png",
                    None, ["000000000139", "000000000285"], False),
    "coco_stuff": ("coco_stuff164k/images/val2017/{}.jpg", "coco_stuff164k/annotations/val2017/{}_labelTrainIds.png",
                   None, ["000000000139", "000000000285"], False),
    "cityscapes": ("cityscapes/leftImg8bit/val/{}_leftImg8bit.png", "cityscapes/gtFine/val/{}_gtFine_labelTrainIds.png",
                   None, ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"], False),
    "ade20k": ("ade/ADEChallengeData2016/images/validation/{}.jpg",
               "ade/ADEChallengeData2016/annotations/validation/{}.png",
               None, ["ADE_val_00000001", "ADE_val_00000002"], False),
}
LAYOUTS["voc20"] = LAYOUTS["voc"]
LAYOUTS["context59"] = LAYOUTS["context"]


def make_layout(root: Path, name: str) -> dict[str, int]:
    """Write a benchmark's layout under root; returns key -> the value its label holds."""
    image_pattern, label_pattern, split_file, keys, palette = LAYOUTS[name]
    values = {key: i + 1 for i, key in enumerate(keys)}
    for key, value in values.items():
        write_image(root / image_pattern.format(key), value)
        write_label(root / label_pattern.format(key), value, palette)
    if split_file:
        # an image outside the split must not be read
        write_image(root / image_pattern.format("not_in_split"), 5)
        write_label(root / label_pattern.format("not_in_split"), 5, palette)
        (root / split_file).parent.mkdir(parents=True, exist_ok=True)
        (root / split_file).write_text("\n".join(keys) + "\n")
    return values


# ------------------------------------------------------------------ tiny models, checkpoints, shards

def tiny_grounder_config(**clip_overrides):
    from tcl.clip import CLIPConfig, tiny_model_cfg
    from tcl.model import GrounderConfig

    model_cfg = tiny_model_cfg(image_size=32, patch_size=8, width=32, layers=2, heads=2, embed_dim=32, context_length=16,
                               text_width=32, text_layers=1)
    return GrounderConfig(clip=CLIPConfig(model_name="tiny-test", pretrained=None, model_cfg=model_cfg, **clip_overrides))


def make_grounder(seed: int = 0):
    from tcl.model import Grounder

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


def write_shards(prefix: str, count: int, corrupt: int = 0, **s3) -> None:
    """`count` random 40 px images with captions "a photo of thing i % 5", then `corrupt` broken rows."""
    from tcl.data.shards import ShardWriter
    from tcl.images import encode_image

    rng = np.random.default_rng(0)
    with ShardWriter(prefix, rows_per_shard=16, **s3) as writer:
        for i in range(count):
            image = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
            writer.write(encode_image(image), f"a photo of thing {i % 5}")
        for _ in range(corrupt):
            writer.write(b"\x89PNG not really", "broken image")


def tiny_train_config(shards: str, storage: str, name: str, *overrides: str):
    """The TrainConfig of a tiny TCL run (TINY) on `shards`, stored in storage/name."""
    from tcl import config as config_lib
    from tcl.training import TrainConfig

    return config_lib.load(TrainConfig, TRAIN_CONFIG, [f"data.shards={shards}", f"run.storage={storage}", f"run.name={name}", *TINY, *overrides])
