"""Train TCL on image-text Parquet shards with Ray Data + Ray Train.

    ray job submit --working-dir . -- python jobs/train.py --config configs/cc3m_cc12m.yaml
    python jobs/train.py --config configs/synthetic.yaml run.num_workers=2 optim.total_steps=200

Every config value can be overridden as key.sub=value (YAML syntax for the value); the defaults
are the paper's (tcl/training.py, tcl/model.py). A rerun with the same run.name and run.storage
resumes from the run's latest checkpoint. The run folder <run.storage>/<run.name> (local or
s3://) gets the checkpoints, metrics.jsonl and loss_curves.png; its latest checkpoint loads with
Segmenter.from_checkpoint.
"""
from __future__ import annotations

import argparse
import sys

from tcl.cli import add_ray_arguments


def parse_args(argv: list[str] | None = None, description: str = __doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see configs/); values not given keep their defaults")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. run.num_workers=2 optim.batch_size=64")
    add_ray_arguments(parser)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from tcl import config as config_lib
    from tcl.ray import runtime
    from tcl.ray.train import fit
    from tcl.training import TrainConfig

    runtime.configure(args.ray_address, args.num_cpus)
    try:
        return fit(config_lib.load(TrainConfig, args.config, args.overrides), "tcl")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
