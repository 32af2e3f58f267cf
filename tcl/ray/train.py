"""Training on Ray Train: the loop each worker runs, and `fit`, which wires resources, data and
storage around it (a TorchTrainer).

The loop only trains. Each worker reads its shard of the Ray Dataset, runs DDP, reports metrics
every `log_every` steps and a checkpoint every `checkpoint_every` steps. A rerun with the same run
name resumes from the run's latest intact checkpoint (Ray Train V2 restores its checkpoint manager
from the run's storage); `run.max_failures` restarts dead workers from it.
"""
from __future__ import annotations

import json
import os
import tempfile
import time

import torch
from torch import nn

from tcl import config as config_lib
from tcl import storage
from tcl.console import say
from tcl.training import (METRICS_FILE, TASKS, MetricsLog, TrainConfig, TrainingStateError, learning_rate,
                          load_training_state, param_groups, plot_loss_curves, save_training_state, training_step)


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry point. config: {"train": TrainConfig as a dict, "task": a name in TASKS,
    "console": a ConsoleRelay for the lines the driver prints, "position": the stream's
    DataPosition, "items_per_epoch": the stream's row groups per epoch}."""
    import dataclasses

    import ray.train
    from torch.nn.parallel import DistributedDataParallel

    from tcl.images import normalize

    cfg = config_lib.from_dict(TrainConfig, config["train"])
    task, console = TASKS[config["task"]], config["console"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = torch.device("cuda", context.get_local_rank()) if cfg.run.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.run.seed)

    # The global batch split over however many workers there are (elastic runs vary): kept when
    # they divide it, else the largest multiple of their number below it (and said so).
    per_worker_batch = cfg.optim.batch_size // world_size
    optim = dataclasses.replace(cfg.optim, batch_size=per_worker_batch * world_size)
    if optim.batch_size != cfg.optim.batch_size and rank == 0:
        console.put(f"warning: {world_size} workers do not divide the global batch {cfg.optim.batch_size}: "
                    f"{per_worker_batch} per worker, {optim.batch_size} in all (the learning rate follows)")

    model = task.build(config["train"]).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=learning_rate(0, optim),
                                  betas=optim.betas, eps=optim.eps)
    step, history, data_position = resume(model, optimizer, task, device, console if rank == 0 else None)
    config["position"].set(data_position)  # the stream starts there (every worker sets it before asking for data)
    torch.manual_seed(cfg.run.seed + 1000 * rank + step)  # different Gumbel noise per worker and after a resume
    task.on_step(model, step)

    def wrap(module: nn.Module) -> nn.Module:
        if world_size == 1:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)

    ddp_model = wrap(model)
    metrics_log = MetricsLog(None, history)
    shard = ray.train.get_dataset_shard("train")
    mean, std = cfg.model.grounder.image_mean, cfg.model.grounder.image_std
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    items_per_epoch = config["items_per_epoch"]
    seen = torch.tensor(data_position - 1, device=device)  # the furthest stream position this worker has consumed
    window = Window()
    epoch = EpochTimes(max(0, data_position) // items_per_epoch)

    wait_start = time.perf_counter()
    for batch in shard.iter_torch_batches(batch_size=per_worker_batch, drop_last=True, device=device):
        waited = time.perf_counter() - wait_start
        window.wait += waited
        epoch.wait += waited
        if task.on_step(model, step):
            ddp_model = wrap(model)  # DDP fixes its parameter set when built
        if step == cfg.run.fail_at_step and rank == 0 and _first_failure(cfg):
            os._exit(1)  # test-only: a worker dies; Ray Train restarts from the latest checkpoint
        lr = learning_rate(step, optim)
        images = normalize(batch["image"], mean, std)  # uint8 from the data pipeline
        losses, grad_norm = training_step(ddp_model, model, optimizer, images, batch["text"], lr, autocast, optim.grad_clip)
        seen = torch.maximum(seen, batch["position"].max())
        step += 1
        window.samples += optim.batch_size
        epoch.samples += optim.batch_size

        last = step >= cfg.optim.total_steps
        if step % cfg.run.log_every == 0 or last:
            record = {"step": step, "lr": lr, "grad_norm": float(grad_norm),
                      **{f"loss/{k}": float(v.detach()) for k, v in losses.items()}, **window.rates()}
            current = int(seen.item()) // items_per_epoch
            if current > epoch.number:  # an epoch ended in this window: its record, then the next one's
                record["epoch_end"] = epoch.record(step)
                if rank == 0:
                    console.put(epoch_line(record["epoch_end"]))
                epoch = EpochTimes(current)
            record["epoch"] = epoch.number
            record["stream_position"] = int(seen.item())  # the furthest row group this worker has consumed
            metrics_log.append(record)
            if rank == 0:
                console.put(step_line(record, cfg.optim.total_steps))
            window = Window()
            if step % cfg.run.checkpoint_every == 0 or last:
                position = stream_position(seen, world_size)
                _report_with_checkpoint(record, model, optimizer, step, metrics_log.history, task, rank, {"data_position": position})
            else:
                ray.train.report(record)
        if last:
            return
        wait_start = time.perf_counter()
    raise ValueError(f"the data ran out after step {step} of {cfg.optim.total_steps}: fewer usable rows than the run needs "
                     f"(optim.batch_size={cfg.optim.batch_size} x optim.total_steps); are most images unreadable?")


class Window:
    """Samples and data-waiting time since the last logged step."""

    def __init__(self) -> None:
        self.start, self.wait, self.samples = time.perf_counter(), 0.0, 0

    def rates(self) -> dict:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"samples_per_s": self.samples / elapsed, "data_wait_fraction": self.wait / elapsed}


