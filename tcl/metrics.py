"""Confusion-matrix mIoU, the unified protocol of the TCL paper.

Intersection and union are summed over the whole data set first and only then divided, one IoU
per class; mIoU is the mean over classes whose union is non-zero. So a class that is predicted
but absent from the ground truth has IoU 0 and counts, a class absent from both is left out, and
a background class (index 0 in background sets) is a class like any other.

Per-image (or per-worker) matrices are int64 counts, so summing them is exact and independent of
order: a distributed evaluation merges `ConfusionMatrix` objects and gets the same numbers as a
single process. Pure numpy; torch tensors are accepted and moved to the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_INDEX = 255


def _as_int_array(values: Any) -> np.ndarray:
    """numpy array or torch tensor (any device) -> int64 numpy array."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().cpu().numpy()
    return np.asarray(values).astype(np.int64, copy=False)


def confusion_matrix(prediction: Any, target: Any, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Pixel counts int64 [num_classes, num_classes]: rows = ground truth, columns = prediction.

    Pixels whose target is `ignore_index` (or outside [0, num_classes)) are not counted; their
    prediction may be anything. A prediction outside [0, num_classes) on a counted pixel is an error.
    """
    prediction, target = _as_int_array(prediction), _as_int_array(target)
    if prediction.shape != target.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from target shape {target.shape}")
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    prediction, target = prediction[valid], target[valid]
    out_of_range = (prediction < 0) | (prediction >= num_classes)
    if out_of_range.any():
        bad = np.unique(prediction[out_of_range])[:10].tolist()
        raise ValueError(f"prediction has class index(es) {bad} outside [0, {num_classes}) on counted pixels")
    counts = np.bincount(target * num_classes + prediction, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64, copy=False)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU per class, float64 [num_classes]; NaN where the union is zero (class absent everywhere)."""
    confusion = np.asarray(confusion)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - np.diag(confusion)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, intersection / union, np.nan)


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over classes with a non-zero union; NaN if nothing was counted."""
    iou = iou_per_class(confusion)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Fraction of counted pixels predicted correctly; NaN if nothing was counted."""
    confusion = np.asarray(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total > 0 else float("nan")


@dataclass
class ConfusionMatrix:
    """Accumulates int64 confusion counts over images; merges exactly across workers."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    matrix: np.ndarray | None = field(default=None, repr=False)  # int64 [C, C] once built

    def __post_init__(self) -> None:
        if self.matrix is None:
            self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        else:
            self.matrix = np.asarray(self.matrix, dtype=np.int64)
        if self.matrix.shape != (self.num_classes, self.num_classes):
            raise ValueError(f"matrix shape {self.matrix.shape} does not match num_classes={self.num_classes}")

    def update(self, prediction: Any, target: Any) -> ConfusionMatrix:
        """Add one image (or a batch of images with the same shape as `target`)."""
        self.matrix += confusion_matrix(prediction, target, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts into this one (in place)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge confusion matrices of {self.num_classes} and {other.num_classes} classes")
        self.matrix += other.matrix
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return ConfusionMatrix(self.num_classes, self.ignore_index, self.matrix.copy()).merge(other)

    def __radd__(self, other: Any) -> ConfusionMatrix:
        # lets builtin sum(matrices) start from 0
        if isinstance(other, int) and other == 0:
            return ConfusionMatrix(self.num_classes, self.ignore_index, self.matrix.copy())
        return NotImplemented

    @property
    def iou(self) -> np.ndarray:
        return iou_per_class(self.matrix)

    @property
    def miou(self) -> float:
        return mean_iou(self.matrix)

    @property
    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.matrix)
