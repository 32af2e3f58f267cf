"""Multi-node behaviour on one machine: a head and two worker nodes (scripts/local_cluster.py, Ray's
cluster utilities), each worker node with one `node_slot` so that one training worker, actor or
replica lands on each. Nodes are stopped midway (without a graceful shutdown, as a lost machine).
The head's dashboard is on, so the commands users type reach it: `ray job submit`, `ray job logs`,
`serve deploy`."""
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tcl.data import synthetic
from tcl.data.benchmarks import open_custom
from tcl.data.shards import ShardWriter
from tcl.images import encode_image
from tcl.evaluation import evaluate
from tcl.ray import local_cluster
from tcl.segment import Segmenter
from tests.helpers import save_trained_looking_checkpoint
from tests.s3_server import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROTOCOL = {"short_side": 32, "window": 32, "stride": 16}
PROTOCOL_ARGS = ["--short-side", "32", "--window", "32", "--stride", "16"]
SLOT = '{"node_slot": 1}'


@pytest.fixture(scope="module")
def cluster(_ray_session):
    import ray

    from tcl.ray import runtime

    ray.shutdown()  # the session's single-node instance; the next test that needs it starts it again
    cluster = local_cluster.start(workers=2, head_cpus=3, cpus_per_worker=2, dashboard_port=free_port())
    runtime.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def worker_nodes(cluster):
    return list(cluster.worker_nodes)


def replace_a_worker_node(cluster, node):
    """A worker node lost, and the one an autoscaler would start in its place."""
    cluster.remove_node(node, allow_graceful=False)
    local_cluster.add_worker(cluster, cpus=2)
    cluster.wait_for_nodes()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_trained_looking_checkpoint(str(tmp_path_factory.mktemp("multinode") / "ckpt"), seed=21)


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise TimeoutError(what)


def test_training_one_worker_per_node_survives_a_lost_node(cluster, tmp_path):
    from jobs import train as train_job
    from tests.helpers import TINY, TRAIN_CONFIG as CONFIG, write_shards

    write_shards(str(tmp_path / "shards"), 64)
    argv = ["--config", CONFIG, f"data.shards={tmp_path / 'shards'}", f"run.storage={tmp_path / 'runs'}", "run.name=multi",
            *TINY, "optim.total_steps=24", "run.checkpoint_every=4", "run.log_every=4", "run.max_failures=3",
            "run.resources_per_worker={node_slot: 1}"]
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(summary=train_job.main(argv)), daemon=True)
    thread.start()
    run = tmp_path / "runs" / "multi"
    wait_for(lambda: run.is_dir() and any(p.name.startswith("checkpoint_") for p in run.iterdir()), 300, "a first checkpoint")
    replace_a_worker_node(cluster, worker_nodes(cluster)[0])
    thread.join(timeout=600)
    assert not thread.is_alive() and "summary" in outcome
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 24 and steps == sorted(set(steps))  # finished, every logged step once
    assert Segmenter.from_checkpoint(outcome["summary"]["checkpoint"], **PROTOCOL).segment(
        Image.new("RGB", (40, 32)), ["thing"])[0].labels.shape == (32, 40)


def test_evaluation_spreads_over_both_nodes_and_equals_single_process(cluster, checkpoint, tmp_path):
    from jobs import evaluate as evaluate_job

    root = synthetic.write_eval_set(str(tmp_path / "set"), "shapes-stuff", count=12, seed=8, image_size=32)
    rows = evaluate_job.main(["--checkpoint", checkpoint, "--datasets", f"custom:{root}", "--actors", "2",
                              "--resources-per-actor", SLOT, "--output", str(tmp_path / "out"), *PROTOCOL_ARGS])
    row = rows[f"custom:{root}"]
    assert len(row["images_per_node"]) == 2 and sum(row["images_per_node"].values()) == 12  # one actor per worker node
    reference = evaluate(Segmenter.from_checkpoint(checkpoint, **PROTOCOL), open_custom(root))
    assert np.array_equal(np.array(row["confusion"]), reference.confusion.matrix)


