"""Command-line pieces the jobs share: each flag defined once, with its help.

Nothing heavy is imported here (no torch, no Ray), so `--help` answers at once.
"""
from __future__ import annotations

import argparse

SEGMENTER_FLAGS = ("short_side", "window", "stride")  # the SegmenterConfig fields add_segmenter_arguments sets


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Ray")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (default: RAY_ADDRESS, else start a local instance)")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="logical CPUs of a local instance (default: max(8, cores): small machines need more "
                            "logical CPUs than cores so that data loading and workers all get a slot)")


def add_world_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--world", action="append", default=[], metavar="KEY=VALUE",
                        help="a value of the synthetic world (tcl.data.synthetic.SceneConfig), e.g. --world max_shapes=2; repeatable")


def add_segmenter_arguments(parser: argparse.ArgumentParser, threshold: bool = True) -> None:
    """The protocol's knobs a user changes: the scale (--short-side, --window, --stride), PAMR, and
    (with `threshold`) the background threshold; and the speed ones (--precision, --compile)."""
    group = parser.add_argument_group("segmentation protocol (defaults: the paper's)")
    group.add_argument("--short-side", type=int, default=None, help="resize so the short side is this (default: 448)")
    group.add_argument("--window", type=int, default=None, help="sliding window size (default: 448)")
    group.add_argument("--stride", type=int, default=None, help="sliding window stride (default: 224)")
    group.add_argument("--no-pamr", action="store_true",
                       help="without PAMR refinement (the background threshold then defaults to 0.5 instead of 0.4)")
    speed = parser.add_argument_group("speed on GPUs (the paper's figures are fp32, uncompiled)")
    speed.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                       help="bf16: the model under bf16 autocast (default: fp32)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model: each actor first spends tens of seconds compiling; the same "
                            "results to float rounding")
    if threshold:
        group.add_argument("--background-threshold", default="auto", type=parse_threshold,
                           help="score under which a pixel is background: a number in [0, 1], 'auto' (0.4 with "
                                "PAMR, 0.5 without, as the paper) or 'none' (every pixel gets a text); default: auto")


def segmenter_overrides(args: argparse.Namespace) -> dict:
    """SegmenterConfig overrides from the flags of add_segmenter_arguments."""
    overrides = {field: getattr(args, field) for field in SEGMENTER_FLAGS if getattr(args, field, None)}
    overrides["pamr"] = not args.no_pamr
    if args.precision:
        overrides["precision"] = args.precision
    if args.compile:
        overrides["compile"] = True
    if hasattr(args, "background_threshold"):
        overrides["background_threshold"] = args.background_threshold
    return overrides


def parse_threshold(text: str) -> float | str | None:
    """'auto', 'none' or a number in [0, 1]."""
    value = text.strip().lower()
    if value in ("auto", "none"):
        return None if value == "none" else "auto"
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], 'auto' or 'none', got {text!r}") from None
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"the background threshold must be in [0, 1], got {number}")
    return number