class EpochTimes(Window):
    """The same over one epoch of the stream."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number

    def record(self, step: int) -> dict:
        return {"epoch": self.number, "step": step, **self.rates()}


def stream_position(seen: torch.Tensor, world_size: int) -> int:
    """Where a resumed run's stream starts: after the furthest position any worker consumed."""
    if world_size > 1:
        import torch.distributed as dist

        seen = seen.clone()
        dist.all_reduce(seen, op=dist.ReduceOp.MAX)
    return int(seen.item()) + 1


def epoch_line(record: dict) -> str:
    return (f"epoch {record['epoch']} done at step {record['step']}: {record['samples_per_s']:.1f} samples/s, "
            f"data wait {100 * record['data_wait_fraction']:.0f}%")


def step_line(record: dict, total_steps: int) -> str:
    losses = " ".join(f"{k.removeprefix('loss/')} {v:.4g}" for k, v in record.items() if k.startswith("loss/"))
    return (f"step {record['step']}/{total_steps}  {losses}  lr {record['lr']:.3g}  grad_norm {record['grad_norm']:.3g}  "
            f"{record['samples_per_s']:.1f} samples/s  data wait {100 * record['data_wait_fraction']:.0f}%")


def resume(model: nn.Module, optimizer, task, device: torch.device, console=None) -> tuple[int, list[dict], int]:
    """(step, metrics history, data stream position) of the run's latest intact checkpoint, its
    state loaded into model and optimizer; (0, [], 0) for a new run. A damaged checkpoint is
    reported and the one before it tried; if none is intact, the run stops with the reasons
    rather than start from scratch."""
    import ray.train

    latest = ray.train.get_checkpoint()
    if latest is None:
        return 0, [], 0
    failures = []
    for checkpoint in [latest, *_older_checkpoints(latest)]:
        try:
            with checkpoint.as_directory() as directory:
                step, history, extra = load_training_state(directory, model, optimizer, task, device)
        except TrainingStateError as error:
            failures.append(str(error))
            if console is not None:
                console.put(f"warning: checkpoint {checkpoint.path} cannot be resumed from: {error}; trying the one before it")
            continue
        if console is not None:
            console.put(f"resumed from {checkpoint.path} at step {step}" + (f" ({len(failures)} damaged newer checkpoint(s) skipped)" if failures else ""))
        return step, history, int(extra.get("data_position", 0))
    raise TrainingStateError("no intact checkpoint to resume from:\n  " + "\n  ".join(failures))


