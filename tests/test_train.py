"""Ray Train: 2 CPU workers, checkpoints, resume, a killed worker, S3 storage."""
import json

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


def test_train_resume_and_worker_failure(ray_cluster, tmp_path, capsys):
    write_shards(str(tmp_path / "shards"), 32, corrupt=3)

    # uninterrupted: 6 steps
    summary = run(tmp_path, "straight", "optim.total_steps=6")
    steps = [r["step"] for r in history(tmp_path, "straight")]
    assert steps == [2, 4, 6]
    assert all(np.isfinite(r["loss/total"]) for r in history(tmp_path, "straight"))
    assert sum(summary["skipped_images"].values()) >= 3  # corrupt rows skipped and counted, run not stopped
    assert (tmp_path / "runs" / "straight" / "loss_curves.png").stat().st_size > 1000
    [result] = Segmenter.from_checkpoint(summary["checkpoint"], short_side=32, window=32, stride=16).segment(
        Image.new("RGB", (45, 30)), ["thing", "other"])
    assert result.labels.shape == (30, 45)

    # stopped after 4 steps, rerun with the same name to 6: resumes, same step count
    run(tmp_path, "resumed", "optim.total_steps=4")
    assert [r["step"] for r in history(tmp_path, "resumed")] == [2, 4]
    run(tmp_path, "resumed", "optim.total_steps=6")
    assert [r["step"] for r in history(tmp_path, "resumed")] == steps

    # the latest checkpoint (step 6) lost its weights: the run goes on from the one before (step 4), and says so
    checkpoints = sorted(p for p in (tmp_path / "runs" / "resumed").glob("checkpoint_*") if p.is_dir())
    state = torch.load(checkpoints[-1] / "training_state.pt", weights_only=True)
    state["model"] = {}
    torch.save(state, checkpoints[-1] / "training_state.pt")
    capsys.readouterr()
    run(tmp_path, "resumed", "optim.total_steps=8")
    out = capsys.readouterr().out
    assert "cannot be resumed from" in out and "has no model" in out
    assert f"resumed from {checkpoints[0]} at step 4" in out
    assert [r["step"] for r in history(tmp_path, "resumed")] == [2, 4, 6, 8]
    # no intact checkpoint at all: the run stops, never a silent start from fresh weights
    for checkpoint in (p for p in (tmp_path / "runs" / "resumed").glob("checkpoint_*") if p.is_dir()):
        (checkpoint / "training_state.pt").write_bytes(b"")
    with pytest.raises(Exception, match="no intact checkpoint to resume from"):
        run(tmp_path, "resumed", "optim.total_steps=10")

    # a worker dies at step 3: Ray Train restarts the group from the step-2 checkpoint and finishes
    summary = run(tmp_path, "faulty", "optim.total_steps=6", "run.fail_at_step=3", "run.max_failures=1")
    assert summary["final"]["step"] == 6
    assert [r["step"] for r in history(tmp_path, "faulty")] == steps


def test_loss_decreases_on_a_fixed_batch_with_two_workers(ray_cluster, tmp_path):
    # one batch per epoch and no crop randomness: every step sees the same 8 images
    write_shards(str(tmp_path / "shards"), 8)
    run(tmp_path, "fixed", "optim.total_steps=12", "optim.warmup_steps=0", "optim.base_lr=0.5", "optim.min_lr=0.5",
        "data.crop_scale=[1.0, 1.0]", "run.log_every=1", "run.checkpoint_every=12", "model.unfreeze_block_step=0")
    totals = [r["loss/total"] for r in history(tmp_path, "fixed")]
    assert len(totals) == 12 and all(np.isfinite(totals))
    assert np.mean(totals[-3:]) < np.mean(totals[:3])


def test_shards_and_checkpoints_on_s3(ray_cluster, tmp_path, s3_server):
    bucket = s3_server.create_bucket("tcl-train")
    write_shards(f"{bucket}/shards", 16, endpoint_url=s3_server.endpoint_url)
    common = ["--config", CONFIG, f"data.shards={bucket}/shards", f"run.storage={bucket}/runs", "run.name=s3run",
              f"data.endpoint_url={s3_server.endpoint_url}", *TINY]
    train_job.main([*common, "optim.total_steps=2"])
    summary = train_job.main([*common, "optim.total_steps=4"])
    assert summary["final"]["step"] == 4
    keys = s3_server.list_keys("tcl-train", "runs/s3run/")
    assert "runs/s3run/metrics.jsonl" in keys and "runs/s3run/loss_curves.png" in keys
    assert any(k.endswith("/grounder.safetensors") for k in keys)
    from tcl.checkpoint import load_grounder
    grounder = load_grounder(f"{bucket}/runs/s3run", endpoint_url=s3_server.endpoint_url)
    assert grounder.patch_size == 8

