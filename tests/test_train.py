"""Ray Train: 2 CPU workers, checkpoints, resume, a killed worker, S3 storage."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from jobs import train as train_job
from tcl.ray.train import fit
from tcl.segment import Segmenter
from tests.helpers import TINY, TRAIN_CONFIG as CONFIG, tiny_train_config, write_shards


def run(tmp_path, name: str, *overrides: str) -> dict:
    return fit(tiny_train_config(str(tmp_path / "shards"), str(tmp_path / "runs"), name, *overrides))


def history(tmp_path, name: str) -> list[dict]:
    with open(tmp_path / "runs" / name / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


def write_aligned_shards(folder: str) -> None:
    """32 rows in 4 row groups of 8: with a batch of 8 and one worker, each step is one row group."""
    from tcl.data.shards import ShardWriter
    from tcl.images import encode_image

    rng = np.random.default_rng(1)
    with ShardWriter(folder, rows_per_shard=16, row_group_size=8) as writer:
        for i in range(32):
            writer.write(encode_image(Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))), f"a photo of thing {i % 5}")


ONE_GROUP_PER_STEP = ["run.num_workers=1", "optim.batch_size=8", "run.log_every=1", "run.checkpoint_every=4"]


def test_resume_continues_the_stream_skips_damaged_checkpoints_and_survives_a_dead_worker(ray_cluster, tmp_path, capsys):
    """Step by step, the row groups a run trains on: an uninterrupted run's, whether it was stopped
    and rerun, resumed past a damaged checkpoint, or restarted after its worker died. The second
    epoch comes in its own file order and the first is never replayed."""
    import ray

    from tcl.ray.data import list_row_groups, stream_items

    write_aligned_shards(str(tmp_path / "shards"))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # one worker sees the stream in its order
    try:
        # uninterrupted: 8 steps, two epochs of 4 row groups
        summary = run(tmp_path, "straight", "optim.total_steps=8", *ONE_GROUP_PER_STEP)
        straight = [r["stream_position"] for r in history(tmp_path, "straight")]
        assert straight == list(range(8)) and all(np.isfinite(r["loss/total"]) for r in history(tmp_path, "straight"))
        assert (tmp_path / "runs" / "straight" / "loss_curves.png").stat().st_size > 1000
        [result] = Segmenter.from_checkpoint(summary["checkpoint"], short_side=32, window=32, stride=16).segment(
            Image.new("RGB", (45, 30)), ["thing", "other"])
        assert result.labels.shape == (30, 45)
        _, files, _ = list_row_groups(str(tmp_path / "shards"))
        items, per_epoch = stream_items(files, seed=0, rows_needed=64)
        groups = [(items[p]["epoch"], os.path.basename(items[p]["path"]), items[p]["row_group"]) for p in straight]
        assert per_epoch == 4 and [e for e, _, _ in groups] == [0] * 4 + [1] * 4
        rows_per_epoch = sum(g.rows for groups in files for g in groups)
        assert len(items) == per_epoch * (2 * -(-64 // rows_per_epoch) + 1)  # slack for restarts and unreadable rows
        assert sorted(g[1:] for g in groups[:4]) == sorted(g[1:] for g in groups[4:])  # each epoch: every row group once
        [ended] = [r["epoch_end"] for r in history(tmp_path, "straight") if "epoch_end" in r]  # epoch 0's own figures
        assert ended["epoch"] == 0 and ended["step"] == 5 and 0 <= ended["data_wait_fraction"] <= 1

        # stopped after 4 steps, rerun to 8: it resumes at step 4 and the stream at row group 4
        run(tmp_path, "stopped", "optim.total_steps=4", *ONE_GROUP_PER_STEP)
        run(tmp_path, "stopped", "optim.total_steps=8", *ONE_GROUP_PER_STEP)
        assert [r["stream_position"] for r in history(tmp_path, "stopped")] == straight
        assert [r["epoch"] for r in history(tmp_path, "stopped")] == [0, 0, 0, 0, 1, 1, 1, 1]

        # the latest checkpoint (step 8) lost its weights: the run goes on from the one before (step 4), and says so
        checkpoints = sorted(p for p in (tmp_path / "runs" / "stopped").glob("checkpoint_*") if p.is_dir())
        state = torch.load(checkpoints[-1] / "training_state.pt", weights_only=True)
        state["model"] = {}
        torch.save(state, checkpoints[-1] / "training_state.pt")
        capsys.readouterr()
        run(tmp_path, "stopped", "optim.total_steps=10", *ONE_GROUP_PER_STEP)
        out = capsys.readouterr().out
        assert "cannot be resumed from" in out and "has no model" in out
        assert f"resumed from {checkpoints[0]} at step 4" in out
        assert [r["stream_position"] for r in history(tmp_path, "stopped")] == list(range(10))
        # no intact checkpoint at all: the run stops, never a silent start from fresh weights
        for checkpoint in (p for p in (tmp_path / "runs" / "stopped").glob("checkpoint_*") if p.is_dir()):
            (checkpoint / "training_state.pt").write_bytes(b"")
        with pytest.raises(Exception, match="no intact checkpoint to resume from"):
            run(tmp_path, "stopped", "optim.total_steps=12", *ONE_GROUP_PER_STEP)

        # the worker dies at step 6: Ray Train restarts it from the step-4 checkpoint, and the stream goes on from there
        summary = run(tmp_path, "faulty", "optim.total_steps=8", "run.fail_at_step=6", "run.max_failures=1", *ONE_GROUP_PER_STEP)
        assert summary["final"]["step"] == 8
        assert [r["stream_position"] for r in history(tmp_path, "faulty")] == straight
    finally:
        context.execution_options.preserve_order = False


def test_loss_decreases_on_a_fixed_batch_with_two_elastic_workers(ray_cluster, tmp_path, capsys):
    # one batch per epoch and no crop randomness: every step sees the same 8 images. Elastic, 1 to 2
    # workers: Ray Train starts 2, which do not divide the global batch of 9 (4 each, 8 in all, said so)
    write_shards(str(tmp_path / "shards"), 8)
    run(tmp_path, "fixed", "optim.total_steps=12", "optim.warmup_steps=0", "optim.base_lr=0.5", "optim.min_lr=0.5",
        "data.crop_scale=[1.0, 1.0]", "run.log_every=1", "run.checkpoint_every=12", "model.unfreeze_block_step=0",
        "run.min_workers=1", "optim.batch_size=9")
    out = capsys.readouterr().out
    assert "on 1 to 2 CPU worker(s)" in out and "2 workers do not divide the global batch 9: 4 per worker, 8 in all" in out
    totals = [r["loss/total"] for r in history(tmp_path, "fixed")]
    assert len(totals) == 12 and all(np.isfinite(totals))
    assert np.mean(totals[-3:]) < np.mean(totals[:3])


def test_worker_counts_are_checked_before_anything_starts(tmp_path):
    from tcl.ray.train import check_workers

    def config(*overrides):
        return tiny_train_config(str(tmp_path), str(tmp_path), "x", *overrides)

    assert check_workers(config()) == 2
    assert check_workers(config("run.min_workers=1")) == (1, 2)
    with pytest.raises(ValueError, match="must divide evenly over run.num_workers=2"):
        check_workers(config("optim.batch_size=9"))
    with pytest.raises(ValueError, match="run.min_workers=3 must be between 1 and run.num_workers=2"):
        check_workers(config("run.min_workers=3"))


def test_shards_and_checkpoints_on_s3(ray_cluster, tmp_path, s3_server):
    bucket = s3_server.create_bucket("tcl-train")
    write_shards(f"{bucket}/shards", 16, corrupt=3, endpoint_url=s3_server.endpoint_url)
    common = ["--config", CONFIG, f"data.shards={bucket}/shards", f"run.storage={bucket}/runs", "run.name=s3run",
              f"data.endpoint_url={s3_server.endpoint_url}", *TINY]
    train_job.main([*common, "optim.total_steps=2"])
    summary = train_job.main([*common, "optim.total_steps=4"])
    assert summary["final"]["step"] == 4
    assert sum(summary["skipped_images"].values()) >= 3  # corrupt rows skipped and counted, the run not stopped
    keys = s3_server.list_keys("tcl-train", "runs/s3run/")
    assert "runs/s3run/metrics.jsonl" in keys and "runs/s3run/loss_curves.png" in keys
    assert any(k.endswith("/grounder.safetensors") for k in keys)
    from tcl.checkpoint import load_grounder
    grounder = load_grounder(f"{bucket}/runs/s3run", endpoint_url=s3_server.endpoint_url)
    assert grounder.patch_size == 8
