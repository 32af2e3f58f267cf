"""Evaluation data sets: the eight benchmarks of the TCL protocol, plus a simple custom layout.

Layouts are MMSegmentation's converted ones (what the official TCL evaluation reads), relative to
one data root; class names are MMSegmentation's defaults, unchanged (ADE20K's ``'bed '`` keeps its
trailing space, as the official evaluation prompts it):

============  =======  ==========  ==============================================================
name          classes  background  images / labels (split file)
============  =======  ==========  ==============================================================
voc           21       yes         VOCdevkit/VOC2012/JPEGImages/*.jpg, SegmentationClass/*.png
                                   (ImageSets/Segmentation/val.txt)
voc20         20       ignored     same files; reduce zero label
context       60       yes         VOCdevkit/VOC2010/JPEGImages/*.jpg, SegmentationClassContext/*.png
                                   (ImageSets/SegmentationContext/val.txt)
context59     59       ignored     same files; reduce zero label
coco_object   81       yes         coco_stuff164k/images/val2017/*.jpg,
                                   annotations/val2017/*_instanceTrainIds.png
coco_stuff    171      no          coco_stuff164k/images/val2017/*.jpg,
                                   annotations/val2017/*_labelTrainIds.png
cityscapes    19       no          cityscapes/leftImg8bit/val/*/*_leftImg8bit.png,
                                   gtFine/val/*/*_gtFine_labelTrainIds.png
ade20k        150      no          ade/ADEChallengeData2016/images/validation/*.jpg,
                                   annotations/validation/*.png; reduce zero label
============  =======  ==========  ==============================================================

Labels are single-channel PNGs (palette or grey): pixel value = class index, 255 = ignore.
"Reduce zero label" (MMSegmentation's term) shifts every class down by one and turns 0 into the
ignore index: VOC20 / Context59 thereby ignore background pixels, ADE20K its "other" pixels.
In background sets class 0 is background: it is scored but never prompted (the segmenter assigns
it by a score threshold), hence ``prompt_names`` = ``class_names[1:]``.

Custom layout: ``folder/images/*.{png,jpg,jpeg}``, ``folder/labels/<same stem>.png`` and
``folder/classes.txt`` (line i names label value i). A first class named ``background`` makes it
a background set unless ``background=`` says otherwise. Open it as ``open_benchmark("custom:folder")``.

COCO-Object and COCO-Stuff-171 labels are made from COCO-Stuff's ``stuffthingmaps`` with the
converters at the end of this module (see ``coco_stuff_171_train_ids``).
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tcl.images import load_image

IGNORE_INDEX = 255
PREPARE_HINT = "see README 'Preparing the benchmarks'"


class BenchmarkError(ValueError):
    """A benchmark that cannot be read as laid out: the message names the path and what was expected."""


# ---------------------------------------------------------------------------------------------
# Class names (MMSegmentation defaults)
# ---------------------------------------------------------------------------------------------

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")

# Alphabetical: the converted label values follow the sorted ids of the 459-class Context labels.
CONTEXT_CLASSES = (
    "background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat",
    "book", "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass",
    "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate",
    "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow",
    "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")

# 80 things (train ids 0..79, COCO category order) then 91 stuff (80..170).
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage",
    "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat",
    "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
    "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad", "river",
    "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other", "skyscraper",
    "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other",
    "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops",
    "window-blind", "window-other", "wood")

COCO_OBJECT_CLASSES = ("background",) + COCO_STUFF_CLASSES[:80]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle")

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag")


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one benchmark's files are (relative to the data root) and how its labels read."""

    name: str
    title: str  # for messages and tables
    class_names: tuple[str, ...]
    has_background: bool  # class 0 is background: scored, not prompted
    reduce_zero_label: bool  # label 0 -> ignore, others - 1
    image_dir: str
    label_dir: str
    image_suffix: str  # removed from an image's name to get its key
    label_suffix: str  # key + label_suffix = its label's name
    split_file: str | None = None  # one key per line; without it, every image found is used


