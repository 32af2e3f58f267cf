"""The frozen CLIP that TCL grounds text in, built through open_clip.

What TCL needs from CLIP (paper Sec. 3.2, App. B; the official code's facts):
- dense features: the tokens after the second-to-last block of the image tower, at any input
  size (positional embeddings are interpolated, so 448 windows and non-square inputs work);
- the last block run with *self-only attention* (every token attends only to itself, which is
  exactly the value path: out_proj(v_proj(ln_1(x))); residual and MLP kept) -- MaskCLIP's dense
  features, used by the knowledge-preservation branch and copied into the grounder;
- the ordinary global image embedding (to re-encode masked images for the image-level loss);
- text embeddings averaged over prompt templates.

All CLIP weights are frozen (requires_grad=False), but nothing here runs under no_grad: the
image-level loss needs gradients to flow *through* the frozen image encoder into the mask.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections import OrderedDict
from typing import Callable, Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

# The official TCL evaluation's "custom" template set: seven ImageNet templates plus two plurals.
PROMPT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of many {}.",
    "a photo of {}s.",
)


@dataclasses.dataclass
class CLIPConfig:
    """Where the frozen CLIP comes from.

    `model_name` is an open_clip ViT name (`ViT-B-16`, ...). `pretrained` is an open_clip tag
    (`openai`, `laion2b_s34b_b88k`, ...: from the local hub cache, else downloaded) or a local
    weights file. `model_cfg` gives the architecture explicitly (open_clip's config dict:
    embed_dim, vision_cfg, text_cfg, quick_gelu), for models open_clip does not know by name, such
    as the project's tiny CLIPs; checkpoints record it resolved (see `resolve`).

    The activation is part of the architecture: OpenAI's weights were trained with QuickGELU, so
    `ViT-B-16` + `openai` builds QuickGELU blocks, as open_clip's pretrained table records for
    that tag. A local copy of OpenAI's weights is a file, not a tag: name the model
    `ViT-B-16-quickgelu` for it.
    """

    model_name: str = "ViT-B-16"
    pretrained: str | None = "openai"
    model_cfg: dict | None = None


def pretrained_is_file(pretrained: str | None) -> bool:
    return bool(pretrained) and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")))


CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # open_clip's hub layout: weights ...
CLIP_CONFIG_FILE = "open_clip_config.json"  # ... and {"model_cfg": architecture} beside them
REQUIRED_ARCHITECTURE_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


def with_architecture(config: CLIPConfig) -> CLIPConfig:
    """Fill in model_cfg from an open_clip_config.json beside a local weights file (the layout of
    open_clip's hub checkpoints, and of the CLIPs jobs/pretrain_clip.py saves), if there is one."""
    if config.model_cfg is not None or not pretrained_is_file(config.pretrained):
        return config
    path = os.path.join(os.path.dirname(os.path.abspath(config.pretrained)), CLIP_CONFIG_FILE)
    if not os.path.isfile(path):
        return config
    import json

    with open(path) as f:
        return dataclasses.replace(config, model_cfg=json.load(f)["model_cfg"])


def pretrained_tag_config(config: CLIPConfig) -> dict | None:
    """open_clip's record of the pretrained tag (download places, quick_gelu, ...); None when
    `pretrained` is a file or nothing. An unknown tag is an error that lists the known ones."""
    if not config.pretrained or pretrained_is_file(config.pretrained):
        return None
    tag_config = open_clip.get_pretrained_cfg(config.model_name, config.pretrained)
    if not tag_config:
        tags = open_clip.list_pretrained_tags_by_model(config.model_name)
        raise ValueError(
            f"pretrained={config.pretrained!r} is neither a local weights file nor an open_clip tag of "
            f"{config.model_name!r} (its tags: {tags or 'none'}); a file path needs a '/' or a weights suffix"
        )
    return tag_config


def resolve(config: CLIPConfig) -> CLIPConfig:
    """`config` with its complete architecture in model_cfg, `quick_gelu` included: the explicit
    model_cfg, else the one beside a local weights file, else open_clip's config for model_name.
    Where the pretrained tag records how its weights were trained (QuickGELU for OpenAI's), the
    architecture follows it; an explicit quick_gelu that contradicts the tag is an error (open_clip
    only warns, and the features then come from a network the weights do not belong to)."""
    config = with_architecture(config)
    if config.model_cfg is not None:
        architecture = copy.deepcopy(dict(config.model_cfg))
        missing = [k for k in REQUIRED_ARCHITECTURE_KEYS if k not in architecture]
        if missing:
            raise ValueError(f"{config.model_name}: model_cfg lacks {missing}; it must be a whole open_clip "
                             f"architecture ({', '.join(REQUIRED_ARCHITECTURE_KEYS)}, optionally quick_gelu)")
    else:
        architecture = open_clip.get_model_config(config.model_name)
        if architecture is None:
            raise ValueError(
                f"unknown open_clip model {config.model_name!r}; ViT names include "
                f"{[m for m in open_clip.list_models() if m.startswith('ViT-B')][:6]} "
                "(see open_clip.list_models()), or give model_cfg for a custom architecture"
            )
    tag_config = pretrained_tag_config(config)
    trained_with = bool(tag_config.get("quick_gelu", False)) if tag_config is not None else None
    if "quick_gelu" not in architecture:
        architecture["quick_gelu"] = bool(trained_with)
    elif trained_with is not None and bool(architecture["quick_gelu"]) != trained_with:
        fix = f"{config.model_name}-quickgelu" if trained_with else config.model_name.removesuffix("-quickgelu")
        raise ValueError(
            f"activation mismatch: the CLIP {config.model_name!r} is configured with quick_gelu="
            f"{bool(architecture['quick_gelu'])}, but the pretrained weights {config.pretrained!r} were trained with "
            f"quick_gelu={trained_with}; build {fix!r} (or drop quick_gelu from model_cfg) so that the weights "
            f"run in the network they were trained in"
        )
    return dataclasses.replace(config, model_cfg=architecture)


def pretrained_weights_file(config: CLIPConfig) -> str:
    """The local file of `config.pretrained`: the file itself, or a tag's weights from the local
    hub cache, else downloaded."""
    if pretrained_is_file(config.pretrained):
        if not os.path.isfile(config.pretrained):
            raise FileNotFoundError(f"CLIP checkpoint file not found: {config.pretrained}")
        return config.pretrained
    from tcl.hub import download_tag_weights

    return download_tag_weights(config.model_name, config.pretrained, pretrained_tag_config(config))


def create_open_clip(config: CLIPConfig, load_weights: bool = True) -> nn.Module:
    """Build the open_clip model `config` resolves to, with its weights (`load_weights=False`: the
    same architecture with random weights, for tests and benchmarks), or fail with an error that says why."""
    config = resolve(config)
    architecture = dict(config.model_cfg)
    if architecture.pop("custom_text", False):
        raise ValueError(f"{config.model_name}: custom text towers are not supported (TCL needs open_clip's CLIP text tower)")
    model = open_clip.CLIP(**architecture)
    if not isinstance(getattr(model, "visual", None), VisionTransformer):
        raise ValueError(f"{config.model_name}: TCL needs a ViT image tower, got {type(model.visual).__name__}")
    blocks = model.visual.transformer.resblocks
    if not all(isinstance(b, ResidualAttentionBlock) for b in blocks) or len(blocks) < 2:
        raise ValueError(f"{config.model_name}: needs at least two standard open_clip attention blocks")
    if model.visual.attn_pool is not None:
        raise ValueError(f"{config.model_name}: attention-pooled image towers are not supported")
    if load_weights and config.pretrained:
        open_clip.load_checkpoint(model, pretrained_weights_file(config))
    return model


def make_tokenizer(config: CLIPConfig) -> Callable[[Sequence[str]], torch.Tensor]:
    """The tokenizer of the CLIP `config` describes (no weights needed): texts -> [N, L] int64."""
    config = with_architecture(config)
    if config.model_cfg is None:
        return open_clip.get_tokenizer(config.model_name)
    context_length = config.model_cfg.get("text_cfg", {}).get("context_length", 77)
    if config.model_name in open_clip.list_models():
        return open_clip.get_tokenizer(config.model_name, context_length=context_length)
    return open_clip.SimpleTokenizer(context_length=context_length)


def interpolate_positional_embedding(pos_embed: torch.Tensor, source_grid: tuple[int, int], target_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of the patch positional embeddings; the class token's is kept. [1+h*w, D]."""
    if tuple(source_grid) == tuple(target_grid):
        return pos_embed
    cls_pos, grid_pos = pos_embed[:1], pos_embed[1:]
    grid_pos = grid_pos.reshape(1, source_grid[0], source_grid[1], -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos.float(), size=target_grid, mode="bicubic", align_corners=False)
    grid_pos = grid_pos.permute(0, 2, 3, 1).reshape(target_grid[0] * target_grid[1], -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid_pos], dim=0)


def self_only_attention_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """Run an open_clip block with every token attending only to itself. x: [B, L, D].

    Softmax over a single key is 1, so attention reduces to the value projection followed by the
    output projection; computing that directly is exact and avoids the L x L attention matrix.
    """
    attn = block.attn
    width = x.shape[-1]
    value = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], attn.in_proj_bias[2 * width:])
    x = x + block.ls_1(attn.out_proj(value))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


