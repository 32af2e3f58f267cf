"""Train TCL on image-text Parquet shards with Ray Data + Ray Train.

    ray job submit --working-dir . -- python jobs/train.py --config configs/synthetic.yaml
    python jobs/train.py --config configs/synthetic.yaml run.num_workers=2 optim.total_steps=200

Every config value can be overridden as key.sub=value (YAML syntax for the value). The paper's
defaults (batch 1024, 50k steps, 15k warmup then cosine, AdamW 0.9/0.999 eps 1e-6, wd 0.05, lr 3e-4
and min lr 4e-5 scaled by batch/4096, clip 5.0, copied block unfrozen at 30k) live in
tcl/training.py and tcl/model.py. A rerun with the same run.name and run.storage resumes from the
run's latest checkpoint. The run folder <run.storage>/<run.name> (local or s3://) gets the Ray
Train checkpoints, metrics.jsonl and loss_curves.png; the latest checkpoint loads directly with
Segmenter.from_checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tcl import config as config_lib  # noqa: E402
from tcl.training import TrainConfig  # noqa: E402


def parse_args(argv: list[str] | None = None, description: str = __doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); values not given keep their defaults")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: RAY_ADDRESS, else start a local one)")
    parser.add_argument("--num-cpus", type=int, default=None,
                        help="logical CPUs for a local Ray instance (default: max(8, cores): small machines need "
                             "more logical CPUs than cores so data loading and workers both get a slot)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. run.num_workers=2 optim.batch_size=64")
    return parser.parse_args(argv)


def init_ray(args: argparse.Namespace) -> None:
    import ray

    if ray.is_initialized():
        return
    address = args.ray_address or os.environ.get("RAY_ADDRESS")
    # The Parquet reader starts dozens of metadata actors per read by default: slow on small machines.
    env = {"RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    if address:
        ray.init(address=address, runtime_env={"env_vars": env})
    else:
        ray.init(num_cpus=args.num_cpus or max(8, os.cpu_count() or 1), include_dashboard=False, runtime_env={"env_vars": env})


def storage_for(uri: str, endpoint_url: str | None):
    """(storage_path, storage_filesystem) for Ray Train's RunConfig, local or S3."""
    from tcl import storage

    if storage.is_s3(uri):
        filesystem, path = storage.resolve(uri, endpoint_url=endpoint_url)
        return path, filesystem
    return os.path.abspath(uri), None


def train_dataset(cfg: TrainConfig, tokenizer, skip_counter):
    """Ray Data pipeline: Parquet shards -> decode + crop + tokenize in CPU tasks (uint8 images)."""
    from tcl.data.shards import ImageTextTransform, read_shards

    if not cfg.data.shards:
        raise SystemExit("data.shards is not set: give the Parquet shards' folder or s3:// prefix (data.shards=...)")
    transform = ImageTextTransform(tokenizer, image_size=cfg.data.image_size, scale=cfg.data.crop_scale, skip_counter=skip_counter)
    dataset = read_shards(cfg.data.shards, image_column=cfg.data.image_column, caption_column=cfg.data.caption_column,
                          endpoint_url=cfg.data.endpoint_url, shuffle_files_seed=cfg.run.seed)
    return dataset.map_batches(transform, batch_format="numpy", batch_size=max(16, cfg.optim.batch_size // max(1, cfg.run.num_workers)))


def fit(cfg: TrainConfig, task: str, tokenizer) -> dict:
    """Run the Ray Train job; write metrics.jsonl and loss_curves.png next to the checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from tcl import storage
    from tcl.data.shards import SkipCounter
    from tcl.training import METRICS_FILE, plot_loss_curves, train_loop_per_worker

    if cfg.optim.batch_size % cfg.run.num_workers:
        raise SystemExit(f"optim.batch_size={cfg.optim.batch_size} must divide evenly over run.num_workers={cfg.run.num_workers}")
    skip_counter = SkipCounter()
    storage_path, filesystem = storage_for(cfg.run.storage, cfg.data.endpoint_url)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config_lib.to_dict(cfg), "task": task},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                               resources_per_worker={"CPU": cfg.run.cpus_per_worker, **cfg.run.resources_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage_path, storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.run.checkpoints_to_keep),
        ),
        datasets={"train": train_dataset(cfg, tokenizer, skip_counter)},
    )
    result = trainer.fit()
    run_dir = storage.join(cfg.run.storage, cfg.run.name)
    summary = {"run_dir": run_dir, "checkpoint": None, "skipped_images": skip_counter.by_reason()}
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
    print(f"run folder: {run_dir}\nlatest checkpoint: {summary['checkpoint']}\n"
          f"images skipped as unreadable: {sum(summary['skipped_images'].values())} {summary['skipped_images'] or ''}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = config_lib.load(TrainConfig, args.config, args.overrides)
    init_ray(args)
    from tcl.clip import make_tokenizer

    return fit(cfg, "tcl", make_tokenizer(cfg.model.grounder.clip))


if __name__ == "__main__":
    main()
