"""The built-in offline pipeline: the whole of TCL on one machine, with nothing downloaded.

    synthetic shards -> tiny CLIP pretraining, two stages (Ray Train) -> TCL training (Ray Train, 2 workers)
      -> mIoU of the frozen-CLIP baseline and of TCL on shapes-things and shapes-stuff
      -> overlay PNGs of held-out images with their captions -> a short table

    python jobs/pipeline.py                       # everything, into outputs/pipeline/
    python jobs/pipeline.py --fresh               # start over instead of reusing finished stages
    python jobs/pipeline.py --world max_shapes=4 --output outputs/harder   # another synthetic world

The synthetic world (tcl.data.synthetic.SceneConfig, defaults: the main job's world) is set in one
place, --world, and the same one makes the training shards, the evaluation sets, the overlays and
the tiny CLIP's zero-shot test; it is recorded in <output>/world.json.

The tiny CLIP learns in two stages, a curriculum: first on captions that name only the shapes,
plainly ("a star", "two rings and a heart"; shards-objects/, the same world with OBJECT_CAPTIONS),
then on the web-like captions TCL trains on (shards/). Trained on the web-like captions alone,
colour and ground explained the captions first and the tiny CLIP never learnt plain-painted
shapes in its budget (zero-shot at chance; see the README); with the two stages and the shapes'
class patterns it names them zero-shot about 90% of the time.

Each stage leaves its result in the output folder and is skipped on a rerun when that result is
there (shards, evaluation sets, the two training runs: Ray Train resumes an unfinished run from
its latest checkpoint). The baseline is the paper's Table 2 row (a): the frozen CLIP's dense
features with the knowledge-preservation branch only (MaskCLIP), same CLIP, same protocol.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs import make_shards, pretrain_clip  # noqa: E402
from jobs import train as train_job  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL_SEED = 10 ** 6  # held-out scenes: training shards use seeds below this
# the first CLIP stage's captions: the shapes only, no colour, ground, background-only captions or noise
OBJECT_CAPTIONS = ("colour_mention=0", "stuff_mention=0", "background_caption=0", "caption_noise=false")
SCENE_PROTOCOL = {"short_side": 64, "window": 64, "stride": 32}  # 64 px scenes: one window each; the rest as the protocol


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="outputs/pipeline", help="folder for everything (default: %(default)s)")
    p.add_argument("--pairs", type=int, default=20000, help="synthetic image-text pairs to train on (default: %(default)s)")
    p.add_argument("--eval-images", type=int, default=100, help="images per evaluation set (default: %(default)s)")
    p.add_argument("--object-pairs", type=int, default=8000,
                   help="pairs with shape-only captions for the tiny CLIP's first stage (default: %(default)s)")
    p.add_argument("--clip-object-steps", type=int, default=400,
                   help="tiny-CLIP steps on shape-only captions; 0 skips that stage (default: %(default)s)")
    p.add_argument("--clip-steps", type=int, default=600,
                   help="tiny-CLIP steps on the web-like captions, after the first stage (default: %(default)s)")
    p.add_argument("--tcl-steps", type=int, default=None, help="TCL steps (default: configs/synthetic.yaml)")
    p.add_argument("--num-cpus", type=int, default=None, help="logical CPUs for the local Ray instance")
    p.add_argument("--world", action="append", default=[], metavar="KEY=VALUE",
                   help="a synthetic-world value (tcl.data.synthetic.SceneConfig), e.g. --world max_shapes=2; repeatable")
    p.add_argument("--fresh", action="store_true", help="delete the output folder first")
    p.add_argument("tcl_overrides", nargs="*", help="extra TCL config overrides, e.g. loss.area_weight=0")
    args = p.parse_args(argv)
    if args.clip_object_steps and not args.object_pairs:
        p.error("--object-pairs 0 leaves the tiny CLIP's first stage nothing to train on: pass --clip-object-steps 0 too")
    return args


def stage(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def record_world(args: argparse.Namespace):
    """The run's synthetic world, written to <output>/world.json; a rerun must ask for the same one."""
    from tcl.data import synthetic

    world = synthetic.scene_config(args.world)
    path = os.path.join(args.output, "world.json")
    values = dataclasses.asdict(world)
    if os.path.isfile(path):
        with open(path) as f:
            if json.load(f) != values:
                raise SystemExit(f"{args.output} was made in another synthetic world ({path}); pass --fresh or another --output")
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
    return world


