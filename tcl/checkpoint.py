"""Grounder checkpoints: a directory that `Segmenter.from_checkpoint` needs nothing else to load.

    config.json          the GrounderConfig that built the model
    grounder.safetensors the trained parts (copied block, decoder, ln_post/proj, w, b)
    clip.safetensors     the frozen CLIP, stored only when it is not an open_clip hub tag
                         (random init or a local file), so small and custom CLIPs travel along

Training checkpoints add their own files (optimizer, step) beside these.

`import_official` turns the official release (kakaobrain/tcl v1.0.0 `tcl.pth`, the trained parts
only; its frozen CLIP is OpenAI ViT-B/16) into such a directory:

    python -m tcl.checkpoint import-official tcl.pth checkpoints/tcl-official
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pickle
import re
import tempfile
import types
import warnings
import zipfile

import torch
from safetensors.torch import load_file, save_file

from tcl import config as config_lib
from tcl import storage
from tcl.clip import CLIPConfig, FrozenCLIP, pretrained_is_file, resolve
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
    storage.write_bytes_atomic(os.path.join(directory, CONFIG_FILE), json.dumps(config_lib.to_dict(config), indent=2).encode())


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong with it."""


def load_grounder_config(directory: str) -> GrounderConfig:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not a TCL checkpoint: {path} is missing (expected {CONFIG_FILE} and {GROUNDER_FILE})")
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not a checkpoint's config (JSON): {error}") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} is not a checkpoint's config: a JSON {type(values).__name__}, not an object")
    try:
        return config_lib.from_dict(GrounderConfig, values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: {error}") from None


def checkpoint_directories(path: str, **s3_options) -> list[str]:
    """The checkpoint directories `path` names, newest first: itself if it is one, else a training
    run folder's checkpoint_* directories (their names sort by time); local or s3://."""
    if storage.is_s3(path):
        root = path.rstrip("/")
        names = {f[len(root) + 1:] for f in storage.list_files(path, **s3_options)}
        if CONFIG_FILE in names:
            return [path]
        runs = sorted({n.split("/")[0] for n in names if n.startswith("checkpoint_") and n.endswith("/" + CONFIG_FILE)}, reverse=True)
        if not runs:
            raise FileNotFoundError(f"no TCL checkpoint at {path}: expected {CONFIG_FILE} or checkpoint_*/{CONFIG_FILE}")
        return [storage.join(path, run) for run in runs]
    if not os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isdir(path):
        candidates = sorted(glob.glob(os.path.join(path, "checkpoint_*", CONFIG_FILE)), reverse=True)
        if candidates:
            return [os.path.dirname(c) for c in candidates]
    return [path]


def local_copy(directory: str, cache_dir: str | None = None, **s3_options) -> str:
    """A local checkpoint directory with the files of `directory` (downloaded when it is on s3://)."""
    if not storage.is_s3(directory):
        return directory
    local = tempfile.mkdtemp(prefix="tcl-checkpoint-", dir=cache_dir)
    for name in (CONFIG_FILE, GROUNDER_FILE, CLIP_FILE):
        uri = storage.join(directory, name)
        if storage.exists(uri, **s3_options):
            with open(os.path.join(local, name), "wb") as f:
                f.write(storage.read_bytes(uri, **s3_options))
    return local


def resolve_checkpoint(path: str, cache_dir: str | None = None, **s3_options) -> str:
    """A local checkpoint directory for `path`: a checkpoint directory, a training run folder (its
    latest checkpoint_* directory), either of them on s3:// (downloaded to `cache_dir`)."""
    return local_copy(checkpoint_directories(path, **s3_options)[0], cache_dir, **s3_options)


def load_grounder(path: str, device: str | torch.device = "cpu", **s3_options) -> Grounder:
    """Load a grounder from a checkpoint directory or a training run folder, local or s3://. In a run
    folder, a damaged latest checkpoint is skipped with a warning and the one before it loaded."""
    directories = checkpoint_directories(path, **s3_options)
    failures = []
    for directory in directories:
        try:
            grounder = _load_directory(local_copy(directory, **s3_options), directory)
        except (CheckpointError, FileNotFoundError) as error:
            if len(directories) == 1:
                raise
            failures.append(f"{directory}: {error}")
            continue
        if failures:
            warnings.warn(f"loaded {directory}: {len(failures)} newer checkpoint(s) of {path} are damaged "
                          f"({'; '.join(failures)})", stacklevel=2)
        return grounder.to(device)
    raise CheckpointError(f"no intact checkpoint in {path}:\n  " + "\n  ".join(failures))


def verify_checkpoint(directory: str) -> GrounderConfig:
    """Check a local checkpoint directory without loading its weights: a readable config, and
    safetensors files whose headers read and fit the file. Returns the config; CheckpointError or
    FileNotFoundError naming the file otherwise."""
    from safetensors import safe_open

    config = load_grounder_config(directory)
    files = [GROUNDER_FILE] + ([CLIP_FILE] if config.clip.pretrained == CLIP_FILE else [])
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {directory} has no {name}")
        try:
            with safe_open(path, framework="pt") as f:
                f.keys()
        except Exception as error:  # noqa: BLE001 - SafetensorError and friends
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from None
    return config


def intact_checkpoint(path: str) -> tuple[str, list[str]]:
    """The newest checkpoint directory of a local `path` that verify_checkpoint accepts, and why
    newer ones were skipped."""
    directories = checkpoint_directories(path)
    skipped = []
    for directory in directories:
        try:
            verify_checkpoint(directory)
            return directory, skipped
        except (CheckpointError, FileNotFoundError) as error:
            if len(directories) == 1:
                raise
            skipped.append(str(error))
    raise CheckpointError(f"no intact checkpoint in {path}:\n  " + "\n  ".join(skipped))


def _load_directory(directory: str, name: str) -> Grounder:
    """The grounder of one local checkpoint directory (`name`: where it came from, for messages)."""
    config = load_grounder_config(directory)
    clip_config = config.clip
    weights_path = os.path.join(directory, GROUNDER_FILE)
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"checkpoint {name} has no {GROUNDER_FILE}")
    try:
        state = load_file(weights_path)
    except Exception as error:  # noqa: BLE001 - safetensors reports damage as SafetensorError, OSError, ...
        raise CheckpointError(f"{os.path.join(name, GROUNDER_FILE)} is not a readable safetensors file: {error}") from None
    if clip_config.pretrained == CLIP_FILE:
        clip_config = dataclasses.replace(clip_config, pretrained=os.path.join(directory, CLIP_FILE))
        try:
            clip = FrozenCLIP(clip_config)
        except Exception as error:  # noqa: BLE001 - a damaged clip.safetensors
            raise CheckpointError(f"{os.path.join(name, CLIP_FILE)} cannot be loaded: {type(error).__name__}: {error}") from None
    else:
        clip = FrozenCLIP(clip_config)
    grounder = Grounder(dataclasses.replace(config, clip=clip_config), clip)
    missing, unexpected = grounder.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("clip.")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {os.path.join(name, GROUNDER_FILE)} does not match the model: missing {missing}, unexpected {unexpected}")
    grounder.config = config
    return grounder


