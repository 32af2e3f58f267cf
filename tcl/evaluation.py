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

import csv
import dataclasses
import json
import os
import time
from collections.abc import Iterable

import numpy as np

from tcl.data.benchmarks import BENCHMARKS, Benchmark, Sample
from tcl.metrics import ConfusionMatrix, confusion_matrix
from tcl.segment import Segmenter

def protocol_overrides(benchmark: Benchmark, pamr: bool = True, baseline: bool = False) -> dict:
    """Segmenter overrides for a data set: the protocol's background threshold for this PAMR
    setting (tcl.segment.BACKGROUND_THRESHOLD) or none, PAMR, and for the baseline mode the frozen
    CLIP's dense features alone (KP weight 1: MaskCLIP, Table 2 row a)."""
    overrides = {"pamr": pamr, "background_threshold": "auto" if benchmark.has_background else None}
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


# ------------------------------------------------------------------ Table 1: the tables and charts of a run

TABLE_ORDER = ("voc", "context", "coco_object", "voc20", "context59", "coco_stuff", "cityscapes", "ade20k")  # the paper's columns


def dataset_names(spec: str) -> list[str]:
    """"all" -> the eight benchmarks in Table 1's order; else the comma-separated names (custom:FOLDER too)."""
    if spec == "all":
        return list(TABLE_ORDER)
    return [name.strip() for name in spec.split(",") if name.strip()]


def safe_name(dataset: str) -> str:
    """A file name for a data set name (custom:FOLDER holds slashes)."""
    return dataset.replace(":", "_").replace("/", "_")


def title(dataset: str) -> str:
    """Column title: the paper's name of a benchmark, or a custom set's folder name."""
    return BENCHMARKS[dataset].title if dataset in BENCHMARKS else os.path.basename(dataset.rstrip("/"))


def write_outputs(output: str, rows: dict[str, dict], method: str) -> str:
    os.makedirs(output, exist_ok=True)
    names = [n for n in TABLE_ORDER if n in rows] + [n for n in rows if n not in TABLE_ORDER]
    scores = [100 * rows[n]["miou"] for n in names]
    header = "| method | " + " | ".join(rows[n]["title"] for n in names) + " | avg |"
    table = "\n".join([header, "|---|" + "---|" * (len(names) + 1),
                       f"| {method} | " + " | ".join(f"{s:.1f}" for s in scores) + f" | {np.mean(scores):.1f} |"])
    with open(os.path.join(output, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(output, "results.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "class", "iou"])
        for n in names:
            writer.writerow([n, "mIoU", f"{rows[n]['miou']:.6f}"])
            for cls, iou in rows[n]["iou"].items():
                writer.writerow([n, cls, "" if iou is None else f"{iou:.6f}"])
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump({"method": method, "datasets": rows, "average_miou": float(np.mean(scores))}, f, indent=2)
    for n in names:
        plot_class_iou(rows[n], os.path.join(output, f"iou-{safe_name(n)}.png"))
    return table


def plot_class_iou(row: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = [c for c, v in row["iou"].items() if v is not None]
    values = [100 * row["iou"][c] for c in classes]
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(classes)), 4))
    ax.bar(range(len(classes)), values, color="tab:blue")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{row['title']}: mIoU {100 * row['miou']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


