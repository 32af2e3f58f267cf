"""Grounder checkpoints: a directory that `Segmenter.from_checkpoint` needs nothing else to load.

    config.json          the GrounderConfig that built the model
    grounder.safetensors the trained parts (copied block, decoder, ln_post/proj, w, b)
    clip.safetensors     the frozen CLIP, stored only when it is not an open_clip hub tag
                         (random init or a local file), so small and custom CLIPs travel along

Training checkpoints add their own files (optimizer, step) beside these.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile

import torch
from safetensors.torch import load_file, save_file

from tcl import config as config_lib
from tcl import storage
from tcl.clip import CLIPConfig, FrozenCLIP, pretrained_is_file
from tcl.model import Grounder, GrounderConfig

CONFIG_FILE = "config.json"
GROUNDER_FILE = "grounder.safetensors"
CLIP_FILE = "clip.safetensors"


def trainable_state_dict(grounder: Grounder) -> dict[str, torch.Tensor]:
    """The grounder's own weights, without the frozen CLIP inside it."""
    return {k: v for k, v in grounder.state_dict().items() if not k.startswith("clip.")}


def save_grounder(directory: str, grounder: Grounder) -> None:
    os.makedirs(directory, exist_ok=True)
    config = dataclasses.replace(grounder.config, clip=grounder.clip.config)  # with its architecture resolved
    pretrained = config.clip.pretrained
    if not pretrained or pretrained_is_file(pretrained):
        save_file(_contiguous(grounder.clip.model.state_dict()), os.path.join(directory, CLIP_FILE))
        config = dataclasses.replace(config, clip=dataclasses.replace(config.clip, pretrained=CLIP_FILE))
    save_file(_contiguous(trainable_state_dict(grounder)), os.path.join(directory, GROUNDER_FILE))
    _write_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(config_lib.to_dict(config), indent=2))


def load_grounder_config(directory: str) -> GrounderConfig:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a TCL checkpoint: {path} is missing (expected {CONFIG_FILE} and {GROUNDER_FILE})")
    with open(path) as f:
        return config_lib.from_dict(GrounderConfig, json.load(f))


def resolve_checkpoint(path: str, cache_dir: str | None = None, **s3_options) -> str:
    """A local checkpoint directory for `path`: a checkpoint directory, a training run folder (its
    latest checkpoint_* directory), either of them on s3:// (downloaded to `cache_dir`)."""
    if storage.is_s3(path):
        files = storage.list_files(path, **s3_options)
        names = {f[len(path.rstrip("/")) + 1:] for f in files}
        if CONFIG_FILE not in names:
            runs = sorted({n.split("/")[0] for n in names if n.startswith("checkpoint_") and n.endswith("/" + CONFIG_FILE)})
            if not runs:
                raise FileNotFoundError(f"no TCL checkpoint at {path}: expected {CONFIG_FILE} or checkpoint_*/{CONFIG_FILE}")
            return resolve_checkpoint(storage.join(path, runs[-1]), cache_dir, **s3_options)
        local = tempfile.mkdtemp(prefix="tcl-checkpoint-", dir=cache_dir)
        for name in (CONFIG_FILE, GROUNDER_FILE, CLIP_FILE):
            if name in names:
                with open(os.path.join(local, name), "wb") as f:
                    f.write(storage.read_bytes(storage.join(path, name), **s3_options))
        return local
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(path):
        candidates = sorted(glob.glob(os.path.join(path, "checkpoint_*", CONFIG_FILE)))
        if candidates:
            return os.path.dirname(candidates[-1])
    return path


def load_grounder(path: str, device: str | torch.device = "cpu", **s3_options) -> Grounder:
    """Load a grounder from a checkpoint directory or run folder, local or s3:// (see resolve_checkpoint)."""
    directory = resolve_checkpoint(path, **s3_options)
    config = load_grounder_config(directory)
    clip_config = config.clip
    if clip_config.pretrained == CLIP_FILE:
        clip_config = dataclasses.replace(clip_config, pretrained=os.path.join(directory, CLIP_FILE))
    grounder = Grounder(dataclasses.replace(config, clip=clip_config), FrozenCLIP(clip_config))
    weights_path = os.path.join(directory, GROUNDER_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"checkpoint {directory} has no {GROUNDER_FILE}")
    missing, unexpected = grounder.load_state_dict(load_file(weights_path), strict=False)
    missing = [k for k in missing if not k.startswith("clip.")]
    if missing or unexpected:
        raise ValueError(f"checkpoint {weights_path} does not match the model: missing {missing}, unexpected {unexpected}")
    grounder.config = config
    return grounder.to(device)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["save_grounder", "load_grounder", "load_grounder_config", "trainable_state_dict", "CLIPConfig"]
