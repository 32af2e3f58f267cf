#!/usr/bin/env bash
# The GPU figures of bench/train_step.py and bench/inference.py in one call, for a lent GPU
# machine that has PyTorch but neither open_clip nor Ray (neither benchmark needs Ray).
#
#   bash bench/gpu.sh [OUTDIR]      # logs to OUTDIR (default: ./gpu-bench)
#
# If ./.whl holds wheels (open_clip_torch, ftfy, wcwidth, downloaded where pip works), they are
# installed into /tmp/site first. Each benchmark prints its own table; this script only runs them.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-bench}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the tcl package from this checkout (not installed there)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, open_clip; print('torch', torch.__version__, 'open_clip', open_clip.__version__)" | tee -a "$out/gpu.txt"

run() {  # name, then the command
    local name=$1; shift
    echo "=== $name: $*"
    timeout 240 "$@" 2>&1 | grep -v "No pretrained weights" | tee "$out/$name.txt"
}
# Training step: the paper's per-GPU batch (1024 over 16 GPUs = 64), bf16 as training runs on GPU;
# fp32 on the same seed and inputs for the first step's losses; the copied block trainable; batch 128.
run step-b64-bf16   python3 bench/train_step.py --device cuda --batch 64 --bf16 --steps 10
run step-b64-fp32   python3 bench/train_step.py --device cuda --batch 64 --no-bf16 --steps 5
run step-b64-bf16-unfrozen python3 bench/train_step.py --device cuda --batch 64 --bf16 --steps 10 --unfrozen
run step-b128-bf16  python3 bench/train_step.py --device cuda --batch 128 --bf16 --steps 10
# Inference: the Segmenter against open_clip's bare image encoder (448x448, 21 texts).
run infer-b32-bf16  python3 bench/inference.py --device cuda --precision bf16 --batch 32 --repeats 5
run infer-b1-fp32   python3 bench/inference.py --device cuda --precision fp32 --batch 1 --repeats 5
