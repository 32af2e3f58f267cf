"""The synthetic world: the project's offline data set, where the ground truth is known.

No weights or data sets can be downloaded on the machines this project is built on, so it draws
its own: scenes of one to three textured "stuff" regions (sky, grass, water, sand, brick, wood)
with shapes on top, each in a random colour with its class's own surface pattern (stars dotted,
squares checked, ...; real object classes have class-specific local appearance, which CLIP's
dense features pick up), captioned like web alt-text ("a red star on the grass", "two rings and a
heart", "brick wall"). Captions name the salient object or two, never everything, so grounding
the words in the pixels is a real problem, as it is for web image-text pairs.

Everything is drawn from a seeded numpy Generator: the same seed gives the same images, captions
and label maps on every machine. How hard the world is decides whether a tiny CLIP learns it in
minutes, so it is a config, `SceneConfig`; every function that draws scenes takes one, and the
main job passes the same one to the shards, the evaluation sets and the zero-shot test. How the
defaults were chosen, with the measurements: docs/experiments.md.

    python -m tcl.data.synthetic --preview preview.png          # a grid of scenes with captions
    python -m tcl.data.synthetic --eval-set shapes-things --output data/shapes-things --count 200
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tcl.cli import add_world_argument

# The vocabulary (other tools rely on these exact words and their order).
SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "ring", "crescent")
COLOURS = {
    "red": (215, 35, 35), "green": (35, 160, 55), "blue": (35, 75, 215), "yellow": (240, 210, 35),
    "purple": (130, 50, 170), "orange": (240, 130, 25), "white": (245, 245, 240), "black": (20, 20, 25),
}
STUFF = ("sky", "grass", "water", "sand", "brick", "wood")
EVAL_SETS = {
    # name: class names (label value = index); "background" first means class 0 is background
    "shapes-things": ("background", *SHAPES),  # stuff counts as background
    "shapes-stuff": (*SHAPES, *STUFF),  # every pixel is a shape or a stuff class
}


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """How hard the world is. Defaults: the setting the main job uses (see the README)."""
    max_shapes: int = 2  # shapes per scene: 1 to this many
    min_area: float = 0.10  # a shape's area as a fraction of the image before occlusion, log-uniform in [min, max]
    max_area: float = 0.40
    max_rotation: float = 10.0  # degrees either way; 0 draws every shape upright
    max_stuff: int = 3  # stuff regions per scene: 1 to this many
    stuff_contrast: float = 0.3  # texture strength within a stuff region: 1 as drawn, 0 flat at its mean colour
    stuff_dullness: float = 0.7  # 0..1: how far stuff is pulled toward its own grey (figure and ground, as in photos)
    min_colour_distance: float = 120.0  # a shape's colour is redrawn among those at least this far (RGB) from the ground under it
    shape_shading: float = 0.25  # brightness change across a shape
    shape_grain: float = 6.0  # per-pixel noise (std, 0..255) in a shape's paint
    shape_markings: float = 0.5  # strength of each shape class's own surface pattern (MARKINGS); 0: plain paint
    sensor_noise: float = 6.0  # image noise std drawn in [sensor_noise / 3, sensor_noise]
    blur: float = 0.8  # Gaussian blur radius drawn in [0.3, blur] on half the images; 0: never
    colour_mention: float = 0.6  # captions: chance that a shape is named with its colour ("a red star")
    stuff_mention: float = 0.35  # captions: chance that the ground is named too ("... on the grass")
    background_caption: float = 0.08  # captions: chance that only the ground is named ("brick wall")
    caption_noise: bool = True  # captions: web noise (prefixes, tag lines, case, typos)

    def __post_init__(self):
        if not (1 <= self.max_shapes <= 4 and 1 <= self.max_stuff <= len(STUFF)):
            raise ValueError(f"max_shapes must be 1..4 and max_stuff 1..{len(STUFF)}: {self}")
        if not 0 < self.min_area <= self.max_area < 1:
            raise ValueError(f"need 0 < min_area <= max_area < 1: {self}")


def scene_config(overrides: Sequence[str] = ()) -> SceneConfig:
    """SceneConfig from `key=value` strings (values parsed as YAML), e.g. ["max_shapes=2"]."""
    from tcl import config as config_lib

    return config_lib.load(SceneConfig, None, overrides)


@dataclasses.dataclass
class SceneObject:
    shape: str
    colour: str
    area: float  # visible fraction of the image after occlusion


@dataclasses.dataclass
class Scene:
    image: Image.Image
    shape_map: np.ndarray  # [H, W] uint8: 0 = no shape, 1 + SHAPES.index(shape) otherwise
    stuff_map: np.ndarray  # [H, W] uint8: STUFF index everywhere
    objects: list[SceneObject]  # largest visible first
    stuff: list[str]  # stuff classes present, largest first
    caption: str

    def label_map(self, eval_set: str) -> np.ndarray:
        """Per-pixel ground truth of one of EVAL_SETS, uint8 [H, W]."""
        if eval_set == "shapes-things":
            return self.shape_map.copy()
        if eval_set == "shapes-stuff":
            return np.where(self.shape_map > 0, self.shape_map - 1, len(SHAPES) + self.stuff_map).astype(np.uint8)
        raise ValueError(f"unknown evaluation set {eval_set!r}; known: {', '.join(EVAL_SETS)}")


# --------------------------------------------------------------------------------------------------
# stuff: procedural textures

def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a coarse random grid upsampled bicubically, [size, size]."""
    grid = (rng.random((cells, cells)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255


def stuff_texture(name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 [size, size, 3] texture in [0, 255] for a stuff class: patterned, never flat."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fine = rng.random((size, size)).astype(np.float32)
    coarse = _smooth_noise(rng, size, 4)

    def mix(a, b, t):  # colour a where t = 0, b where t = 1
        return np.asarray(a, np.float32) * (1 - t[..., None]) + np.asarray(b, np.float32) * t[..., None]

    if name == "sky":  # bright at the horizon, clouds as soft white blobs
        sky = mix((70, 130, 225), (170, 205, 245), y)
        return mix(sky, (250, 250, 250), np.clip(coarse * 1.6 - 0.9, 0, 1))
    if name == "grass":  # blades: noise stretched vertically
        blades = (rng.random((max(2, size // 8), size)) * 255).astype(np.uint8)
        blades = np.asarray(Image.fromarray(blades).resize((size, size), Image.BILINEAR), np.float32) / 255
        return mix((30, 95, 25), (120, 190, 60), np.clip(0.55 * blades + 0.25 * fine + 0.2 * coarse, 0, 1))
    if name == "water":  # horizontal waves
        phase = rng.uniform(0, 2 * np.pi)
        waves = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(6, 10) * y + 0.6 * coarse) + phase)
        return mix((15, 70, 120), (60, 150, 185), 0.7 * waves + 0.3 * fine)
    if name == "sand":  # grain and diagonal ripples
        ripples = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(4, 7) * (x + 0.5 * y + 0.2 * coarse))
        return mix((190, 160, 110), (235, 215, 165), 0.5 * fine + 0.3 * ripples + 0.2 * coarse)
    if name == "brick":  # rows of bricks, each row offset by half a brick, light mortar between
        rows = max(3, size // 8)
        row = np.floor(y * rows)
        column = x * rows / 2 + 0.5 * (row % 2)
        mortar = (np.abs(y * rows - np.round(y * rows)) < 0.12) | (np.abs(column - np.round(column)) < 0.06)
        shade = _smooth_noise(rng, size, rows)  # brick-to-brick colour variation
        brick = mix((125, 40, 30), (185, 75, 50), 0.6 * shade + 0.4 * fine)
        return np.where(mortar[..., None], mix((175, 170, 160), (205, 200, 190), fine), brick)
    if name == "wood":  # wavy grain along planks
        grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(8, 14) * x + 1.5 * coarse))
        planks = (np.abs(y * 4 - np.round(y * 4)) < 0.03)
        wood = mix((110, 65, 30), (175, 115, 60), 0.75 * grain + 0.25 * fine)
        return np.where(planks[..., None], np.float32(70), wood)
    raise ValueError(f"unknown stuff class {name!r}; known: {', '.join(STUFF)}")


def stuff_layout(rng: np.random.Generator, size: int, count: int) -> np.ndarray:
    """Region indices 0..count-1 [size, size]: bands split by wavy horizontal or vertical borders."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    along, across = (x, y) if rng.random() < 0.7 else (y, x)  # mostly horizon-like bands
    borders = np.sort(rng.uniform(0.25, 0.75, count - 1)) if count > 1 else np.zeros(0)
    region = np.zeros((size, size), np.int64)
    for border in borders:
        wave = 0.06 * np.sin(2 * np.pi * (rng.uniform(0.5, 2) * along + rng.uniform(0, 1)))
        region += across > border + wave
    return region


# --------------------------------------------------------------------------------------------------
# things: shapes

def _polygon(points: np.ndarray, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(canvas, bool)


def _shape_frame(size: int, center: tuple[float, float], angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pixel centre's offset from `center` in pixels, along the shape's axes rotated by
    `angle` rad (image y down). Two [size, size] arrays."""
    cos, sin = np.cos(angle), np.sin(angle)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = x - center[0], y - center[1]
    return dx * cos + dy * sin, -dx * sin + dy * cos


def shape_mask(shape: str, size: int, center: tuple[float, float], radius: float, angle: float) -> np.ndarray:
    """Boolean [size, size] mask of a shape of circumradius `radius` pixels, rotated by `angle` rad."""
    cx, cy = center
    cos, sin = np.cos(angle), np.sin(angle)
    along, across = _shape_frame(size, center, angle)
    u, v = along / radius, across / -radius  # shape coordinates: unit radius, y up, rotated

    def polygon(unit_points: list[tuple[float, float]]) -> np.ndarray:
        p = np.asarray(unit_points, np.float32) * radius
        rotated = np.stack([p[:, 0] * cos + p[:, 1] * sin, p[:, 0] * sin - p[:, 1] * cos], 1)
        return _polygon(rotated + (cx, cy), size)

    def regular(n: int, inner: float | None = None, start: float = np.pi / 2) -> list[tuple[float, float]]:
        points = []
        for k in range(n):
            a = start + 2 * np.pi * k / n
            points.append((np.cos(a), np.sin(a)))
            if inner is not None:
                b = a + np.pi / n
                points.append((inner * np.cos(b), inner * np.sin(b)))
        return points

    r2 = u * u + v * v
    if shape == "circle":
        return r2 <= 1
    if shape == "ring":
        return (r2 <= 1) & (r2 >= 0.55 ** 2)
    if shape == "crescent":
        return (r2 <= 1) & ((u - 0.45) ** 2 + (v - 0.15) ** 2 > 0.8 ** 2)
    if shape == "heart":  # the classic implicit heart curve, scaled to about unit radius
        hx, hy = 1.15 * u, 1.15 * v + 0.15
        return (hx * hx + hy * hy - 1) ** 3 - hx * hx * hy ** 3 <= 0
    if shape == "square":
        return polygon(regular(4, start=np.pi / 4))
    if shape == "triangle":
        return polygon(regular(3))
    if shape == "star":
        return polygon(regular(5, inner=0.42))
    if shape == "cross":
        w = 0.3
        return polygon([(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1), (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)])
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


MARKINGS = {  # each shape class's surface pattern, in the shape's own frame; a horizontal flip (training) keeps each one
    "circle": "concentric rings", "square": "checkerboard", "triangle": "horizontal stripes", "star": "dots",
    "heart": "diagonal cross-hatch", "cross": "vertical stripes", "ring": "radial spokes", "crescent": "wavy stripes",
}


def shape_marking(shape: str, size: int, center: tuple[float, float], angle: float) -> np.ndarray:
    """Boolean [size, size] map of where the shape class's marking lines fall (MARKINGS), in the
    shape's rotated frame, with a period of size / 12 pixels (5 px at 64)."""
    period = size / 12
    along, across = _shape_frame(size, center, angle)
    a, b = along / period, across / period  # in periods

    def wave(t: np.ndarray) -> np.ndarray:
        return np.sin(2 * np.pi * t)

    if shape == "circle":
        return wave(np.hypot(a, b)) > 0.3
    if shape == "square":
        return wave(a) * wave(b) > 0
    if shape == "triangle":
        return wave(b) > 0.3
    if shape == "star":
        return np.cos(2 * np.pi * a) + np.cos(2 * np.pi * b) > 1.0
    if shape == "heart":
        return (np.abs(np.sin(np.pi * (a + b) / 2)) < 0.3) | (np.abs(np.sin(np.pi * (a - b) / 2)) < 0.3)
    if shape == "cross":
        return wave(a) > 0.3
    if shape == "ring":
        return np.sin(6 * np.arctan2(b, a)) > 0.3
    if shape == "crescent":
        return wave(b + 0.4 * np.sin(2 * np.pi * a / 1.5)) > 0.3
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


_FILL = {  # area of each shape at unit circumradius (pixels per radius^2, measured), to size shapes by area
    "circle": np.pi, "ring": np.pi * (1 - 0.55 ** 2), "crescent": 1.5, "heart": 2.78, "square": 2.0,
    "triangle": 1.3, "star": 1.22, "cross": 2.04,
}


# --------------------------------------------------------------------------------------------------
# captions

_PLURAL = {shape: shape + ("es" if shape == "cross" else "s") for shape in SHAPES}
_NUMBER = {2: "two", 3: "three", 4: "four"}
_STUFF_PLACE = {
    "sky": ["in the sky", "against the sky", "in a blue sky"], "grass": ["on the grass", "on green grass", "in a field"],
    "water": ["on the water", "in the water", "over the sea"], "sand": ["on the sand", "on the beach", "in the desert"],
    "brick": ["on a brick wall", "on bricks", "painted on a brick wall"], "wood": ["on wood", "on a wooden table", "on wooden planks"],
}
_STUFF_ALONE = {
    "sky": ["blue sky", "sky with clouds", "cloudy sky", "the sky"], "grass": ["green grass", "grass texture", "a lawn"],
    "water": ["water", "calm water", "sea surface"], "sand": ["sand", "sand texture", "beach sand"],
    "brick": ["brick wall", "red bricks", "old brick wall"], "wood": ["wood texture", "wooden planks", "wood grain"],
}
_PREFIXES = ["", "", "", "", "a photo of ", "image of ", "picture of ", "stock photo: ", "illustration of "]
_SUFFIXES = ["", "", "", "", "", " - stock image", " hd", " #art", " | free download", " icon"]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun_phrase(rng: np.random.Generator, obj: SceneObject, count: int, colour_mention: float) -> str:
    with_colour = rng.random() < colour_mention
    if count > 1:
        return f"{_NUMBER[count]} {obj.colour + ' ' if with_colour else ''}{_PLURAL[obj.shape]}"
    return _article(f"{obj.colour} {obj.shape}" if with_colour else obj.shape)


def _add_noise(rng: np.random.Generator, caption: str) -> str:
    """A little web-caption noise: case, a typo, a tag line."""
    caption = rng.choice(_PREFIXES) + caption + rng.choice(_SUFFIXES)
    if rng.random() < 0.03 and len(caption) > 4:  # swap two neighbouring letters
        i = int(rng.integers(1, len(caption) - 2))
        caption = caption[:i] + caption[i + 1] + caption[i] + caption[i + 2:]
    if rng.random() < 0.15:
        caption = caption.capitalize()
    elif rng.random() < 0.05:
        caption = caption.upper()
    return caption


def write_caption(rng: np.random.Generator, objects: list[SceneObject], stuff: list[str],
                  world: SceneConfig = SceneConfig()) -> str:
    """Alt-text for a scene: the salient object or two, often with colour, sometimes the stuff."""
    if rng.random() < world.background_caption or not objects:  # the background is the picture
        background = str(rng.choice(_STUFF_ALONE[stuff[0]]))
        return _add_noise(rng, background) if world.caption_noise else background
    main = objects[0]
    same = [o for o in objects if o.shape == main.shape]
    if len(same) > 1 and rng.random() < 0.7:
        phrase = _noun_phrase(rng, main, len(same), world.colour_mention)
        others = [o for o in objects if o.shape != main.shape]
    else:
        phrase = _noun_phrase(rng, main, 1, world.colour_mention)
        others = [o for o in objects if o.shape != main.shape]  # never "a ring next to a ring"
    if others and others[0].area > 0.25 * main.area and rng.random() < 0.5:
        phrase += rng.choice([" and ", " with ", " next to "]) + _noun_phrase(rng, others[0], 1, world.colour_mention)
    if rng.random() < world.stuff_mention:
        phrase += " " + str(rng.choice(_STUFF_PLACE[stuff[0]]))
    return _add_noise(rng, phrase) if world.caption_noise else phrase


# --------------------------------------------------------------------------------------------------
# scenes

def make_scene(rng: np.random.Generator, size: int = 64, world: SceneConfig = SceneConfig()) -> Scene:
    """One random scene: textured stuff regions, shapes on top, lighting, noise, blur, a caption."""
    num_stuff = int(rng.integers(1, world.max_stuff + 1))
    stuff_ids = rng.choice(len(STUFF), num_stuff, replace=False)
    region = stuff_layout(rng, size, num_stuff)
    stuff_map = stuff_ids[region].astype(np.uint8)
    canvas = np.zeros((size, size, 3), np.float32)
    for i, stuff_id in enumerate(stuff_ids):
        texture = stuff_texture(STUFF[stuff_id], rng, size)
        mean = texture.mean(axis=(0, 1), keepdims=True)
        canvas = np.where((region == i)[..., None], mean + world.stuff_contrast * (texture - mean), canvas)
    # stuff a little duller than things (figure and ground, as in photos); textures still vary
    canvas = (1 - world.stuff_dullness) * canvas + world.stuff_dullness * canvas.mean(axis=2, keepdims=True)

    shape_map = np.zeros((size, size), np.uint8)
    drawn: list[tuple[str, str]] = []
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    max_rotation = np.deg2rad(world.max_rotation)
    for _ in range(int(rng.integers(1, world.max_shapes + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        area = np.exp(rng.uniform(np.log(world.min_area), np.log(world.max_area)))
        radius = np.sqrt(area * size * size / _FILL[shape])
        center = tuple(rng.uniform(0.15 * size, 0.85 * size, 2))
        angle = rng.uniform(-max_rotation, max_rotation)
        mask = shape_mask(shape, size, center, radius, angle=angle)
        colours = list(COLOURS)
        if world.min_colour_distance > 0 and mask.any():  # no green shape lost on the grass
            ground = canvas[mask].mean(axis=0)
            colours = [c for c in COLOURS if np.linalg.norm(np.asarray(COLOURS[c]) - ground) >= world.min_colour_distance] or colours
        colour = colours[int(rng.integers(len(colours)))]
        if not mask.any():
            continue
        # the shape's colour, with shading across it and a little per-pixel variation
        shading = 1 + world.shape_shading * ((x - center[0] / size) * np.cos(rng.uniform(0, 2 * np.pi)) + (y - center[1] / size))
        paint = np.asarray(COLOURS[colour], np.float32) * shading[..., None] + rng.normal(0, world.shape_grain, (size, size, 3))
        if world.shape_markings > 0:  # the class's pattern: lines toward dark grey on light paint, light grey on dark
            lines = shape_marking(shape, size, center, angle)[..., None]
            target = 40.0 if np.mean(COLOURS[colour]) > 110 else 215.0
            paint = np.where(lines, paint + world.shape_markings * (target - paint), paint)
        canvas = np.where(mask[..., None], paint, canvas)
        drawn.append((shape, colour))
        shape_map[mask] = len(drawn)  # provisional: index into `drawn`, replaced below

    objects, final = [], np.zeros_like(shape_map)
    for index, (shape, colour) in enumerate(drawn, start=1):
        visible = shape_map == index
        if visible.sum() >= 4:  # a sliver left by occlusion is not an object anyone would caption
            objects.append(SceneObject(shape, colour, float(visible.mean())))
        final[visible] = 1 + SHAPES.index(shape)
    objects.sort(key=lambda o: -o.area)

    # lighting: brightness, contrast and a soft directional gradient; then sensor noise and blur
    light = rng.uniform(0.75, 1.2) * (1 + 0.15 * ((x - 0.5) * rng.normal() + (y - 0.5) * rng.normal()))
    contrast = rng.uniform(0.8, 1.15)
    canvas = (canvas - 128) * contrast + 128
    canvas = canvas * light[..., None] + rng.normal(0, rng.uniform(world.sensor_noise / 3, world.sensor_noise), canvas.shape)
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    if rng.random() < 0.5 and world.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(min(0.3, world.blur), world.blur)))

    present = [STUFF[s] for s in sorted(set(stuff_map.flat), key=lambda s: -(stuff_map == s).sum())]
    return Scene(image, final, stuff_map, objects, present, write_caption(rng, objects, present, world))


def scenes(count: int, seed: int, image_size: int = 64, world: SceneConfig = SceneConfig()) -> Iterator[Scene]:
    """`count` scenes from one seed; scene i is the same whatever `count` is."""
    for i in range(count):
        yield make_scene(np.random.default_rng([seed, i]), image_size, world)


def caption_pairs(count: int, seed: int, image_size: int = 64,
                  world: SceneConfig = SceneConfig()) -> Iterator[tuple[Image.Image, str]]:
    """(image, caption) training pairs, as jobs/make_shards.py writes them."""
    for scene in scenes(count, seed, image_size, world):
        yield scene.image, scene.caption


# --------------------------------------------------------------------------------------------------
# evaluation sets (the project's custom evaluation layout, read by tcl.data.benchmarks)

def write_eval_set(root: str, name: str, count: int, seed: int, image_size: int = 64,
                   world: SceneConfig = SceneConfig()) -> str:
    """Write `count` held-out scenes as images/NNNNN.png, labels/NNNNN.png and classes.txt.
    Returns `root`. Use a seed different from the training shards' (the pipeline adds 10**6)."""
    if name not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; known: {', '.join(EVAL_SETS)}")
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "labels"), exist_ok=True)
    for i, scene in enumerate(scenes(count, seed, image_size, world)):
        scene.image.save(os.path.join(root, "images", f"{i:05d}.png"))
        Image.fromarray(scene.label_map(name)).save(os.path.join(root, "labels", f"{i:05d}.png"))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(EVAL_SETS[name]) + "\n")
    return root


def single_object_images(count: int, seed: int, image_size: int = 64,
                         world: SceneConfig = SceneConfig()) -> Iterator[tuple[Image.Image, str]]:
    """(image, shape) pairs whose largest shape is at least twice as large as any other: the
    zero-shot test of the tiny CLIP ("which of the 8 shapes is this?")."""
    rng_index = 0
    produced = 0
    while produced < count:
        scene = make_scene(np.random.default_rng([seed, 7, rng_index]), image_size, world)
        rng_index += 1
        objects = scene.objects
        if objects and (len(objects) == 1 or objects[0].area >= 2 * objects[1].area):
            produced += 1
            yield scene.image, objects[0].shape


def zero_shot_shape_accuracy(clip_config, mean: Sequence[float], std: Sequence[float], count: int = 400, seed: int = 12345,
                             image_size: int = 64, world: SceneConfig | None = None) -> float:
    """Top-1 accuracy of the CLIP `clip_config` describes at naming the largest shape of `count`
    held-out single-object scenes of `world` (8 classes, the nine prompt templates TCL uses)."""
    import torch

    from tcl.clip import FrozenCLIP, zero_shot_predictions
    from tcl.images import normalize

    clip = FrozenCLIP(clip_config)
    pairs = list(single_object_images(count, seed, image_size, world or SceneConfig()))
    images = torch.from_numpy(np.stack([np.asarray(image) for image, _ in pairs])).permute(0, 3, 1, 2)
    predictions = zero_shot_predictions(clip, normalize(images, mean, std), SHAPES)
    labels = torch.tensor([SHAPES.index(shape) for _, shape in pairs])
    return float((predictions == labels).float().mean())


def preview(path: str, count: int = 16, seed: int = 0, image_size: int = 96, world: SceneConfig = SceneConfig()) -> str:
    """A grid of scenes, each with its caption and its shapes-stuff label map."""
    from tcl.visualize import label_png

    columns = 4
    tile_h = 2 * image_size + 28
    sheet = Image.new("RGB", (columns * (image_size + 8), ((count + columns - 1) // columns) * tile_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, scene in enumerate(scenes(count, seed, image_size, world)):
        x0, y0 = (i % columns) * (image_size + 8), (i // columns) * tile_h
        sheet.paste(scene.image, (x0, y0))
        sheet.paste(label_png(scene.label_map("shapes-stuff"), EVAL_SETS["shapes-stuff"]).convert("RGB"), (x0, y0 + image_size))
        caption = scene.caption if len(scene.caption) <= 24 else scene.caption[:22] + ".."
        draw.text((x0, y0 + 2 * image_size + 4), caption, fill="black")
    sheet.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", metavar="PNG", help="write a grid of scenes with captions and label maps")
    parser.add_argument("--eval-set", choices=list(EVAL_SETS), help="write an evaluation set to --output")
    parser.add_argument("--output", help="folder for --eval-set")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64)
    add_world_argument(parser)
    args = parser.parse_args(argv)
    world = scene_config(args.world)
    if args.preview:
        print(preview(args.preview, args.count, args.seed, max(args.image_size, 96), world))
    if args.eval_set:
        if not args.output:
            parser.error("--eval-set needs --output")
        print(write_eval_set(args.output, args.eval_set, args.count, args.seed, args.image_size, world))
    if not (args.preview or args.eval_set):
        parser.print_help()


if __name__ == "__main__":
    main()