_VOC = dict(image_dir="VOCdevkit/VOC2012/JPEGImages", label_dir="VOCdevkit/VOC2012/SegmentationClass",
            image_suffix=".jpg", label_suffix=".png",
            split_file="VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt")
_CONTEXT = dict(image_dir="VOCdevkit/VOC2010/JPEGImages", label_dir="VOCdevkit/VOC2010/SegmentationClassContext",
                image_suffix=".jpg", label_suffix=".png",
                split_file="VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt")
_COCO = dict(image_dir="coco_stuff164k/images/val2017", label_dir="coco_stuff164k/annotations/val2017",
             image_suffix=".jpg")

BENCHMARKS: dict[str, BenchmarkSpec] = {spec.name: spec for spec in (
    BenchmarkSpec("voc", "VOC", VOC_CLASSES, True, False, **_VOC),
    BenchmarkSpec("voc20", "VOC20", VOC_CLASSES[1:], False, True, **_VOC),
    BenchmarkSpec("context", "Context", CONTEXT_CLASSES, True, False, **_CONTEXT),
    BenchmarkSpec("context59", "Context59", CONTEXT_CLASSES[1:], False, True, **_CONTEXT),
    BenchmarkSpec("coco_object", "COCO-Object", COCO_OBJECT_CLASSES, True, False,
                  label_suffix="_instanceTrainIds.png", **_COCO),
    BenchmarkSpec("coco_stuff", "COCO-Stuff", COCO_STUFF_CLASSES, False, False,
                  label_suffix="_labelTrainIds.png", **_COCO),
    BenchmarkSpec("cityscapes", "Cityscapes", CITYSCAPES_CLASSES, False, False,
                  image_dir="cityscapes/leftImg8bit/val", label_dir="cityscapes/gtFine/val",
                  image_suffix="_leftImg8bit.png", label_suffix="_gtFine_labelTrainIds.png"),
    BenchmarkSpec("ade20k", "ADE20K", ADE20K_CLASSES, False, True,
                  image_dir="ade/ADEChallengeData2016/images/validation",
                  label_dir="ade/ADEChallengeData2016/annotations/validation",
                  image_suffix=".jpg", label_suffix=".png"),
)}


# ---------------------------------------------------------------------------------------------
# Samples and labels
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sample:
    key: str  # file stem without the layout's suffixes (Cityscapes: "city/stem")
    image_path: str
    label_path: str


