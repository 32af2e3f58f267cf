#!/usr/bin/env bash
# Every GPU figure of bench/ in one call, for the lent GPU machine (one H200, 16 CPUs, torch, no Ray,
# no open_clip, no network). Prepare here with `bash ../shared/device/ray-bundle.sh` (-> .devbundle/,
# Ray 2.60 trimmed plus open_clip and small wheels), then run there, carrying .devbundle:
#
#   bash bench/gpu.sh [OUTDIR [NAME ...]]   # logs to OUTDIR (default: ./gpu-bench; use $OUT on the device)
#
# NAME picks benchmarks (the names below, or the groups "train" and "infer"); default: all, which
# is about 8-10 minutes, each benchmark capped so that one stuck run cannot eat the rest. Where a
# device call is limited to 10 minutes, run the two groups as two calls. Each benchmark prints its
# own table (both sides and their ratio); this script only runs them.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-bench}"
shift || true
wanted=" ${*:-train infer} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -f .devbundle/install.sh ] && ! python3 -c "import ray, open_clip" 2>/dev/null; then
    bash .devbundle/install.sh > "$out/install.txt" 2>&1 || { tail "$out/install.txt"; exit 1; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the tcl package from this checkout (not installed there)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, open_clip, ray; print('torch', torch.__version__, 'open_clip', open_clip.__version__, 'ray', ray.__version__)" \
    | tee -a "$out/gpu.txt"

run() {  # group, name, seconds, then the command
    local group=$1 name=$2 limit=$3; shift 3
    [[ $wanted == *" $group "* || $wanted == *" $name "* ]] || return 0
    echo "=== $name: $*"
    timeout "$limit" "$@" 2>&1 | grep -v "No pretrained weights" | tee "$out/$name.txt"
}
# Training step alone: the paper's per-GPU batch (1024 over 16 GPUs = 64) in bf16; fp32 on the same
# seed and inputs for the first step's losses; the bf16 run then again with its repeated blocks compiled.
run train step-b64-bf16  150 python3 bench/train_step.py --device cuda --batch 64 --bf16 --steps 10 --compile
run train step-b64-fp32   60 python3 bench/train_step.py --device cuda --batch 64 --no-bf16 --steps 5
# Training fed by Ray Data into a Ray Train worker (TCL's stored size 683x512) against the bare step:
# target >= 0.95x; per-epoch data-wait fractions.
run train train-pipeline 180 python3 bench/train_pipeline.py --device cuda --model ViT-B-16 --image-size 224 \
    --stored-size 683x512 --batch 64 --count 2048 --num-cpus 16
# The data pipeline alone on 16 CPUs: images/s against what one GPU consumes.
run train data-pipeline   60 python3 bench/data_pipeline.py --count 1024 --num-cpus 16 --repeats 2
# Inference: the Segmenter against open_clip's bare image encoder (448x448, 21 texts), eager and
# compiled (with the compile time).
run infer infer-b32-bf16 200 python3 bench/inference.py --device cuda --precision bf16 --batch 32 --repeats 5 --compile
# Batch segmentation job on the GPU actor against the Segmenter in one process.
run infer batch-segment   90 python3 bench/batch_segment.py --device cuda --model ViT-B-16 --image-size 448 \
    --images 600 --batch-size 16 --num-cpus 16