def _older_checkpoints(latest) -> list:
    """The run's other checkpoint_* folders, newest first (their names sort by time)."""
    import pyarrow.fs as pafs
    import ray.train

    parent = os.path.dirname(latest.path.rstrip("/"))
    try:
        infos = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return []
    names = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                    and os.path.basename(i.path).startswith("checkpoint_") and i.path != latest.path.rstrip("/")), reverse=True)
    return [ray.train.Checkpoint(path, filesystem=latest.filesystem) for path in names if path < latest.path.rstrip("/")]


def _report_with_checkpoint(record: dict, model: nn.Module, optimizer, step: int, history: list[dict], task, rank: int,
                            extra: dict) -> None:
    import ray.train

    if rank != 0:
        ray.train.report(record)  # every worker reports the same number of times
        return
    with tempfile.TemporaryDirectory() as directory:
        task.save(model, directory)
        save_training_state(directory, model, optimizer, step, history, extra)
        ray.train.report(record, checkpoint=ray.train.Checkpoint.from_directory(directory))


def _first_failure(cfg: TrainConfig) -> bool:
    """True only the first time (a marker file in the local temp folder remembers)."""
    marker = os.path.join(tempfile.gettempdir(), "tcl-runs", cfg.run.name, f"failed-at-{cfg.run.fail_at_step}")
    if os.path.exists(marker):
        return False
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    return True


# ------------------------------------------------------------------ the driver

def storage_for(uri: str, endpoint_url: str | None):
    """(storage_path, storage_filesystem) for Ray Train's RunConfig, local or S3."""
    if storage.is_s3(uri):
        filesystem, path = storage.resolve(uri, endpoint_url=endpoint_url)
        return path, filesystem
    return os.path.abspath(uri), None


def check_workers(cfg: TrainConfig) -> int | tuple[int, int]:
    """Ray Train's num_workers: run.num_workers, or (run.min_workers, run.num_workers) for an
    elastic run, which Ray Train resizes as nodes come and go (spot instances). The global batch
    must split over the fixed number of workers; an elastic run keeps it wherever the number of
    workers divides it and otherwise rounds it down to a multiple (said on the console)."""
    if cfg.run.min_workers is None:
        if cfg.optim.batch_size % cfg.run.num_workers:
            raise ValueError(f"optim.batch_size={cfg.optim.batch_size} must divide evenly over run.num_workers={cfg.run.num_workers}")
        return cfg.run.num_workers
    if not 1 <= cfg.run.min_workers <= cfg.run.num_workers:
        raise ValueError(f"run.min_workers={cfg.run.min_workers} must be between 1 and run.num_workers={cfg.run.num_workers}")
    if cfg.optim.batch_size < cfg.run.num_workers:
        raise ValueError(f"optim.batch_size={cfg.optim.batch_size} is smaller than run.num_workers={cfg.run.num_workers}")
    return (cfg.run.min_workers, cfg.run.num_workers)


