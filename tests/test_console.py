"""What people read: a short training run's console holds the job's own lines, each once, within
a budget; progress is a bar on a terminal and a line every few seconds otherwise."""
import io
import os
import re
import subprocess
import sys

from tcl.console import Progress
from tests.helpers import REPO, TINY, TRAIN_CONFIG, write_shards


def test_a_short_training_run_prints_each_step_once_and_little_else(ray_cluster, tmp_path):
    import ray

    write_shards(str(tmp_path / "shards"), 48)
    command = [sys.executable, "jobs/train.py", "--config", TRAIN_CONFIG, f"data.shards={tmp_path / 'shards'}",
               f"run.storage={tmp_path / 'runs'}", "run.name=console", *TINY, "optim.total_steps=12",
               "--ray-address", ray.get_runtime_context().gcs_address]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = (done.stdout + done.stderr).splitlines()
    steps = [line for line in lines if re.match(r"step \d+/12 ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in steps] == [2, 4, 6, 8, 10, 12]  # each logged step once, in order
    text = "\n".join(lines)
    for noise in ("Failed to query Ray Train Controller", "Reporting training result", "RayTrainWorker", "\x1b[A",
                  "Execution plan", "Token authentication"):
        assert noise not in text, noise
    assert "run folder:" in text and "Ray's own logs:" in text
    assert len(lines) <= 20, text


def test_progress_prints_a_line_every_few_seconds_off_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tcl.console.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    progress = Progress("VOC", total=100, unit="images", every=10, terminal=False)
    for done in range(1, 101):
        clock[0] = done * 0.5  # 2 images a second: 50 s in all
        progress.update(done, note="mIoU so far 40.0")
    progress.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[-1].startswith("VOC: 100/100 images, 2.0/s")  # every 10 s, then the last
    assert "\r" not in out.getvalue()
    assert "s left" in lines[0] and "mIoU so far 40.0" in lines[0]


def test_progress_redraws_one_line_on_a_terminal(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tcl.console.time.perf_counter", lambda: clock[0])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    progress = Progress("segmenting", total=10, terminal=True)
    for done in range(1, 11):
        clock[0] = done
        progress.update(done)
    progress.close()
    assert out.getvalue().count("\n") == 1 and out.getvalue().count("\r") == 11
    assert "[####################]" in out.getvalue().splitlines()[-1]
