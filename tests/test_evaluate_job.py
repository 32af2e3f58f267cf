"""jobs/evaluate.py: the Ray actor-pool evaluation equals the single-process protocol exactly."""
import json

import numpy as np
import torch
from PIL import Image

from jobs import evaluate as evaluate_job
from tcl.checkpoint import save_grounder
from tcl.data import synthetic
from tcl.data.benchmarks import open_custom
from tcl.evaluation import evaluate, safe_name
from tcl.segment import Segmenter
from tests.helpers import make_grounder


def test_two_actors_give_the_single_process_confusion_matrix(ray_cluster, tmp_path):
    grounder = make_grounder(seed=3)
    with torch.no_grad():  # a trained-looking decoder, so TCL and the baseline differ
        for name, param in grounder.named_parameters():
            if name.endswith("gate"):
                param.fill_(0.5)
    save_grounder(str(tmp_path / "ckpt"), grounder)
    sets = {name: synthetic.write_eval_set(str(tmp_path / name), name, count=5, seed=4, image_size=32)
            for name in synthetic.EVAL_SETS}
    overrides = ["--short-side", "32", "--window", "32", "--stride", "16"]
    datasets = ",".join(f"custom:{root}" for root in sets.values())
    rows = evaluate_job.main(["--checkpoint", str(tmp_path / "ckpt"), "--datasets", datasets, "--actors", "2",
                              "--output", str(tmp_path / "out"), *overrides])

    segmenter = Segmenter.from_checkpoint(str(tmp_path / "ckpt"), short_side=32, window=32, stride=16)
    for root in sets.values():
        reference = evaluate(segmenter, open_custom(root))
        distributed = np.array(rows[f"custom:{root}"]["confusion"])
        assert np.array_equal(distributed, reference.confusion.matrix)  # the same integers
        assert distributed.sum() == 5 * 32 * 32

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["method"] == "TCL" and len(saved["datasets"]) == 2
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| TCL |" in table and "avg" in table
    assert (tmp_path / "out" / "results.csv").read_text().count("mIoU") == 2
    assert len(list((tmp_path / "out").glob("iou-*.png"))) == 2
    for root in sets.values():  # --overlays 4 (the default): the first four images of each set
        pictures = sorted((tmp_path / "out" / "overlays" / safe_name(f"custom:{root}")).glob("*.png"))
        assert [p.stem for p in pictures] == [s.key for s in open_custom(root).samples[:4]]
        with Image.open(pictures[0]) as picture:
            assert picture.width > 2 * 32 and picture.height >= 32  # prediction and ground truth side by side

    baseline = evaluate_job.main(["--checkpoint", str(tmp_path / "ckpt"), "--datasets", f"custom:{sets['shapes-stuff']}",
                                  "--actors", "1", "--baseline", "--output", str(tmp_path / "base"), *overrides])
    reference = evaluate(segmenter, open_custom(sets["shapes-stuff"]), baseline=True)
    assert np.array_equal(np.array(baseline[f"custom:{sets['shapes-stuff']}"]["confusion"]), reference.confusion.matrix)


def test_actor_pools_wait_for_all_their_actors(ray_cluster):
    """A dataset keeps the Ray Data context it was made with: the wait for the whole pool is set on
    the dataset itself, or the first actor up takes every batch and the others idle."""
    import ray

    from tcl.ray.pools import map_with_pool

    mapped = map_with_pool(ray.data.range(4), _Identity, {}, actors=2, use_gpu=False, batch_size=2, start_timeout_s=123)
    assert mapped.context.wait_for_min_actors_s == 123
    assert sorted(row["id"] for row in mapped.take_all()) == [0, 1, 2, 3]


class _Identity:
    def __call__(self, batch):
        return batch