def make_data(args: argparse.Namespace, world) -> tuple[str, str, dict[str, str]]:
    """The training shards, the first CLIP stage's shards (shape-only captions, other scenes) and
    the evaluation sets; each made once."""
    from tcl.data import synthetic

    shards = os.path.join(args.output, "shards")
    object_shards = os.path.join(args.output, "shards-objects")
    object_world = [*args.world, *OBJECT_CAPTIONS]
    for folder, count, seed, values in ((shards, args.pairs, 0, args.world), (object_shards, args.object_pairs, 1, object_world)):
        if make_shards.existing_shards(folder, None):
            print(f"reusing shards in {folder}")
        elif count:
            make_shards.main(["--source", "synthetic", "--count", str(count), "--seed", str(seed), "--image-size", "64",
                              "--rows-per-shard", "1000", "--output", folder, *world_flags(values)])
    sets = {}
    for name in synthetic.EVAL_SETS:
        root = os.path.join(args.output, "eval", name)
        if not os.path.isfile(os.path.join(root, "classes.txt")):
            synthetic.write_eval_set(root, name, args.eval_images, EVAL_SEED, image_size=64, world=world)
        sets[name] = root
    return shards, object_shards, sets


def world_flags(values) -> list[str]:
    return [flag for value in values for flag in ("--world", value)]


def evaluate_all(checkpoint: str, sets: dict[str, str]) -> dict[str, dict[str, float]]:
    from tcl.data.benchmarks import open_custom
    from tcl.evaluation import evaluate
    from tcl.segment import Segmenter

    segmenter = Segmenter.from_checkpoint(checkpoint, **SCENE_PROTOCOL)
    results: dict[str, dict[str, float]] = {}
    for method, baseline in (("baseline (frozen CLIP, KP only)", True), ("TCL", False)):
        results[method] = {}
        for name, root in sets.items():
            result = evaluate(segmenter, open_custom(root), baseline=baseline)
            results[method][name] = 100 * result.miou
            print(f"{method:32s} {name:14s} mIoU {100 * result.miou:5.1f}  ({result.images} images, {result.seconds:.1f}s)")
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
    gains = [results["TCL"][s] - results["baseline (frozen CLIP, KP only)"][s] for s in sets]
    lines.append("| TCL - baseline | " + " | ".join(f"{g:+.1f}" for g in gains) + " |")
    lines.append(f"\ntiny CLIP zero-shot accuracy (largest shape, 8 classes): {100 * zero_shot:.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.fresh and os.path.isdir(args.output):
        shutil.rmtree(args.output)
    os.makedirs(args.output, exist_ok=True)
    runs = os.path.join(os.path.abspath(args.output), "runs")
    timings = {}

    start = stage("1/5 synthetic shards and held-out evaluation sets")
    world = record_world(args)
    shards, object_shards, sets = make_data(args, world)
    timings["data"] = time.perf_counter() - start

    start = stage("2/5 tiny CLIP pretraining (Ray Train): shape-only captions, then web-like ones")
    train_job.init_ray(argparse.Namespace(ray_address=None, num_cpus=args.num_cpus))
    clip_command = [*world_flags(args.world), "--config", os.path.join(ROOT, "configs", "synthetic_clip.yaml"), f"run.storage={runs}"]
    clip_init = []
    if args.clip_object_steps:
        first = pretrain_clip.main([*clip_command, f"data.shards={os.path.abspath(object_shards)}",
                                    "run.name=synthetic-clip-objects", f"optim.total_steps={args.clip_object_steps}"])
        clip_init = [f"model.grounder.clip.pretrained={first['clip_weights']}", "model.grounder.clip.model_cfg=null"]
    clip_overrides = [f"data.shards={os.path.abspath(shards)}", *clip_init]
    if args.clip_steps:
        clip_overrides.append(f"optim.total_steps={args.clip_steps}")
    clip = pretrain_clip.main([*clip_command, *clip_overrides])
    timings["clip"] = time.perf_counter() - start

    start = stage("3/5 TCL training (Ray Train, DDP over 2 workers)")
    tcl_overrides = [f"data.shards={os.path.abspath(shards)}", f"run.storage={runs}",
                     f"model.grounder.clip.pretrained={clip['clip_weights']}", "model.grounder.clip.model_cfg=null"]
    if args.tcl_steps:
        tcl_overrides.append(f"optim.total_steps={args.tcl_steps}")
    tcl = train_job.main(["--config", os.path.join(ROOT, "configs", "synthetic.yaml"), *tcl_overrides, *args.tcl_overrides])
    timings["tcl"] = time.perf_counter() - start

    start = stage("4/5 evaluation: frozen-CLIP baseline and TCL")
    results = evaluate_all(tcl["checkpoint"], sets)
    timings["evaluation"] = time.perf_counter() - start

    start = stage("5/5 overlays of held-out images")
    overlays = write_overlays(tcl["checkpoint"], os.path.join(args.output, "overlays"), world)
    timings["overlays"] = time.perf_counter() - start

    table = results_table(results, clip["zero_shot_accuracy"])
    summary = {"results_miou": results, "clip_zero_shot_accuracy": clip["zero_shot_accuracy"],
               "clip_checkpoint": clip["checkpoint"], "tcl_checkpoint": tcl["checkpoint"], "overlays": overlays,
               "world": dataclasses.asdict(world), "seconds": timings}
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\nloss curves: {tcl['run_dir']}/loss_curves.png  overlays: {os.path.dirname(overlays[0])}/")
    print("seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    return summary


if __name__ == "__main__":
    main()