def fit(cfg: TrainConfig, task: str = "tcl") -> dict:
    """Train `task` ("tcl" or "clip") with Ray Train; the run folder <run.storage>/<run.name> gets
    the checkpoints, metrics.jsonl and loss_curves.png. Returns a summary (run folder, latest
    checkpoint, final metrics, images skipped as unreadable)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    from tcl.clip import make_tokenizer
    from tcl.ray.data import DataPosition, SkipCounter, training_stream
    from tcl.ray.runtime import ConsoleRelay, init, run_mailbox

    init()
    workers = check_workers(cfg)
    mailbox = run_mailbox()
    skip_counter, console = SkipCounter(mailbox), ConsoleRelay(mailbox)
    stream = training_stream(cfg, make_tokenizer(cfg.model.grounder.clip), skip_counter, position=DataPosition(mailbox))
    storage_path, filesystem = storage_for(cfg.run.storage, cfg.data.endpoint_url)
    run_dir = storage.join(cfg.run.storage, cfg.run.name)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config_lib.to_dict(cfg), "task": task, "console": console, "position": stream.position,
                           "items_per_epoch": stream.items_per_epoch},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=cfg.run.use_gpu,
                                               resources_per_worker={"CPU": cfg.run.cpus_per_worker, **cfg.run.resources_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
        datasets={"train": stream.dataset},
    )
    count = f"{workers[0]} to {workers[1]}" if isinstance(workers, tuple) else str(workers)
    say(f"training {task} in {run_dir}: {cfg.optim.total_steps} steps at batch {cfg.optim.batch_size} on "
        f"{count} {'GPU' if cfg.run.use_gpu else 'CPU'} worker(s)")
    with console:
        try:
            result = trainer.fit()
        finally:
            skipped = skip_counter.by_reason()
    ray.kill(mailbox)  # the run's mailbox: read for the last time
    summary = {"run_dir": run_dir, "checkpoint": None, "skipped_images": skipped}
    if result.checkpoint is not None:
        summary["checkpoint"] = result.checkpoint.path if filesystem is None else f"s3://{result.checkpoint.path}"
        with result.checkpoint.as_directory() as directory:
            with open(os.path.join(directory, METRICS_FILE), "rb") as f:
                metrics = f.read()
        storage.write_bytes_atomic(storage.join(run_dir, METRICS_FILE), metrics, endpoint_url=cfg.data.endpoint_url)
        history = [json.loads(line) for line in metrics.decode().splitlines() if line.strip()]
        if history:
            summary["final"] = history[-1]
            with tempfile.TemporaryDirectory() as tmp:
                png = os.path.join(tmp, "loss_curves.png")
                plot_loss_curves(history, png, title=f"{task} run {cfg.run.name}")
                with open(png, "rb") as f:
                    storage.write_bytes_atomic(storage.join(run_dir, "loss_curves.png"), f.read(), endpoint_url=cfg.data.endpoint_url)
    say(f"run folder: {run_dir}\nlatest checkpoint: {summary['checkpoint']}\n"
        f"images skipped as unreadable: {sum(skipped.values())}" + (f" {skipped}" if skipped else ""))
    return summary


def pretrain_clip(cfg: TrainConfig, world=None) -> dict:
    """Train a CLIP from scratch (or on from saved weights) on the shards with the contrastive loss,
    then measure its zero-shot accuracy at naming the largest shape of single-object scenes of the
    synthetic `world` (8 classes, the nine prompt templates TCL uses)."""
    from tcl.clip import CLIP_WEIGHTS_FILE, CLIPConfig
    from tcl.data.synthetic import zero_shot_shape_accuracy

    summary = fit(cfg, "clip")
    checkpoint = summary["checkpoint"]
    if checkpoint and not storage.is_s3(checkpoint):
        weights = os.path.join(checkpoint, CLIP_WEIGHTS_FILE)
        accuracy = zero_shot_shape_accuracy(CLIPConfig(cfg.model.grounder.clip.model_name, pretrained=weights),
                                            cfg.model.grounder.image_mean, cfg.model.grounder.image_std,
                                            image_size=cfg.data.image_size, world=world)
        summary.update(clip_weights=weights, zero_shot_accuracy=accuracy)
        import dataclasses

        from tcl.data.synthetic import SceneConfig

        with open(os.path.join(summary["run_dir"], "zero_shot.json"), "w") as f:
            json.dump({"checkpoint": checkpoint, "zero_shot_accuracy": accuracy, "classes": 8,
                       "world": dataclasses.asdict(world or SceneConfig())}, f, indent=2)
        say(f"CLIP weights: {weights}\nzero-shot accuracy, largest shape of single-object scenes (8 classes): {accuracy:.1%}")
    return summary
