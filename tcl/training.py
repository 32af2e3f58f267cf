"""Training without Ray: configs with the paper's defaults, the optimizer's parameter groups and
schedule, one optimisation step, the training state a checkpoint holds, metrics and their plot,
and the two things the loop can train (TCL, or a CLIP). tcl.ray.train runs them on Ray Train.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Callable

import torch
from torch import nn

from tcl.model import TCLConfig


@dataclasses.dataclass
class DataConfig:
    shards: str = ""  # folder, glob-free prefix or s3://bucket/prefix of Parquet shards
    image_column: str | None = None  # None: jpg/png/webp/image, the first found
    caption_column: str | None = None  # None: txt, then caption
    endpoint_url: str | None = None  # S3-compatible endpoint (else AWS_ENDPOINT_URL[_S3])
    image_size: int = 224
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop, as the official code


@dataclasses.dataclass
class OptimConfig:
    batch_size: int = 1024  # global, over all workers
    total_steps: int = 50000
    warmup_steps: int = 15000
    base_lr: float = 3e-4  # scaled by batch_size / 4096, as the official code
    min_lr: float = 4e-5  # likewise
    weight_decay: float = 0.05  # not on biases and norms
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    grad_clip: float = 5.0


@dataclasses.dataclass
class RunConfig:
    name: str = "tcl"
    storage: str = "runs"  # local folder or s3:// prefix; the run lives in <storage>/<name>
    num_workers: int = 1  # with min_workers: the most workers of an elastic run
    min_workers: int | None = None  # elastic: Ray Train runs with min_workers..num_workers as nodes come and go
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict = dataclasses.field(default_factory=dict)  # extra Ray resources, e.g. {node_slot: 1}
    checkpoint_every: int = 1000
    checkpoints_to_keep: int = 2
    log_every: int = 20
    max_failures: int = 0  # worker failures Ray Train restarts from the latest checkpoint (-1: without limit, for spot nodes)
    seed: int = 0
    fail_at_step: int = -1  # test-only fault injection: rank 0 dies once at this step


@dataclasses.dataclass
class TrainConfig:
    model: TCLConfig = dataclasses.field(default_factory=TCLConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups, the official rule (kakaobrain/tcl utils/optimizer.py:13): no weight decay on
    1-D parameters (norm weights, biases) and names ending in ".bias"; everything else decays,
    0-dim scalars included (the decoder gates, Eq. 5's w and b, the loss temperatures).
    Frozen parameters are included: they join training when unfrozen (AdamW skips grad=None)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if name.startswith(("grounder.clip.", "module.grounder.clip.")):
            continue  # CLIP is never trained
        (no_decay if param.ndim == 1 or name.endswith(".bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, optim: OptimConfig) -> float:
    """Linear warmup from 1e-4 x lr, then cosine to min_lr; both scaled by batch_size / 4096."""
    scale = optim.batch_size / 4096
    base, minimum = optim.base_lr * scale, optim.min_lr * scale
    if step < optim.warmup_steps:
        return base * (1e-4 + (1 - 1e-4) * step / optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / max(1, optim.total_steps - optim.warmup_steps))
    return minimum + 0.5 * (base - minimum) * (1 + math.cos(math.pi * progress))


class MetricsLog:
    """Per-step metrics as JSON lines, kept in memory (it travels inside checkpoints) and appended
    to a local file for `tail -f`."""

    def __init__(self, path: str | None, history: list[dict] | None = None):
        self.path = path
        self.history = list(history or [])
        if path:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def append(self, record: dict) -> None:
        self.history.append(record)
        if self.path:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def plot_loss_curves(history: list[dict], path: str, title: str = "") -> None:
    """PNG of every loss component against the step (log-scale y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in history[0] if k.startswith("loss/")] if history else []
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = [r["step"] for r in history]
    for key in keys:
        values = [r.get(key, float("nan")) for r in history]
        axes[0 if key == "loss/total" else 1].plot(steps, values, label=key.removeprefix("loss/"))
    for ax, name in zip(axes, ["total loss", "components (unweighted)"]):
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ one step

