"""Command-line pieces shared by the jobs that run a Segmenter (evaluate.py and segment.py).

No tcl import here: the jobs import torch only once their arguments are parsed (fast --help).
"""
from __future__ import annotations

import argparse

FIELDS = ("short_side", "window", "stride")  # the SegmenterConfig fields the flags below set


def add_segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    """--short-side, --window, --stride: override the evaluation protocol's SegmenterConfig."""
    parser.add_argument("--short-side", type=int, default=None, help="resize so the short side is this (default: 448)")
    parser.add_argument("--window", type=int, default=None, help="sliding window size (default: 448)")
    parser.add_argument("--stride", type=int, default=None, help="sliding window stride (default: 224)")


def segmenter_overrides(args: argparse.Namespace) -> dict:
    """{field: value} of the flags add_segmenter_arguments added that were given."""
    return {field: getattr(args, field) for field in FIELDS if getattr(args, field)}
