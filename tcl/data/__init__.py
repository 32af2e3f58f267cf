"""Data: training shards, the synthetic world, evaluation benchmarks (no Ray here: the Ray Data pipelines are in tcl/ray/data.py)."""