def training_step(forward: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                  text_tokens: torch.Tensor, lr: float, autocast, grad_clip: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One AdamW step: losses of `forward(images, text_tokens)` (the model, or its DDP wrapper),
    backward, gradient clipping over `model`'s trainable parameters. Returns (losses, grad norm)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast:
        losses = forward(images, text_tokens)
    optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    return losses, grad_norm


# ------------------------------------------------------------------ the training state of a checkpoint

TRAINING_STATE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"


class TrainingStateError(ValueError):
    """A training checkpoint that cannot be resumed from; the message names the file and what is wrong."""


def trained_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without the frozen CLIP (which the config rebuilds)."""
    return {k: v for k, v in model.state_dict().items() if ".clip." not in f".{k}"}


def save_training_state(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                        history: list[dict], extra: dict | None = None) -> None:
    """training_state.pt (trained weights, optimizer, step, `extra`) and metrics.jsonl into `directory`."""
    torch.save({"model": trained_state(model), "optimizer": optimizer.state_dict(), "step": step, **(extra or {})},
               os.path.join(directory, TRAINING_STATE))
    with open(os.path.join(directory, METRICS_FILE), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in history)


def load_training_state(directory: str, model: nn.Module, optimizer: torch.optim.Optimizer, task: "Task",
                        device: torch.device) -> tuple[int, list[dict], dict]:
    """Restore `model` and `optimizer` from a checkpoint directory, strictly: every trained
    parameter and the optimizer's state must be there, with nothing unknown. Returns (step, metrics
    history, the state's other entries). TrainingStateError names what is missing otherwise."""
    path = os.path.join(directory, TRAINING_STATE)
    if not os.path.isfile(path):
        raise TrainingStateError(f"{path} is missing: not a training checkpoint")
    if os.path.getsize(path) == 0:
        raise TrainingStateError(f"{path} is empty (0 bytes): it cannot resume a run")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - truncated or garbage files fail in several ways
        reason = (str(error).strip().splitlines() or [""])[0]
        raise TrainingStateError(f"{path} cannot be read: {type(error).__name__}: {reason}") from None
    if not isinstance(state, dict):
        raise TrainingStateError(f"{path} holds a {type(state).__name__}, not a training state")
    missing = [k for k in ("model", "optimizer") if not state.get(k)] + ([] if isinstance(state.get("step"), int) else ["step"])
    if missing:
        raise TrainingStateError(f"{path} has no {', '.join(missing)} (empty or absent): it cannot resume a run")
    expected = trained_state(model)
    absent = sorted(set(expected) - set(state["model"]))
    unknown = sorted(set(state["model"]) - set(expected))
    wrong = [k for k in expected if k in state["model"] and state["model"][k].shape != expected[k].shape]
    if absent or unknown or wrong:
        raise TrainingStateError(f"{path} does not match the model: missing {absent[:6]}{'...' if len(absent) > 6 else ''}, "
                                 f"unknown {unknown[:6]}, other shapes {wrong[:6]}")
    model.load_state_dict(state["model"], strict=False)  # strict above, for the trained part; the CLIP is rebuilt
    task.on_step(model, state["step"])  # the trainable set of that step, before the optimizer state
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as error:
        raise TrainingStateError(f"{path}: the optimizer state does not fit this model: {error}") from None
    history = []
    metrics_path = os.path.join(directory, METRICS_FILE)
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            history = [json.loads(line) for line in f if line.strip()]
    extra = {k: v for k, v in state.items() if k not in ("model", "optimizer", "step")}
    return int(state["step"]), history, extra


# ------------------------------------------------------------------ tasks

@dataclasses.dataclass
class Task:
    """What the loop trains: TCL or a CLIP. `build` makes the module (on CPU) from the TrainConfig
    as a dict; its forward(images, text_tokens) returns its losses with "total". `save` writes the
    model files of a checkpoint directory; `on_step` applies a schedule and says whether the
    trainable set changed (a DDP wrapper is then rebuilt)."""

    build: Callable[[dict], nn.Module]
    save: Callable[[nn.Module, str], None]
    on_step: Callable[[nn.Module, int], bool] = lambda model, step: False


def _build_tcl(train_config: dict) -> nn.Module:
    from tcl import config as config_lib
    from tcl.model import TCL

    cfg = config_lib.from_dict(TrainConfig, train_config)
    return TCL(cfg.model)


def _save_tcl(model: nn.Module, directory: str) -> None:
    from tcl.checkpoint import save_grounder

    save_grounder(directory, model.grounder)


def _tcl_schedule(model: nn.Module, step: int) -> bool:
    return model.apply_schedule(step)


def _build_clip(train_config: dict) -> nn.Module:
    """A CLIP to pretrain (jobs/pretrain_clip.py): from scratch with the architecture
    model.grounder.clip.model_cfg, or from the weights model.grounder.clip.pretrained names (a
    saved CLIP's file, whose JSON beside it gives the architecture, or an open_clip tag)."""
    from tcl import config as config_lib
    from tcl.clip import ContrastiveCLIP

    clip = config_lib.from_dict(TrainConfig, train_config).model.grounder.clip
    if clip.model_cfg is None and not clip.pretrained:
        raise ValueError("pretraining a CLIP needs model.grounder.clip.model_cfg (its architecture) "
                         "or model.grounder.clip.pretrained (weights to start from)")
    return ContrastiveCLIP(clip)


TASKS: dict[str, Task] = {
    "tcl": Task(build=_build_tcl, save=_save_tcl, on_step=_tcl_schedule),
    "clip": Task(build=_build_clip, save=lambda model, directory: model.save(directory)),
}
