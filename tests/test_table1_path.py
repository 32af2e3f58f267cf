"""The README's Table 1 commands, run: an official-format checkpoint (the release's key names and
ViT-B/16 shapes, random values, saved as kakaobrain/tcl's utils/checkpoint.py saves) imported with
`python -m tcl.checkpoint import-official`, then `jobs/evaluate.py` on a tiny data root in
MMSegmentation's layouts. OpenAI's CLIP weights come from an offline hub cache holding random
ViT-B/16 weights under the `openai` tag (nothing is downloaded)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tcl.data.benchmarks import open_benchmark
from tcl.evaluation import evaluate
from tcl.segment import Segmenter
from tests.helpers import make_layout, official_state, openai_vit_b16_hub_cache, save_like_the_official_code

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOCOL = ["--short-side", "32", "--window", "32", "--stride", "16"]

pytestmark = pytest.mark.ray


def run(command: list[str], env: dict) -> str:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_import_official_then_evaluate_writes_the_table(tmp_path, monkeypatch):
    hub = openai_vit_b16_hub_cache(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "PYTHONPATH": REPO}
    save_like_the_official_code(tmp_path / "tcl.pth", official_state(seed=5))
    checkpoint = tmp_path / "checkpoints" / "tcl-official"
    out = run([sys.executable, "-m", "tcl.checkpoint", "import-official", str(tmp_path / "tcl.pth"), str(checkpoint), "--trust-pickle"], env)
    assert f"wrote {checkpoint}" in out

    data_root = tmp_path / "mmseg"
    for name in ("voc", "cityscapes"):
        make_layout(data_root, name)
    output = tmp_path / "table1"
    run([sys.executable, "jobs/evaluate.py", "--checkpoint", str(checkpoint), "--datasets", "voc,cityscapes",
         "--data-root", str(data_root), "--output", str(output), *PROTOCOL, "--actors", "1", "--num-cpus", "4"], env)

    table = (output / "results.md").read_text().splitlines()
    assert table[0] == "| method | VOC | Cityscapes | avg |" and table[2].startswith("| TCL | ")
    results = json.loads((output / "results.json").read_text())
    assert set(results["datasets"]) == {"voc", "cityscapes"}
    assert len(results["datasets"]["voc"]["iou"]) == 21 and len(results["datasets"]["cityscapes"]["iou"]) == 19
    csv_rows = (output / "results.csv").read_text().splitlines()
    assert csv_rows[0] == "dataset,class,iou" and any(r.startswith("voc,mIoU,") for r in csv_rows)

    # the job's numbers are those of the imported model run in this process, image by image
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    segmenter = Segmenter.from_checkpoint(str(checkpoint), device="cpu", short_side=32, window=32, stride=16)
    for name in ("voc", "cityscapes"):
        expected = evaluate(segmenter, open_benchmark(name, str(data_root)))
        assert np.array_equal(np.array(results["datasets"][name]["confusion"]), expected.confusion.matrix), name
