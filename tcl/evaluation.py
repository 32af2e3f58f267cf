"""The unified evaluation protocol of the TCL paper, one image at a time.

A `Segmenter` with its default config *is* the protocol (short side 448, 448 windows at stride
224 with averaged logits, the nine prompt templates, ImageNet normalisation, PAMR, KP weight 0.3,
no CRF, no flipping). What depends on the data set lives here: background sets prompt every class
but background, which is the score threshold (0.4 with PAMR, 0.5 without, as the official code);
sets without background give every pixel one of their classes. Each image yields an int64
confusion matrix; summing them over the set (in any order, on any number of workers) gives the
protocol's mIoU exactly. jobs/evaluate.py distributes `sample_confusion` over a Ray actor pool.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import numpy as np

from tcl.data.benchmarks import Benchmark, Sample
from tcl.metrics import ConfusionMatrix, confusion_matrix
from tcl.segment import Segmenter

BACKGROUND_THRESHOLD = {True: 0.4, False: 0.5}  # with PAMR / without


def protocol_overrides(benchmark: Benchmark, pamr: bool = True, baseline: bool = False) -> dict:
    """Segmenter overrides for a data set: background threshold (or none), PAMR, and for the
    baseline mode the frozen CLIP's dense features alone (KP weight 1: MaskCLIP, Table 2 row a)."""
    overrides = {"pamr": pamr, "background_threshold": BACKGROUND_THRESHOLD[pamr] if benchmark.has_background else None}
    if baseline:
        overrides["kp_weight"] = 1.0
    return overrides


def predict_labels(segmenter: Segmenter, benchmark: Benchmark, images: list, **overrides) -> list[np.ndarray]:
    """Per-pixel class indices in the benchmark's own numbering (background 0 in background sets)."""
    results = segmenter.segment(images, list(benchmark.prompt_names), with_probabilities=False, **overrides)
    return [np.asarray(r.labels, dtype=np.int64) for r in results]


def sample_confusion(segmenter: Segmenter, benchmark: Benchmark, sample: Sample, overlay: bool = False, **overrides):
    """int64 [C, C] confusion matrix of one image (rows: ground truth); with `overlay`, also the
    picture of its prediction beside its ground truth (see comparison_overlay)."""
    image, label = benchmark.load(sample)
    [prediction] = predict_labels(segmenter, benchmark, [image], **overrides)
    matrix = confusion_matrix(prediction, label, benchmark.num_classes, benchmark.ignore_index)
    return (matrix, comparison_overlay(image, prediction, label, benchmark)) if overlay else matrix


def comparison_overlay(image, prediction: np.ndarray, label: np.ndarray, benchmark: Benchmark):
    """The prediction's overlay beside the ground truth's, each with its legend (ignored pixels
    left unpainted)."""
    from PIL import Image

    from tcl.visualize import overlay_with_legend

    names = list(benchmark.class_names)
    panels = [overlay_with_legend(image, prediction, names, title="prediction"),
              overlay_with_legend(image, label, names, title="ground truth", ignore_index=benchmark.ignore_index)]
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8, max(p.height for p in panels)), (255, 255, 255))
    canvas.paste(panels[0], (0, 0))
    canvas.paste(panels[1], (panels[0].width + 8, 0))
    return canvas


@dataclasses.dataclass
class EvaluationResult:
    benchmark: str
    class_names: tuple[str, ...]
    confusion: ConfusionMatrix
    images: int
    seconds: float

    @property
    def miou(self) -> float:
        return self.confusion.miou

    def as_dict(self) -> dict:
        iou = self.confusion.iou
        return {"benchmark": self.benchmark, "miou": self.miou, "images": self.images, "seconds": self.seconds,
                "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(self.class_names, iou)}}


def evaluate(segmenter: Segmenter, benchmark: Benchmark, samples: Iterable[Sample] | None = None,
             pamr: bool = True, baseline: bool = False, progress: bool = False) -> EvaluationResult:
    """Single-process evaluation of `benchmark` (or some of its samples): the reference that the
    distributed job must equal exactly."""
    samples = list(benchmark.samples if samples is None else samples)
    overrides = protocol_overrides(benchmark, pamr=pamr, baseline=baseline)
    total = ConfusionMatrix(benchmark.num_classes, benchmark.ignore_index)
    start = time.perf_counter()
    for i, sample in enumerate(samples, start=1):
        total.matrix += sample_confusion(segmenter, benchmark, sample, **overrides)
        if progress and (i % 50 == 0 or i == len(samples)):
            print(f"  {benchmark.name}: {i}/{len(samples)} images, mIoU so far {100 * total.miou:.1f}", flush=True)
    return EvaluationResult(benchmark.name, benchmark.class_names, total, len(samples), time.perf_counter() - start)
