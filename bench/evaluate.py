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
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from jobs import evaluate as evaluate_job  # noqa: E402
from jobs.train import init_ray  # noqa: E402
from tcl.checkpoint import save_grounder  # noqa: E402
from tcl.clip import CLIPConfig, tiny_model_cfg  # noqa: E402
from tcl.data import synthetic  # noqa: E402
from tcl.data.benchmarks import open_custom  # noqa: E402
from tcl.evaluation import evaluate  # noqa: E402
from tcl.model import Grounder, GrounderConfig  # noqa: E402
from tcl.segment import Segmenter  # noqa: E402


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

        init_ray(argparse.Namespace(ray_address=None, num_cpus=args.num_cpus))
        job_args = evaluate_job.parse_args(["--checkpoint", os.path.join(tmp, "ckpt"), "--datasets", f"custom:{root}",
                                            "--short-side", str(size), "--window", str(size), "--stride", str(size // 2)])
        rows = [("plain loop, 1 thread", loop_rate, 1, True)]
        for actors in (1, 2):
            evaluate_distributed = evaluate_job.evaluate_distributed
            evaluate_distributed(job_args, f"custom:{root}", actors, use_gpu=False)  # warm-up: Ray Data, imports
            start = time.perf_counter()
            _, confusion, run = evaluate_distributed(job_args, f"custom:{root}", actors, use_gpu=False)
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