def load_label(path: str | os.PathLike, reduce_zero_label: bool = False,
               ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Label PNG -> int64 [H, W] class indices, `ignore_index` = ignore.

    Palette PNGs read as their indices (never converted to RGB). With `reduce_zero_label`
    (MMSegmentation's rule) 0 becomes ignore, every other value v becomes v - 1, ignore stays.
    """
    with Image.open(path) as image:
        label = np.array(image)
        mode = image.mode
    if label.ndim != 2:
        raise BenchmarkError(f"{path}: a label must be a single-channel PNG (palette or grey), got mode {mode}")
    label = label.astype(np.int64)
    if reduce_zero_label:
        reduced = label - 1
        reduced[(label == 0) | (label == ignore_index)] = ignore_index
        label = reduced
    return label


@dataclass
class Benchmark:
    """An opened evaluation set: class names, label conventions and the (image, label) pairs."""

    name: str
    class_names: tuple[str, ...] = field(repr=False)
    has_background: bool
    reduce_zero_label: bool
    samples: list[Sample] = field(repr=False)
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def prompt_names(self) -> tuple[str, ...]:
        """The names the segmenter prompts with: background is found by a threshold, not a text."""
        return self.class_names[1:] if self.has_background else self.class_names

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> tuple[Image.Image, np.ndarray]:
        """(RGB image, int64 [H, W] label), checked to match in size and to hold known classes only."""
        image = load_image(sample.image_path)  # EXIF orientation applied, as OpenCV's decoding does
        label = load_label(sample.label_path, self.reduce_zero_label, self.ignore_index)
        if label.shape != (image.height, image.width):
            raise BenchmarkError(f"{sample.label_path}: label is {label.shape[1]}x{label.shape[0]} but its image "
                                 f"{sample.image_path} is {image.width}x{image.height}")
        unknown = (label >= self.num_classes) & (label != self.ignore_index)
        if unknown.any():
            values = np.unique(label[unknown])[:10].tolist()
            raise BenchmarkError(f"{sample.label_path}: label value(s) {values} (after reduce_zero_label="
                                 f"{self.reduce_zero_label}) are not classes of {self.name} "
                                 f"(0..{self.num_classes - 1}, {self.ignore_index} = ignore)")
        return image, label


# ---------------------------------------------------------------------------------------------
# Opening a benchmark
# ---------------------------------------------------------------------------------------------

def _require(path: Path, title: str, relative: str, root: Path, kind: str = "folder") -> None:
    exists = path.is_dir() if kind == "folder" else path.is_file()
    if not exists:
        raise BenchmarkError(f"{title}: expected {kind} {relative} under {root}, not found ({path}); {PREPARE_HINT}")


def _pair(title: str, keyed_images: list[tuple[str, Path]], label_dir: Path, label_suffix: str) -> list[Sample]:
    """Images (key, path) -> Samples with their labels; every image must have a label."""
    samples, missing = [], []
    for key, image_path in keyed_images:
        label_path = label_dir / f"{key}{label_suffix}"
        if not label_path.is_file():
            missing.append((image_path, label_path))
        samples.append(Sample(key, str(image_path.absolute()), str(label_path.absolute())))
    if missing:
        image_path, label_path = missing[0]
        raise BenchmarkError(f"{title}: no label file for image {image_path}: expected {label_path} "
                             f"({len(missing)} of {len(samples)} images lack a label)")
    return samples


def _find_images(image_dir: Path, suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(key, path) for every file under image_dir ending in one of `suffixes`, sorted by key."""
    found = []
    for path in image_dir.rglob("*"):
        relative = path.relative_to(image_dir).as_posix()
        for suffix in suffixes:
            if relative.lower().endswith(suffix.lower()) and path.is_file():
                found.append((relative[: -len(suffix)], path))
                break
    return sorted(found)


def _open_spec(spec: BenchmarkSpec, data_root: str | os.PathLike, limit: int | None) -> Benchmark:
    root = Path(data_root)
    image_dir, label_dir = root / spec.image_dir, root / spec.label_dir
    _require(image_dir, spec.title, spec.image_dir, root)
    _require(label_dir, spec.title, spec.label_dir, root)
    if spec.split_file is not None:
        split_path = root / spec.split_file
        _require(split_path, spec.title, spec.split_file, root, kind="file")
        keys = [line.strip() for line in split_path.read_text().splitlines() if line.strip()]
        keyed_images = [(key, image_dir / f"{key}{spec.image_suffix}") for key in keys][:limit]
        absent = [path for _, path in keyed_images if not path.is_file()]
        if absent:
            raise BenchmarkError(f"{spec.title}: image {absent[0]} listed in {split_path} not found "
                                 f"({len(absent)} listed images missing)")
    else:
        keyed_images = _find_images(image_dir, (spec.image_suffix,))[:limit]
    if not keyed_images:
        raise BenchmarkError(f"{spec.title}: no *{spec.image_suffix} images in {image_dir}; {PREPARE_HINT}")
    samples = _pair(spec.title, keyed_images, label_dir, spec.label_suffix)
    return Benchmark(spec.name, spec.class_names, spec.has_background, spec.reduce_zero_label, samples)


def open_custom(folder: str | os.PathLike, background: bool | None = None, limit: int | None = None) -> Benchmark:
    """The custom layout: images/, labels/ (same stem, .png) and classes.txt (line i = label value i).

    `background=None` decides from classes.txt: a first class named "background" (any case) makes
    class 0 background (scored, not prompted).
    """
    root = Path(folder)
    title = f"custom set {root}"
    for relative, kind in (("images", "folder"), ("labels", "folder"), ("classes.txt", "file")):
        _require(root / relative, title, relative, root, kind)
    lines = (root / "classes.txt").read_text().splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    class_names = tuple(line.strip() for line in lines)
    if not class_names or not all(class_names):
        raise BenchmarkError(f"{root / 'classes.txt'}: expected one non-empty class name per line "
                             f"(line i names label value i)")
    if background is None:
        background = class_names[0].lower() == "background"
    keyed_images = _find_images(root / "images", (".png", ".jpg", ".jpeg"))
    if not keyed_images:
        raise BenchmarkError(f"{title}: no .png/.jpg images in {root / 'images'}")
    duplicates = sorted(key for key, count in Counter(key for key, _ in keyed_images).items() if count > 1)
    if duplicates:
        raise BenchmarkError(f"{title}: several images share the stem(s) {duplicates[:5]}; labels pair by stem")
    samples = _pair(title, keyed_images[:limit], root / "labels", ".png")
    return Benchmark(f"custom:{root}", class_names, background, False, samples)


def open_benchmark(name: str, data_root: str | os.PathLike | None = None, limit: int | None = None,
                   background: bool | None = None) -> Benchmark:
    """A benchmark by registry name (files under `data_root`), or "custom:<folder>".

    `limit` keeps the first N images (split-file order, else sorted by key). `background` only
    applies to custom sets.
    """
    if name.startswith("custom:"):
        return open_custom(name.removeprefix("custom:"), background=background, limit=limit)
    if name not in BENCHMARKS:
        raise BenchmarkError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)} or custom:<folder>")
    if data_root is None:
        raise BenchmarkError(f"benchmark {name!r} needs a data root (the folder holding its layout)")
    return _open_spec(BENCHMARKS[name], data_root, limit)