# --------------------------------------------------------------------------------------------------
# the official checkpoint

# The official TCL.state_dict() (kakaobrain/tcl; every key, shape and source line in
# tests/fixtures/official_tcl_keys.json) -> ours. Its masker copies CLIP's last block by slicing the
# nn.Sequential of blocks, which keeps the block's original index (`resblocks.11` for ViT-B/16 with
# ie_freeze 11): our self_only_block. Then the grounding decoder (`net.i` = our stage i, its
# `conv`/`conv2` = our block1/block2: LayerNorm2d -> GELU -> conv, tanh gate), CLIP's ln_post and
# proj moved after the decoder (`image_proj`), and Eq. 5's w and b (`sim2mask`).
def _official_key_map(last_block: int) -> list[tuple[str, str]]:
    decoder = r"masker\.image_encoder\.decoder\.decoder\.net\.(\d+)"
    return [
        (rf"masker\.image_encoder\.backbone\.transformer\.resblocks\.{last_block}\.(.+)", r"self_only_block.\1"),
        (decoder + r"\.conv\.gate\.gate", r"grounding_decoder.\1.block1.gate"),
        (decoder + r"\.conv2\.gate\.gate", r"grounding_decoder.\1.block2.gate"),
        (decoder + r"\.conv\.(norm|conv)\.(weight|bias)", r"grounding_decoder.\1.block1.\2.\3"),
        (decoder + r"\.conv2\.(norm|conv)\.(weight|bias)", r"grounding_decoder.\1.block2.\2.\3"),
        (r"masker\.image_encoder\.decoder\.image_proj\.ln\.(weight|bias)", r"ln_post.\1"),
        (r"masker\.image_encoder\.decoder\.image_proj\.proj", "proj"),
        (r"masker\.sim2mask\.w", "mask_weight"),
        (r"masker\.sim2mask\.b", "mask_bias"),
    ]


# Keys an official checkpoint may hold that inference does not use: the losses' temperatures, the
# official PAMR's constant shift kernels (training checkpoints are saved right after an evaluation
# that built them), and the frozen CLIP (a full training checkpoint's; ours comes from open_clip).
_OFFICIAL_DROPPED = re.compile(r"(tcli_loss|tclf_loss)\.logit_scale|pamr\.aff_(x|m|std)\.kernel|clip_(image|text)_encoder\..+")
_OFFICIAL_COPIED_BLOCK = re.compile(r"masker\.image_encoder\.backbone\.transformer\.resblocks\.(\d+)\..+")


