"""The main job: the whole of TCL on one machine, on the synthetic world, with nothing downloaded.

    synthetic shards -> tiny CLIP pretraining in two stages (Ray Train) -> TCL training (Ray Train,
    DDP over 2 workers) -> mIoU of the frozen-CLIP baseline and of TCL on shapes-things and
    shapes-stuff -> overlay PNGs of held-out images -> a table

The tiny CLIP learns in two stages: first on captions that name only the shapes ("a star", "two
rings and a heart"; shards-objects/, the same world), then on the web-like captions TCL trains on
(shards/). On the web-like captions alone it learns colours and grounds first and never the shapes
in its budget (docs/experiments.md).

Each stage leaves its result in the output folder and is skipped on a rerun when that result is
there (Ray Train resumes an unfinished run from its latest checkpoint). The baseline is the paper's
Table 2 row (a): the frozen CLIP's dense features with the knowledge-preservation branch only
(MaskCLIP), same CLIP, same protocol.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

from tcl.console import say, stage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EVAL_SEED = 10 ** 6  # held-out scenes: training shards use seeds below this
# the first CLIP stage's captions: the shapes only, no colour, ground, background-only captions or noise
OBJECT_CAPTIONS = ("colour_mention=0", "stuff_mention=0", "background_caption=0", "caption_noise=false")
SCENE_PROTOCOL = {"short_side": 64, "window": 64, "stride": 32}  # 64 px scenes: one window each; the rest as the protocol
BASELINE = "baseline (frozen CLIP, KP only)"


@dataclasses.dataclass
class PipelineJob:
    output: str = "outputs/pipeline"
    pairs: int = 20000  # synthetic image-text pairs TCL and the CLIP's second stage train on
    eval_images: int = 100  # images per evaluation set
    object_pairs: int = 8000  # pairs with shape-only captions for the CLIP's first stage
    clip_object_steps: int = 400  # CLIP steps on the shape-only captions; 0 skips that stage
    clip_steps: int = 600  # CLIP steps on the web-like captions
    tcl_steps: int | None = None  # default: configs/synthetic.yaml
    world: list[str] = dataclasses.field(default_factory=list)  # SceneConfig overrides, key=value
    tcl_overrides: list[str] = dataclasses.field(default_factory=list)  # e.g. model.loss.area_weight=0
    fresh: bool = False  # delete the output folder first

    def __post_init__(self):
        if self.clip_object_steps and not self.object_pairs:
            raise ValueError("object_pairs 0 leaves the tiny CLIP's first stage nothing to train on: set clip_object_steps 0 too")


def record_world(job: PipelineJob):
    """The run's synthetic world, written to <output>/world.json; a rerun must ask for the same one."""
    from tcl.data import synthetic

    world = synthetic.scene_config(job.world)
    path = os.path.join(job.output, "world.json")
    values = dataclasses.asdict(world)
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f) != values:
                raise ValueError(f"{job.output} was made in another synthetic world ({path}); start fresh or use another output")
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
    return world


def make_data(job: PipelineJob, world) -> tuple[str, str, dict[str, str]]:
    """The training shards, the first CLIP stage's shards (shape-only captions, other scenes) and
    the evaluation sets; each made once."""
    from tcl.data import synthetic
    from tcl.data.sources import ShardsJob, existing_shards, make_shards

    shards = os.path.join(job.output, "shards")
    object_shards = os.path.join(job.output, "shards-objects")
    for folder, count, seed, values in ((shards, job.pairs, 0, job.world), (object_shards, job.object_pairs, 1, [*job.world, *OBJECT_CAPTIONS])):
        if existing_shards(folder):
            say(f"reusing shards in {folder}")
        elif count:
            make_shards(ShardsJob(source="synthetic", output=folder, count=count, seed=seed, image_size=64, rows_per_shard=1000,
                                  world=list(values), log_every=0))
    sets = {}
    for name in synthetic.EVAL_SETS:
        root = os.path.join(job.output, "eval", name)
        if not os.path.isfile(os.path.join(root, "classes.txt")):
            synthetic.write_eval_set(root, name, job.eval_images, EVAL_SEED, image_size=64, world=world)
        sets[name] = root
    return shards, object_shards, sets


def train_config(config_file: str, overrides: list[str]):
    from tcl import config as config_lib
    from tcl.training import TrainConfig

    return config_lib.load(TrainConfig, os.path.join(REPO, "configs", config_file), overrides)


def evaluate_all(checkpoint: str, sets: dict[str, str]) -> dict[str, dict[str, float]]:
    from tcl.data.benchmarks import open_custom
    from tcl.evaluation import evaluate
    from tcl.segment import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint, **SCENE_PROTOCOL)
    results: dict[str, dict[str, float]] = {}
    for method, baseline in ((BASELINE, True), ("TCL", False)):
        results[method] = {}
        for name, root in sets.items():
            result = evaluate(segmenter, open_custom(root), baseline=baseline)
            results[method][name] = 100 * result.miou
            say(f"{method:32s} {name:14s} mIoU {100 * result.miou:5.1f}  ({result.images} images, {result.seconds:.1f} s)")
    return results


