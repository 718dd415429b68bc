#!/bin/bash
# The GPU check of the cluster path, as one script for a machine with one CUDA GPU.
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. The CUDA code paths, through tests that pick the GPU by themselves (compute.device=auto):
#    a CaRot trial on the tiny ImageNet tree (loader batches, autocast off), bf16 autocast terms.
# 2. A few real steps of ViT-B/16 (random init) at batch 128 for flyp and carot, bf16 and fp32:
#    images/s and the carot/flyp ratio (benchmarks/step_cost.py; its last line is JSON).
# Everything it prints also lands in OUT_DIR (default /tmp/gpu_check). Needs the project's
# packages importable (pip install -e . where there is network; on a machine without, carry wheels).
set -uo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee "$out/device.txt" || exit 1
python3 -m pytest -q -p no:cacheprovider tests/test_compute.py tests/test_imagenet_trial.py 2>&1 | tee "$out/tests.txt"
for precision in bf16 fp32; do
  python3 benchmarks/step_cost.py --model ViT-B-16-quickgelu --batch-size 128 --steps 20 --warmup 5 \
    --device cuda --precision "$precision" 2>&1 | tee "$out/step_cost_$precision.txt"
done