class FrozenCLIP(nn.Module):
    """open_clip CLIP with frozen weights and the feature taps TCL needs."""

    def __init__(self, config: CLIPConfig, load_weights: bool = True):
        super().__init__()
        self.config = config = resolve(config)
        self.model = create_open_clip(config, load_weights)
        self.model.requires_grad_(False)
        self.model.eval()
        visual = self.model.visual
        self.visual = visual
        self.patch_size: int = visual.patch_size[0]
        self.width: int = visual.transformer.width
        self.embed_dim: int = visual.output_dim
        self.tokenizer = make_tokenizer(config)

    def train(self, mode: bool = True) -> "FrozenCLIP":
        # Frozen means frozen: dropout and the like stay in eval mode whatever the parent does.
        return super().train(False)

    @property
    def last_block(self) -> ResidualAttentionBlock:
        return self.visual.transformer.resblocks[-1]

    def _batch_first(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.visual.transformer.batch_first:
            return fn(x)
        return fn(x.transpose(0, 1)).transpose(0, 1)

    def embed_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Patch + class tokens with interpolated positions, before the blocks. [B, 1+h*w, D]."""
        if images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, D, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + interpolate_positional_embedding(visual.positional_embedding, visual.grid_size, grid).to(x.dtype)
        return visual.ln_pre(x), grid

    def _run_blocks(self, x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
        def run(t: torch.Tensor) -> torch.Tensor:
            for block in blocks:
                t = block(t)
            return t
        return self._batch_first(x, run)

    def penultimate_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Output of the second-to-last block: the grounder's input. [B, 1+h*w, D] and the grid (h, w)."""
        x, grid = self.embed_patches(images)
        return self._run_blocks(x, self.visual.transformer.resblocks[:-1]), grid

    def dense_embedding(self, penultimate: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """MaskCLIP dense embedding: last block with self-only attention, ln_post, proj. [B, C, h, w]."""
        x = self._batch_first(penultimate, lambda t: self_only_attention_block(self.last_block, t))
        x = project_tokens(x[:, 1:], self.visual.ln_post, self.visual.proj)
        return x.transpose(1, 2).reshape(x.shape[0], -1, *grid)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Ordinary global image embedding (any input size), un-normalised. [B, C]."""
        x, _ = self.embed_patches(images)
        x = self._run_blocks(x, self.visual.transformer.resblocks)
        pooled, _ = self.visual._pool(x)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised text embeddings. [N, C]."""
        return self.model.encode_text(tokens)

    @torch.no_grad()
    def prompted_text_embedding(self, texts: Sequence[str], templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
        """Each text put in every template, embeddings averaged un-normalised, then L2-normalised. [N, C]."""
        device = self.visual.conv1.weight.device
        prompts = [template.format(text) for text in texts for template in templates]
        tokens = self.tokenize(prompts).to(device)
        embeddings = torch.cat([self.encode_text(chunk) for chunk in tokens.split(1024)])
        embeddings = embeddings.float().reshape(len(texts), len(templates), -1).mean(dim=1)
        return F.normalize(embeddings, dim=-1)


def project_tokens(tokens: torch.Tensor, layer_norm: nn.Module, proj: torch.Tensor | None) -> torch.Tensor:
    """CLIP's final LayerNorm and projection applied to every token. [B, L, D] -> [B, L, C]."""
    tokens = layer_norm(tokens)
    return tokens @ proj if proj is not None else tokens


class TextEmbeddingCache:
    """LRU cache of prompted text embeddings, one entry per text, so repeated class lists and
    repeated texts across requests cost nothing after their first use."""

    def __init__(self, clip: FrozenCLIP, max_entries: int = 4096):
        self.clip = clip
        self.max_entries = max_entries
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.misses = 0

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self.misses += len(missing)
            for text, embedding in zip(missing, self.clip.prompted_text_embedding(missing)):
                self._cache[text] = embedding
        for text in texts:
            self._cache.move_to_end(text)
        embeddings = torch.stack([self._cache[t] for t in texts])
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return embeddings


def tiny_model_cfg(
    image_size: int = 64, patch_size: int = 8, width: int = 64, layers: int = 4, heads: int = 4,
    embed_dim: int = 64, context_length: int = 32, text_width: int = 64, text_layers: int = 2,
) -> dict:
    """open_clip architecture dict for a small ViT CLIP (tests, the synthetic world, CPU demos)."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "patch_size": patch_size, "width": width, "layers": layers, "head_width": width // heads},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": text_width, "heads": heads, "layers": text_layers},
    }


class ContrastiveCLIP(nn.Module):
    """A trainable open_clip CLIP with the standard contrastive loss: how the project makes its
    own small CLIPs (jobs/pretrain_clip.py) where no pretrained one can be downloaded."""

    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config = resolve(config)  # a saved tiny CLIP to start from: its JSON has the architecture
        self.model = create_open_clip(config)

    def forward(self, images: torch.Tensor, text_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        from tcl.losses import info_nce

        logit_scale = self.model.logit_scale.exp().clamp(max=100)
        loss = info_nce(self.model.encode_image(images), self.model.encode_text(text_tokens), logit_scale)
        return {"total": loss}

    def save(self, directory: str) -> str:
        """Write open_clip_model.safetensors (+ its architecture as open_clip_config.json); returns
        the weights file, which CLIPConfig(pretrained=..., model_cfg=...) loads."""
        import json

        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CLIP_WEIGHTS_FILE)
        save_file({k: v.detach().contiguous() for k, v in self.model.state_dict().items()}, path)
        with open(os.path.join(directory, CLIP_CONFIG_FILE), "w") as f:
            json.dump({"model_name": self.config.model_name, "model_cfg": self.config.model_cfg}, f, indent=2)
        return path


@torch.no_grad()
def zero_shot_predictions(clip: FrozenCLIP, images: torch.Tensor, class_names: Sequence[str],
                          templates: Sequence[str] = PROMPT_TEMPLATES) -> torch.Tensor:
    """Index of the class whose prompted text embedding is nearest each image's embedding. [B]."""
    text = clip.prompted_text_embedding(class_names, templates)
    image = F.normalize(clip.encode_image(images).float(), dim=-1)
    return (image @ text.t()).argmax(dim=-1)