def write_overlays(checkpoint: str, folder: str, world, count: int = 6) -> list[str]:
    from tcl.data import synthetic
    from tcl.segment import Segmenter
    from tcl.visualize import overlay_with_legend

    os.makedirs(folder, exist_ok=True)
    segmenter = Segmenter.from_checkpoint(checkpoint, **SCENE_PROTOCOL, background_threshold=None)
    vocabulary = list(synthetic.EVAL_SETS["shapes-stuff"])
    paths = []
    for i, scene in enumerate(synthetic.scenes(count, EVAL_SEED + 1, image_size=64, world=world)):
        [result] = segmenter.segment(scene.image, vocabulary, with_probabilities=False)
        big = scene.image.resize((256, 256))
        labels = result.labels.repeat(4, 0).repeat(4, 1)
        path = os.path.join(folder, f"overlay-{i:02d}.png")
        overlay_with_legend(big, labels, result.class_names, title=scene.caption).save(path)
        paths.append(path)
    return paths


def results_table(results: dict[str, dict[str, float]], zero_shot: float) -> str:
    sets = list(next(iter(results.values())))
    lines = ["| method | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for method, scores in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{scores[s]:.1f}" for s in sets) + " |")
    gains = [results["TCL"][s] - results[BASELINE][s] for s in sets]
    lines.append("| TCL - baseline | " + " | ".join(f"{g:+.1f}" for g in gains) + " |")
    lines.append(f"\ntiny CLIP zero-shot accuracy (largest shape, 8 classes): {100 * zero_shot:.1f}%")
    return "\n".join(lines)


def run(job: PipelineJob) -> dict:
    from tcl.ray.train import fit, pretrain_clip

    if job.fresh and os.path.isdir(job.output):
        shutil.rmtree(job.output)
    os.makedirs(job.output, exist_ok=True)
    runs = os.path.join(os.path.abspath(job.output), "runs")
    timings = {}

    start = stage("1/5 synthetic shards and held-out evaluation sets")
    world = record_world(job)
    shards, object_shards, sets = make_data(job, world)
    timings["data"] = time.perf_counter() - start

    start = stage("2/5 tiny CLIP pretraining (Ray Train): shape-only captions, then web-like ones")
    clip_init = []
    if job.clip_object_steps:
        first = pretrain_clip(train_config("synthetic_clip.yaml", [
            f"run.storage={runs}", f"data.shards={os.path.abspath(object_shards)}", "run.name=synthetic-clip-objects",
            f"optim.total_steps={job.clip_object_steps}"]), world)
        clip_init = [f"model.grounder.clip.pretrained={first['clip_weights']}", "model.grounder.clip.model_cfg=null"]
    clip_overrides = [f"run.storage={runs}", f"data.shards={os.path.abspath(shards)}", *clip_init]
    if job.clip_steps:
        clip_overrides.append(f"optim.total_steps={job.clip_steps}")
    clip = pretrain_clip(train_config("synthetic_clip.yaml", clip_overrides), world)
    timings["clip"] = time.perf_counter() - start

    start = stage("3/5 TCL training (Ray Train, DDP over 2 workers)")
    tcl_overrides = [f"data.shards={os.path.abspath(shards)}", f"run.storage={runs}",
                     f"model.grounder.clip.pretrained={clip['clip_weights']}", "model.grounder.clip.model_cfg=null"]
    if job.tcl_steps:
        tcl_overrides.append(f"optim.total_steps={job.tcl_steps}")
    tcl = fit(train_config("synthetic.yaml", [*tcl_overrides, *job.tcl_overrides]), "tcl")
    timings["tcl"] = time.perf_counter() - start

    start = stage("4/5 evaluation: frozen-CLIP baseline and TCL")
    results = evaluate_all(tcl["checkpoint"], sets)
    timings["evaluation"] = time.perf_counter() - start

    start = stage("5/5 overlays of held-out images")
    overlays = write_overlays(tcl["checkpoint"], os.path.join(job.output, "overlays"), world)
    timings["overlays"] = time.perf_counter() - start

    table = results_table(results, clip["zero_shot_accuracy"])
    summary = {"results_miou": results, "clip_zero_shot_accuracy": clip["zero_shot_accuracy"],
               "clip_checkpoint": clip["checkpoint"], "tcl_checkpoint": tcl["checkpoint"], "overlays": overlays,
               "world": dataclasses.asdict(world), "seconds": timings}
    with open(os.path.join(job.output, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(job.output, "results.md"), "w") as f:
        f.write(table + "\n")
    say("\n" + table)
    say(f"\nloss curves: {tcl['run_dir']}/loss_curves.png  overlays: {os.path.dirname(overlays[0])}/")
    say("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return summary