def test_batch_job_survives_a_lost_node_and_completes_on_rerun(cluster, checkpoint, tmp_path):
    import pyarrow.parquet as pq

    from jobs import segment as segment_job

    with ShardWriter(str(tmp_path / "shards"), rows_per_shard=30) as writer:
        for i, scene in enumerate(synthetic.scenes(90, seed=4, image_size=32)):
            writer.write(encode_image(scene.image), scene.caption)
    argv = ["--checkpoint", checkpoint, "--input", str(tmp_path / "shards"), "--texts", "a red star,grass,sky",
            "--output", str(tmp_path / "out"), "--actors", "2", "--resources-per-actor", SLOT,
            "--batch-size", "2", "--index-every", "2", *PROTOCOL_ARGS]
    outcome = {}

    def run():
        try:
            outcome["summary"] = segment_job.main(argv)
        except BaseException as error:  # noqa: BLE001 - a job that dies with its node is allowed; the rerun must finish
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    index = tmp_path / "out" / "index"
    wait_for(lambda: index.is_dir() and len(os.listdir(index)) >= 3, 300, "first index parts")
    replace_a_worker_node(cluster, worker_nodes(cluster)[0])
    thread.join(timeout=600)
    assert not thread.is_alive()

    summary = segment_job.main(argv)
    assert summary["segmented_now"] + summary["done_before"] == 90
    keys = [k for f in sorted(os.listdir(index)) for k in pq.read_table(index / f, columns=["key"]).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == 90  # nothing lost, nothing twice
    pngs = [f for _, _, files in os.walk(tmp_path / "out" / "labels") for f in files]
    assert len(pngs) == 90 and not any(f.endswith(".tmp") for f in pngs)


def test_serve_with_a_replica_per_node_keeps_answering_when_one_node_is_lost(cluster, checkpoint):
    import requests
    from ray import serve

    from tcl.ray.serve import SegmentationService

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = SegmentationService.options(num_replicas=2, ray_actor_options={"num_cpus": 0.5, "resources": {"node_slot": 1}})
    serve.run(app.bind(checkpoint=checkpoint, device="cpu", segmenter=PROTOCOL), name="tcl", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/segment"
    direct = Segmenter.from_checkpoint(checkpoint, **PROTOCOL)
    images = [scene.image for scene in synthetic.scenes(8, seed=6, image_size=32)]
    expected = [r.labels for r in direct.segment(images, ["a red star", "grass", "sky"])]
    payloads = [encode_image(image) for image in images]

    from tcl.encoding import run_length_decode

    log, stop = [], threading.Event()

    def client():
        i = 0
        while not stop.is_set():
            k = i % len(images)
            for attempt in range(5):  # clients may retry
                try:
                    answer = requests.post(url, files={"image": ("x.png", payloads[k], "image/png")},
                                           data={"texts": "a red star,grass,sky"}, timeout=30)
                except requests.RequestException:
                    answer = None
                if answer is not None and answer.status_code == 200:
                    log.append((time.time(), np.array_equal(run_length_decode(answer.json()["labels"]), expected[k])))
                    break
                time.sleep(0.5)
            else:
                log.append((time.time(), None))  # failed even after retries
            i += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    wait_for(lambda: len(log) >= 10, 120, "answers before the node is lost")
    lost_at = time.time()
    cluster.remove_node(worker_nodes(cluster)[0], allow_graceful=False)
    wait_for(lambda: sum(t > lost_at + 2 for t, _ in log) >= 10, 180, "answers after the node is lost")
    stop.set()
    for t in threads:
        t.join(timeout=60)
    serve.shutdown()
    local_cluster.add_worker(cluster, cpus=2)  # the node an autoscaler would start in its place, for the tests after this one
    cluster.wait_for_nodes()
    assert all(ok is True for _, ok in log), "a request failed after retries, or was answered with wrong labels"


# ------------------------------------------------------------------ the commands users type, against the cluster

RAY = os.path.join(os.path.dirname(sys.executable), "ray")
SERVE = os.path.join(os.path.dirname(sys.executable), "serve")


def cli(*command: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_trains_on_the_cluster_and_its_log_reads_well(cluster, tmp_path):
    """`ray job submit --working-dir .` as docs/operations.md has it: the code travels, the job joins
    the cluster, trains to a checkpoint; `ray job logs` shows each step once and little else."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from tests.helpers import TINY, TRAIN_CONFIG, write_shards

    url = local_cluster.dashboard_url(cluster)
    write_shards(str(tmp_path / "shards"), 32)
    job_id = f"tcl-test-{os.getpid()}"
    runtime_env = '{"excludes": [".venv", "outputs", "runs", "data", ".git", "*.pyc", "__pycache__", ".devbundle"]}'
    submitted = cli(RAY, "job", "submit", "--address", url, "--submission-id", job_id, "--working-dir", REPO,
                    "--runtime-env-json", runtime_env, "--", sys.executable, "jobs/train.py", "--config", os.path.relpath(TRAIN_CONFIG, REPO),
                    f"data.shards={tmp_path / 'shards'}", f"run.storage={tmp_path / 'runs'}", "run.name=submitted", *TINY,
                    "optim.total_steps=8")
    assert submitted.returncode == 0, f"{submitted.stdout[-4000:]}\n{submitted.stderr[-4000:]}"
    status = JobSubmissionClient(url).get_job_status(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}\n{submitted.stdout[-4000:]}\n{submitted.stderr[-2000:]}"
    checkpoints = [p for p in (tmp_path / "runs" / "submitted").glob("checkpoint_*") if (p / "training_state.pt").exists()]
    assert checkpoints and (tmp_path / "runs" / "submitted" / "metrics.jsonl").exists()

    log = cli(RAY, "job", "logs", "--address", url, job_id).stdout.splitlines()
    steps = [line for line in log if re.match(r"step \d+/8 ", line)]
    assert [int(line.split()[1].split("/")[0]) for line in steps] == [2, 4, 6, 8]  # each logged step once, in order
    text = "\n".join(log)
    for noise in ("Failed to query Ray Train Controller", "Reporting training result", "RayTrainWorker", "\x1b[A",
                  "Execution plan", "Token authentication"):
        assert noise not in text, noise
    assert "Ray: joined" in text and "run folder:" in text
    assert len(log) <= 20, text


def test_serve_deploy_runs_the_installed_application_from_a_config(cluster, checkpoint, tmp_path):
    """`serve deploy` with a config like serve/config.yaml: the application is imported from the
    installed tcl package on the cluster's nodes (no working directory), and answers."""
    import requests
    import yaml

    url = local_cluster.dashboard_url(cluster)
    with open(os.path.join(REPO, "serve", "config.yaml")) as f:
        config = yaml.safe_load(f)
    port = free_port()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    [app] = config["applications"]
    assert app["import_path"] == "tcl.ray.serve:build_app" and "runtime_env" not in app
    app["args"]["checkpoint"] = checkpoint
    app["args"]["segmenter"] = PROTOCOL
    [deployment] = app["deployments"]
    deployment["autoscaling_config"]["max_replicas"] = 1
    deployment["ray_actor_options"]["num_cpus"] = 0.5
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    deployed = cli(SERVE, "deploy", str(path), "--address", url)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/v1/health"), 180, "the deployed application to answer")
        image = synthetic.scenes(1, seed=9, image_size=32)
        [scene] = list(image)
        answer = requests.post(f"http://127.0.0.1:{port}/v1/segment", files={"image": ("x.png", encode_image(scene.image), "image/png")},
                               data={"texts": "a red star,grass,sky"}, timeout=60)
        assert answer.status_code == 200, answer.text
        [expected] = Segmenter.from_checkpoint(checkpoint, **PROTOCOL).segment(scene.image, ["a red star", "grass", "sky"])
        from tcl.encoding import run_length_decode

        assert np.array_equal(run_length_decode(answer.json()["labels"]), expected.labels)
    finally:
        shutdown = cli(SERVE, "shutdown", "--yes", "--address", url)
        assert shutdown.returncode == 0, shutdown.stderr


def _answers(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False
