"""A multi-node Ray cluster on this one machine, for development: a head and N worker nodes, each
its own raylet with its own resources (Ray's cluster utilities, as Ray's own tests use them).

    python scripts/local_cluster.py --workers 2 --cpus-per-worker 4
    # prints RAY_ADDRESS; in another shell:
    RAY_ADDRESS=127.0.0.1:PORT python jobs/train.py --config configs/synthetic.yaml \\
        run.num_workers=2 'run.resources_per_worker={node_slot: 1}'

Every worker node carries one unit of the custom resource `node_slot`, so asking each training
worker (or actor) for `node_slot: 1` puts one per node. Ctrl-C stops the cluster.
"""
from __future__ import annotations

import argparse
import signal
import time


def start(workers: int = 2, head_cpus: int = 2, cpus_per_worker: int = 2, gpus_per_worker: int = 0):
    """A running Cluster (ray.cluster_utils) with `workers` worker nodes; the caller owns it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus, "include_dashboard": False})
    for _ in range(workers):
        add_worker(cluster, cpus_per_worker, gpus_per_worker)
    cluster.wait_for_nodes()
    return cluster


def add_worker(cluster, cpus: int = 2, gpus: int = 0):
    return cluster.add_node(num_cpus=cpus, num_gpus=gpus, resources={"node_slot": 1})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--head-cpus", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=2)
    args = p.parse_args()
    cluster = start(args.workers, args.head_cpus, args.cpus_per_worker)
    print(f"head + {args.workers} worker nodes up: RAY_ADDRESS={cluster.address}  (Ctrl-C stops them)", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    try:
        while not stop:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    cluster.shutdown()


if __name__ == "__main__":
    main()
