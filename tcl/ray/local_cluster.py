"""A multi-node Ray cluster on one machine, for development and the multi-node tests: a head and N
worker nodes, each its own raylet with its own resources (Ray's cluster utilities, as Ray's own
tests use them). Every worker node carries one unit of the custom resource `node_slot`, so that
asking each training worker, actor or replica for `node_slot: 1` puts one on each node.
scripts/local_cluster.py runs one from the command line."""
from __future__ import annotations


def start(workers: int = 2, head_cpus: int = 2, cpus_per_worker: int = 2, gpus_per_worker: int = 0, dashboard_port: int = 8265):
    """A running Cluster (ray.cluster_utils) with `workers` worker nodes and the head's dashboard on
    127.0.0.1:`dashboard_port` (`ray job submit`, `serve deploy`, `ray job logs` talk to it); the
    caller owns it."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
    for _ in range(workers):
        add_worker(cluster, cpus_per_worker, gpus_per_worker)
    cluster.wait_for_nodes()
    return cluster


def dashboard_url(cluster) -> str:
    """The address `ray job submit --address` and `serve deploy --address` take."""
    return "http://" + cluster.head_node.address_info["webui_url"]


def add_worker(cluster, cpus: int = 2, gpus: int = 0):
    return cluster.add_node(num_cpus=cpus, num_gpus=gpus, resources={"node_slot": 1})