# ---------------------------------------------------------------------------------------------
# COCO converters: stuffthingmaps -> COCO-Stuff-171 / COCO-Object train ids
# ---------------------------------------------------------------------------------------------

# COCO-Stuff's stuffthingmaps (stuffthingmaps_trainval2017.zip) store pixel = COCO id - 1: values
# 0..90 are the 91 thing ids of the COCO paper, 91..181 the 91 stuff ids (92..182), 255 unlabeled.
# Only 80 thing ids were ever annotated; these 11 (1-based COCO ids) never occur in the maps:
# 12 street sign, 26 hat, 29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window, 69 desk,
# 71 door, 83 blender, 91 hair brush. Dropping them leaves 80 + 91 = 171 classes.
COCO_UNUSED_THING_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
COCO_THING_IDS = tuple(i for i in range(1, 92) if i not in COCO_UNUSED_THING_IDS)  # 80, COCO order
COCO_STUFF_IDS = tuple(range(92, 183))  # 91


def _lookup_table(train_ids: dict[int, int], default: int) -> np.ndarray:
    """uint8 [256]: stuffthingmap pixel value -> train id (values not in `train_ids` -> default)."""
    table = np.full(256, default, dtype=np.uint8)
    for pixel, train_id in train_ids.items():
        table[pixel] = train_id
    return table


# Train ids 0..79 = things in COCO order, 80..170 = stuff; unlabeled stays ignore.
# Unused thing ids and values above 181 cannot occur; should they, they are ignored, not guessed.
_COCO_STUFF_171_TABLE = _lookup_table(
    {coco_id - 1: train_id for train_id, coco_id in enumerate(COCO_THING_IDS + COCO_STUFF_IDS)}, IGNORE_INDEX)

# COCO-Object (GroupViT's conversion, used by TCL): things 1..80, stuff and unlabeled -> background 0.
_COCO_OBJECT_TABLE = _lookup_table(
    {**{coco_id - 1: 0 for coco_id in COCO_STUFF_IDS}, IGNORE_INDEX: 0,
     **{coco_id - 1: train_id for train_id, coco_id in enumerate(COCO_THING_IDS, start=1)}}, IGNORE_INDEX)


