"""End to end through the Ray Jobs API: `ray start --head` on 127.0.0.1, then `ray job submit`
of a tiny jobs/train.py run, which must finish SUCCEEDED with a checkpoint in its run folder.

This is what a user does on a real cluster, so it checks what the in-process training tests
cannot: the working-dir upload (.gitignore keeps .venv and outputs out of it; `excludes` repeats
that), the job's driver finding Ray through RAY_ADDRESS, and the workers' Python being the one
`ray start` ran with (the venv's).

The head is this test's own: free ports picked here, a short temp dir (/tmp/rj-XXXXXX: Ray puts
unix sockets in it, and socket paths are limited to about 107 bytes, which pytest's tmp_path
exceeds). `ray stop` is not used for teardown: it stops every Ray instance on the machine,
whoever started it. Instead `ray start --block` runs in the foreground as our child, SIGTERM
makes it shut down everything it started, and any process of its tree still alive afterwards
(collected while the tree was intact) is killed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from tests.helpers import TINY, TRAIN_CONFIG as CONFIG, write_shards

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process cleanup reads /proc"),
    pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not next to this Python"),
]


# ------------------------------------------------------------------ processes, via /proc

def _start_time(pid: int) -> int | None:
    """Kernel start time of `pid` (guards against a pid reused by an unrelated process); None
    once it has exited (zombies included)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])  # fields[0] is stat field 3
    except (OSError, IndexError, ValueError):
        return None


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def _parent_map() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def process_tree(root: int) -> dict[int, int | None]:
    """pid -> start time of `root` and all its descendants."""
    parents = _parent_map()
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid and child not in tree]
        tree.update(children)
        frontier.extend(children)
    return {pid: _start_time(pid) for pid in tree}


def processes_mentioning(text: str) -> dict[int, int | None]:
    """pid -> start time of processes whose command line contains `text` (our temp dir)."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found[int(entry)] = _start_time(int(entry))
            except OSError:
                pass
    return found


def alive(processes: dict[int, int | None]) -> dict[int, int | None]:
    return {pid: start for pid, start in processes.items() if start is not None and _start_time(pid) == start}


def kill(processes: dict[int, int | None], timeout: float = 5) -> dict[int, int | None]:
    """SIGKILL those still alive; returns those that outlive `timeout`."""
    for pid in alive(processes):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(processes)


# ------------------------------------------------------------------ the cluster

def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_job_server(url: str, head: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            JobSubmissionClient(url).list_jobs()  # the SDK, not plain HTTP: it sends Ray's auth token
            return
        except Exception:  # noqa: BLE001 - not up yet: connection refused, 5xx, ...
            pass
        time.sleep(1)
    raise TimeoutError(f"no job server at {url} after {timeout:.0f} s")


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with its own ports and temp dir; yields (dashboard URL, env)."""
    temp_dir = f"/tmp/rj-{secrets.token_hex(3)}"
    (gcs, dashboard, client, node_manager, object_manager, agent_http, agent_grpc, runtime_env_agent,
     metrics) = free_ports(9)
    # Token auth off, explicitly: Ray turns it on by itself whenever ~/.ray/auth_token exists (any
    # earlier ray.init writes one), and then this process's SDK calls would need the token too. The
    # cluster listens on 127.0.0.1 only and lives for this test.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    command = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env_agent}",
        f"--metrics-export-port={metrics}", "--num-cpus=8", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    log_path = os.path.join(os.path.dirname(temp_dir), f"{os.path.basename(temp_dir)}.log")
    with open(log_path, "wb") as log:
        head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        wait_for_job_server(url, head, timeout=90)
        yield url, env
    except Exception:
        for path in (log_path, os.path.join(temp_dir, "session_latest", "logs", "dashboard.log")):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    print(f"--- {path}\n{f.read()[-5000:]}")
        raise
    finally:
        # Collected while the tree is intact: once `ray start` exits, survivors are re-parented.
        tree = process_tree(head.pid)
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 10
        leftovers = {}
        while time.monotonic() < deadline:
            leftovers = alive({**tree, **processes_mentioning(temp_dir)})
            if not leftovers:
                break
            time.sleep(0.5)
        if leftovers:
            print("killing Ray processes that outlived `ray start`:",
                  *(f"  {pid} {_command_line(pid)[:200]}" for pid in leftovers), sep="\n")
        survivors = kill(leftovers)
        shutil.rmtree(temp_dir, ignore_errors=True)
        os.remove(log_path)
        assert not survivors, f"Ray processes of this test still running: {sorted(survivors)}"


def ray_cli(env: dict, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([RAY, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_trains_to_a_checkpoint(ray_head, tmp_path):
    url, env = ray_head
    write_shards(str(tmp_path / "shards"), 16)
    job_id = f"tcl-test-{secrets.token_hex(3)}"
    # .gitignore already keeps these out of the upload; listing them guards against its edits.
    runtime_env = '{"excludes": [".venv", "outputs", "runs", "data", ".git", "*.pyc", "__pycache__"]}'
    submitted = ray_cli(
        env, "job", "submit", "--address", url, "--submission-id", job_id, "--working-dir", REPO,
        "--runtime-env-json", runtime_env, "--",
        "python", "jobs/train.py", "--config", os.path.relpath(CONFIG, REPO), f"data.shards={tmp_path / 'shards'}",
        f"run.storage={tmp_path / 'runs'}", "run.name=submitted", *TINY, "optim.total_steps=2",
    )
    status = JobSubmissionClient(url).get_job_status(job_id)
    report = f"ray job submit printed:\n{submitted.stdout[-6000:]}\n{submitted.stderr[-3000:]}"
    assert status == JobStatus.SUCCEEDED, f"job {job_id} ended {status}\n{report}"
    run_dir = tmp_path / "runs" / "submitted"
    checkpoints = [p for p in run_dir.glob("checkpoint_*") if (p / "training_state.pt").exists()]
    assert checkpoints, f"no checkpoint in {run_dir}: {sorted(p.name for p in run_dir.iterdir())}\n{report}"
    assert (run_dir / "metrics.jsonl").exists()
