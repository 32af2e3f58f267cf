"""Training: configs with the paper's defaults, the optimizer and schedule, and the Ray Train
loop shared by TCL training (jobs/train.py) and tiny-CLIP pretraining (jobs/pretrain_clip.py).

The loop only trains: the driver scripts wire resources, data and storage. Each worker reads its
shard of the Ray Dataset, runs DDP, reports metrics every `log_every` steps and a checkpoint every
`checkpoint_every` steps; a rerun with the same run name resumes from the latest checkpoint (Ray
Train V2 restores its checkpoint manager from the run's storage).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
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
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources_per_worker: dict = dataclasses.field(default_factory=dict)  # extra Ray resources, e.g. {node_slot: 1}
    checkpoint_every: int = 1000
    checkpoints_to_keep: int = 2
    log_every: int = 20
    max_failures: int = 0  # worker failures Ray Train restarts from the latest checkpoint
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


# ------------------------------------------------------------------ the Ray Train loop

TRAINING_STATE = "training_state.pt"
METRICS_FILE = "metrics.jsonl"


@dataclasses.dataclass
class Task:
    """What the shared loop trains: TCL or a CLIP. `build` makes the module (on CPU), whose
    forward(images, text_tokens) returns its losses with "total"; `save` writes the model files
    of a checkpoint directory."""

    build: Callable[[dict], nn.Module]
    save: Callable[[nn.Module, str], None]
    on_step: Callable[[nn.Module, int], bool] = lambda model, step: False  # True: trainable set changed


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. config: {"train": TrainConfig as dict, "task": name in TASKS}."""
    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    from tcl import config as config_lib

    cfg = config_lib.from_dict(TrainConfig, config["train"])
    task = TASKS[config["task"]]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cuda", context.get_local_rank()) if cfg.run.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.run.seed)

    model = task.build(config["train"]).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=learning_rate(0, cfg.optim),
                                  betas=cfg.optim.betas, eps=cfg.optim.eps)
    step, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            state = torch.load(os.path.join(directory, TRAINING_STATE), map_location=device, weights_only=True)
            model.load_state_dict(state["model"], strict=False)
            task.on_step(model, state["step"])  # trainable set of the step we resume at, before the optimizer state
            optimizer.load_state_dict(state["optimizer"])
            step = state["step"]
            with open(os.path.join(directory, METRICS_FILE)) as f:
                history = [json.loads(line) for line in f if line.strip()]
        if rank == 0:
            print(f"resumed from checkpoint at step {step}")
    torch.manual_seed(cfg.run.seed + 1000 * rank + step)  # different Gumbel noise per worker and after resume
    task.on_step(model, step)

    def wrap(module: nn.Module) -> nn.Module:
        if world_size == 1:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    ddp_model = wrap(model)
    per_worker_batch = cfg.optim.batch_size // world_size
    local_log = os.path.join(tempfile.gettempdir(), "tcl-runs", cfg.run.name, METRICS_FILE) if rank == 0 else None
    metrics_log = MetricsLog(local_log, history)
    shard = ray.train.get_dataset_shard("train")
    image_mean = torch.tensor(cfg.model.grounder.image_mean, device=device).view(1, 3, 1, 1)
    image_std = torch.tensor(cfg.model.grounder.image_std, device=device).view(1, 3, 1, 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0

    while step < cfg.optim.total_steps:
        batches = shard.iter_torch_batches(batch_size=per_worker_batch, drop_last=True, device=device)
        wait_start = time.perf_counter()
        for batch in batches:
            data_wait += time.perf_counter() - wait_start
            if task.on_step(model, step):
                ddp_model = wrap(model)  # DDP fixes its parameter set when built
            if step == cfg.run.fail_at_step and rank == 0 and _first_failure(cfg):
                os._exit(1)  # test-only: a worker dies; Ray Train restarts from the latest checkpoint
            lr = learning_rate(step, cfg.optim)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = (batch["image"].float() / 255 - image_mean) / image_std  # uint8 from the data pipeline
            with autocast:
                losses = ddp_model(images, batch["text"])
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
            optimizer.step()
            step += 1
            window_samples += per_worker_batch * world_size

            last = step >= cfg.optim.total_steps
            if step % cfg.run.log_every == 0 or last:
                elapsed = time.perf_counter() - window_start
                record = {"step": step, "lr": lr, "grad_norm": float(grad_norm),
                          **{f"loss/{k}": float(v.detach()) for k, v in losses.items()},
                          "samples_per_s": window_samples / elapsed, "data_wait_fraction": data_wait / elapsed}
                metrics_log.append(record)
                if rank == 0:
                    print(f"step {step}/{cfg.optim.total_steps} " + " ".join(
                        f"{k.removeprefix('loss/')} {v:.4g}" for k, v in record.items() if k != "step"), flush=True)
                window_start, data_wait, window_samples = time.perf_counter(), 0.0, 0
                if step % cfg.run.checkpoint_every == 0 or last:
                    _report_with_checkpoint(record, model, optimizer, step, metrics_log.history, task, rank)
                else:
                    ray.train.report(record)
            if last:
                break
            wait_start = time.perf_counter()


def _report_with_checkpoint(record: dict, model: nn.Module, optimizer, step: int, history: list[dict], task: Task, rank: int) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(record)  # every worker reports the same number of times
        return
    with tempfile.TemporaryDirectory() as directory:
        task.save(model, directory)
        trainable = {k: v for k, v in model.state_dict().items() if ".clip." not in f".{k}"}
        torch.save({"model": trainable, "optimizer": optimizer.state_dict(), "step": step}, os.path.join(directory, TRAINING_STATE))
        with open(os.path.join(directory, METRICS_FILE), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in history)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _first_failure(cfg: TrainConfig) -> bool:
    """True only the first time (a marker file in the local temp folder remembers)."""
    marker = os.path.join(tempfile.gettempdir(), "tcl-runs", cfg.run.name, f"failed-at-{cfg.run.fail_at_step}")
    if os.path.exists(marker):
        return False
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    return True


# ------------------------------------------------------------------ tasks

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
