"""A multi-node Ray cluster on this one machine, for development: a head and N worker nodes
(tcl.ray.local_cluster).

    python scripts/local_cluster.py --workers 2 --cpus-per-worker 4
    # prints the addresses; in another shell, every command of docs/operations.md works against it:
    export RAY_ADDRESS=http://127.0.0.1:8265
    ray job submit --working-dir . -- python jobs/train.py --config configs/synthetic.yaml \\
        run.num_workers=2 'run.resources_per_worker={node_slot: 1}'
    serve deploy serve/config.yaml

Every worker node carries one unit of the custom resource `node_slot`, so asking each training
worker (or actor) for `node_slot: 1` puts one per node. Ctrl-C stops the cluster.
"""
from __future__ import annotations

import argparse
import signal
import time

from tcl.ray import local_cluster

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--head-cpus", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=2)
    p.add_argument("--dashboard-port", type=int, default=8265)
    args = p.parse_args()
    cluster = local_cluster.start(args.workers, args.head_cpus, args.cpus_per_worker, dashboard_port=args.dashboard_port)
    print(f"head + {args.workers} worker nodes up (Ctrl-C stops them)\n"
          f"  jobs, serve deploy, ray job logs:  export RAY_ADDRESS={local_cluster.dashboard_url(cluster)}\n"
          f"  a Python driver (ray.init):        RAY_ADDRESS={cluster.address}", flush=True)
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
