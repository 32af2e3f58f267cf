"""A multi-node Ray cluster on this one machine, for development: a head and N worker nodes
(tcl.ray.local_cluster).

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

from tcl.ray import local_cluster

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--head-cpus", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=2)
    args = p.parse_args()
    cluster = local_cluster.start(args.workers, args.head_cpus, args.cpus_per_worker)
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
