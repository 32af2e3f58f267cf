"""Label maps as data: run-length encoding and per-class pixel fractions, shared by the HTTP
service (its JSON answers) and the batch job (its Parquet index)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def run_length_encode(labels: np.ndarray) -> dict:
    """[H, W] class indices -> {"size": [H, W], "values": [...], "counts": [...]}: runs of equal
    labels over the row-major flattened map, so value[i] repeats counts[i] times."""
    if labels.ndim != 2:
        raise ValueError(f"label map must be [H, W], got shape {labels.shape}")
    flat = labels.ravel()
    if flat.size == 0:
        return {"size": list(labels.shape), "values": [], "counts": []}
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    counts = np.diff(np.r_[starts, flat.size])
    return {"size": list(labels.shape), "values": flat[starts].tolist(), "counts": counts.tolist()}


def run_length_decode(encoded: dict) -> np.ndarray:
    height, width = encoded["size"]
    values, counts = np.asarray(encoded["values"], np.int64), np.asarray(encoded["counts"], np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"run lengths add up to {counts.sum()}, not {height}x{width}")
    return np.repeat(values, counts).reshape(height, width)


def pixel_fractions(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Share of the image's pixels that each class got (every class listed, 0.0 if absent)."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))[: len(class_names)]
    return {name: float(c) / max(1, labels.size) for name, c in zip(class_names, counts)}