def _apply_table(stuffthingmap: np.ndarray, table: np.ndarray) -> np.ndarray:
    stuffthingmap = np.asarray(stuffthingmap)
    if stuffthingmap.ndim != 2 or not np.issubdtype(stuffthingmap.dtype, np.integer):
        raise ValueError(f"expected a 2-D integer stuffthingmap, got {stuffthingmap.dtype} {stuffthingmap.shape}")
    if stuffthingmap.size and (stuffthingmap.min() < 0 or stuffthingmap.max() > 255):
        raise ValueError("stuffthingmap values must lie in 0..255")
    return table[stuffthingmap.astype(np.intp)]


def coco_stuff_171_train_ids(stuffthingmap: np.ndarray) -> np.ndarray:
    """stuffthingmap [H, W] -> uint8 COCO-Stuff-171 train ids (0..170, 255 = ignore)."""
    return _apply_table(stuffthingmap, _COCO_STUFF_171_TABLE)


def coco_object_train_ids(stuffthingmap: np.ndarray) -> np.ndarray:
    """stuffthingmap [H, W] -> uint8 COCO-Object train ids (0 = background, 1..80 = things)."""
    return _apply_table(stuffthingmap, _COCO_OBJECT_TABLE)


def _convert_file(src_png: str | os.PathLike, dst_png: str | os.PathLike, convert) -> None:
    with Image.open(src_png) as image:
        train_ids = convert(np.array(image))
    dst_png = Path(dst_png)
    dst_png.parent.mkdir(parents=True, exist_ok=True)
    partial = dst_png.with_name(dst_png.name + ".partial")  # a crash never leaves a half file under the real name
    Image.fromarray(train_ids).save(partial, format="PNG")  # uint8 [H, W] -> mode L
    os.replace(partial, dst_png)


def coco_stuff_171_from_stuffthingmaps(src_png: str | os.PathLike, dst_png: str | os.PathLike) -> None:
    """Write the COCO-Stuff-171 label PNG (`*_labelTrainIds.png`) of one stuffthingmap PNG."""
    _convert_file(src_png, dst_png, coco_stuff_171_train_ids)


def coco_object_from_stuffthingmaps(src_png: str | os.PathLike, dst_png: str | os.PathLike) -> None:
    """Write the COCO-Object label PNG (`*_instanceTrainIds.png`) of one stuffthingmap PNG."""
    _convert_file(src_png, dst_png, coco_object_train_ids)


_CONVERSIONS = {
    "coco_stuff": ("_labelTrainIds.png", coco_stuff_171_from_stuffthingmaps),
    "coco_object": ("_instanceTrainIds.png", coco_object_from_stuffthingmaps),
}


def convert_folder(src_dir: str | os.PathLike, target: Literal["coco_stuff", "coco_object"],
                   dst_dir: str | os.PathLike | None = None, overwrite: bool = False) -> int:
    """Convert every stuffthingmap `<stem>.png` in src_dir to `<stem><suffix>` in dst_dir (default:
    alongside, as MMSegmentation's layout keeps them). Idempotent: existing outputs are kept unless
    `overwrite`, and earlier outputs (`*TrainIds.png`) are never taken as input. Returns files written."""
    if target not in _CONVERSIONS:
        raise ValueError(f"unknown conversion target {target!r}; known: {', '.join(_CONVERSIONS)}")
    suffix, convert = _CONVERSIONS[target]
    src_dir = Path(src_dir)
    dst_dir = Path(dst_dir) if dst_dir is not None else src_dir
    if not src_dir.is_dir():
        raise BenchmarkError(f"expected a folder of COCO-Stuff stuffthingmaps at {src_dir}, not found; {PREPARE_HINT}")
    written = 0
    for src_png in sorted(src_dir.glob("*.png")):
        if src_png.name.endswith("TrainIds.png"):
            continue
        dst_png = dst_dir / f"{src_png.stem}{suffix}"
        if dst_png.exists() and not overwrite:
            continue
        convert(src_png, dst_png)
        written += 1
    return written
