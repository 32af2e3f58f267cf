"""Data: training shards, the synthetic world, evaluation benchmarks (the only part of `tcl` that imports Ray)."""
