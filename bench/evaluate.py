"""Images/s of the evaluation job (jobs/evaluate.py: Ray Data + an actor pool of Segmenters) with 1
and 2 actors, against a plain loop calling the same Segmenter on the same images, in one run.

Target on CPU: at least 0.8x the plain loop's images/s per actor. The plain loop and each actor
get one thread (torch.set_num_threads(1)), so "per actor" compares like with like; on a 2-core
machine 2 actors can at best reach 2x the loop. The job's rate is given end to end (with the
actors loading the model) and in steady state (after its first results), which is what a large
data set sees.

    python bench/evaluate.py                       # tiny grounder, 64 px synthetic set
    python bench/evaluate.py --images 200 --image-size 96
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from tcl.checkpoint import save_grounder
from tcl.clip import CLIPConfig, tiny_model_cfg
from tcl.data import synthetic
from tcl.data.benchmarks import open_custom
from tcl.evaluation import evaluate
from tcl.model import Grounder, GrounderConfig
from tcl.ray import runtime
from tcl.ray.evaluate import EvaluationJob, evaluate_datasets
from tcl.segment import Segmenter


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=600, help="enough that starting the actors (imports, model) is amortised")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=8)
    args = p.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the actors' torch threads (read in ConfusionActor)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        size = args.image_size
        torch.manual_seed(0)
        clip = CLIPConfig("tiny-vit-8", None, tiny_model_cfg(image_size=size))
        save_grounder(os.path.join(tmp, "ckpt"), Grounder(GrounderConfig(clip=clip)))
        root = synthetic.write_eval_set(os.path.join(tmp, "set"), "shapes-stuff", args.images, seed=1, image_size=size)
        protocol = {"short_side": size, "window": size, "stride": size // 2}

        segmenter = Segmenter.from_checkpoint(os.path.join(tmp, "ckpt"), **protocol)
        evaluate(segmenter, open_custom(root, limit=4))  # warm-up
        start = time.perf_counter()
        reference = evaluate(segmenter, open_custom(root))
        loop_rate = args.images / (time.perf_counter() - start)

        runtime.init(num_cpus=args.num_cpus)
        job = EvaluationJob(checkpoint=os.path.join(tmp, "ckpt"), datasets=f"custom:{root}", output=os.path.join(tmp, "out"), segmenter=protocol)
        rows = [("plain loop, 1 thread", loop_rate, 1, True)]
        for actors in (1, 2):
            evaluate_datasets(job, [f"custom:{root}"], job.checkpoint, actors, use_gpu=False)  # warm-up: Ray Data, imports
            start = time.perf_counter()
            [(_, confusion, run)] = evaluate_datasets(job, [f"custom:{root}"], job.checkpoint, actors, use_gpu=False)
            rate = args.images / (time.perf_counter() - start)
            same = (confusion.matrix == reference.confusion.matrix).all()
            rows.append((f"job, {actors} actor(s), end to end", rate, actors, same))
            rows.append((f"job, {actors} actor(s), steady", run["steady_images_per_second"], actors, same))

    print(f"{args.images} synthetic images of {size} px, tiny grounder, PAMR on, {os.cpu_count()} cores")
    print(f"{'':30s} {'images/s':>9s} {'per actor':>10s} {'/ loop':>7s}  same confusion matrix")
    for name, rate, actors, same in rows:
        print(f"{name:30s} {rate:9.2f} {rate / actors:10.2f} {rate / actors / loop_rate:7.2f}  {bool(same)}")
    worst = min(rate / actors / loop_rate for name, rate, actors, _ in rows[1:] if "steady" in name)
    print(f"steady per-actor ratio to the plain loop: {worst:.2f} (target >= 0.8) -> {'PASS' if worst >= 0.8 else 'FAIL'}")


if __name__ == "__main__":
    main()