def official_to_grounder_state(official: dict[str, torch.Tensor], last_block: int) -> dict[str, torch.Tensor]:
    """Rename an official TCL state dict to our Grounder's keys; `last_block` is the index of the
    frozen CLIP's last block (11 for ViT-B/16). Raises on any key it cannot place, naming it."""
    ours, unknown, other_blocks = {}, [], set()
    mapping = _official_key_map(last_block)
    for key, value in official.items():
        if _OFFICIAL_DROPPED.fullmatch(key):
            continue
        for pattern, target in mapping:
            if re.fullmatch(pattern, key):
                ours[re.sub(pattern, target, key)] = value
                break
        else:
            block = _OFFICIAL_COPIED_BLOCK.fullmatch(key)
            if block:
                other_blocks.add(int(block.group(1)))
            unknown.append(key)
    if other_blocks:
        raise ValueError(
            f"the official checkpoint copies CLIP block(s) {sorted(other_blocks)}, but this CLIP's last block is "
            f"{last_block}: TCL copies the last block only (ie_freeze = {last_block}); was it trained on another CLIP?")
    if unknown:
        raise ValueError(f"official TCL checkpoint has keys with no place in this model: {unknown[:8]}"
                         + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""))
    return ours


class _Opaque:
    """Stands in for classes the official checkpoint pickles beside the weights (its OmegaConf
    training config) when their package is not installed; the weights do not need them."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Opaque


def load_official_state(path: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of an official TCL `.pth` (a torch.save of {"model": state_dict, ...}).

    Loaded with torch's weights-only unpickler first. The official training code also pickles
    its OmegaConf config beside the weights, which that unpickler refuses: loading it anyway runs
    pickle code from the file, so it needs `trust_pickle=True` (only for files you trust).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"official TCL checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint; was the download cut off?")
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is damaged or not a checkpoint: a zip archive without its directory (a cut-off download?)")
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        raise ValueError(f"{path} is not a PyTorch checkpoint: neither a torch.save zip archive nor a pickle "
                         f"(it starts with {head!r})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # not a pickled object the safe loader refused: damaged bytes
            raise ValueError(f"{path} is damaged or not a checkpoint: {str(error).splitlines()[0]}") from None
        if not trust_pickle:
            raise ValueError(
                f"{path} holds pickled Python objects besides tensors (the official training code pickles its "
                f"OmegaConf config), so it cannot be loaded weights-only; pass --trust-pickle "
                f"(trust_pickle=True) if you trust the file. ({str(error).splitlines()[0]})"
            ) from None
        lenient = types.SimpleNamespace(Unpickler=_LenientUnpickler, load=pickle.load, __name__="lenient_pickle")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=lenient)
        except Exception as error:  # noqa: BLE001 - a damaged file fails in many ways
            raise ValueError(f"{path} could not be unpickled: {type(error).__name__}: {error}") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"{path} is damaged or not a checkpoint: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a TCL checkpoint: expected a state dict or {{'model': state dict}}, found {found}")
    return state


def import_official(path: str, output: str, clip: CLIPConfig | None = None, trust_pickle: bool = False) -> Grounder:
    """Import an official TCL checkpoint (the release, or one of the official training code's) into a
    Grounder on `clip` (default: open_clip's ViT-B-16 with the `openai` weights, QuickGELU, the
    official frozen CLIP) and save it as our checkpoint directory `output`. Every trained tensor
    must land in the model and every trained part of the model must come from the file, checked
    before any CLIP weights are loaded."""
    clip = resolve(clip or CLIPConfig(model_name="ViT-B-16", pretrained="openai"))
    official = load_official_state(path, trust_pickle)
    state = official_to_grounder_state(official, last_block=clip.model_cfg["vision_cfg"]["layers"] - 1)
    with torch.device("meta"):  # the model's structure without its weights
        expected = {k: v.shape for k, v in trainable_state_dict(Grounder(GrounderConfig(clip=clip), FrozenCLIP(clip, load_weights=False))).items()}
    missing = sorted(set(expected) - set(state))
    wrong_shape = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k])} in the model"
                   for k, v in state.items() if k in expected and v.shape != expected[k]]
    if missing or wrong_shape:
        raise ValueError(f"{path} does not fit {clip.model_name}: missing {missing}, shape mismatches {wrong_shape}")
    grounder = Grounder(GrounderConfig(clip=clip))
    grounder.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    save_grounder(output, grounder)
    return grounder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tcl.checkpoint", description="TCL checkpoint tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("import-official", help="import kakaobrain/tcl's released tcl.pth as a checkpoint directory")
    p.add_argument("source", help="the official .pth file (github.com/kakaobrain/tcl/releases/download/v1.0.0/tcl.pth)")
    p.add_argument("output", help="checkpoint directory to write (config.json + grounder.safetensors)")
    p.add_argument("--clip-model", default="ViT-B-16", help="open_clip model name of the frozen CLIP (default ViT-B-16)")
    p.add_argument("--clip-pretrained", default="openai", help="open_clip tag or local weights file (default openai)")
    p.add_argument("--trust-pickle", action="store_true", help="allow the file's pickled config objects (trusted files only)")
    args = parser.parse_args(argv)
    try:
        import_official(args.source, args.output, CLIPConfig(args.clip_model, args.clip_pretrained), args.trust_pickle)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {args.output}: evaluate with python jobs/evaluate.py --checkpoint {args.output} --datasets all --data-root DATA")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


__all__ = ["save_grounder", "load_grounder", "load_grounder_config", "trainable_state_dict", "import_official",
           "official_to_grounder_state", "CLIPConfig"]

if __name__ == "__main__":
    main()
