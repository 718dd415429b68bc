#!/bin/bash
# The GPU check of the cluster path, as one script for a machine with one CUDA GPU (or more), in under 10 minutes.
#
#   benchmarks/gpu_check.sh [OUT_DIR]
#
# Prints one JSON line per check (and keeps everything in OUT_DIR, default /tmp/gpu_check):
# 1. device: torch, the GPU(s);
# 2. benchmarks/gpu_check.py: bf16 and fp16 (grad scaler, unscale_ and clipping) on CaRot steps of ViT-B/16;
#    accumulation (accum_steps=4 against 1) on the GPU; 2-process NCCL DDP against one process when two
#    GPUs are present;
# 3. benchmarks/step_cost.py, bf16 and fp32: ViT-B/16 at batch 128, FLYP and CaRot images/s and the cost
#    ratio of a CaRot step against its floor (1 + the teacher's image forward / a FLYP step);
# 4. the CUDA code paths through tests that pick the GPU by themselves: a trial on the tiny ImageNet
#    tree (loader batches), the bf16 terms.
# Needs the project's packages importable (pip install -e . where there is network; without, carry wheels).
set -uo pipefail
out=${1:-/tmp/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import json, torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(json.dumps({'check': 'device', \
'torch': torch.__version__, 'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}))" \
  2>&1 | tee "$out/device.txt" || exit 1
python3 benchmarks/gpu_check.py --device cuda 2>"$out/gpu_check.err" | tee "$out/gpu_check.jsonl"
for precision in bf16 fp32; do
  python3 benchmarks/step_cost.py --model ViT-B-16-quickgelu --batch-size 128 --steps 20 --warmup 5 \
    --device cuda --precision "$precision" 2>"$out/step_cost_$precision.err" | tail -1 \
    | python3 -c "import json, sys; print(json.dumps({'check': 'step_cost', **json.loads(sys.stdin.read())}))" \
    | tee "$out/step_cost_$precision.jsonl"
done
python3 -m pytest -q -p no:cacheprovider tests/test_compute.py tests/test_imagenet_trial.py >"$out/tests.txt" 2>&1
python3 -c "import json, sys; last = open(sys.argv[1]).read().strip().splitlines()[-1]; \
print(json.dumps({'check': 'cuda_tests', 'summary': last}))" "$out/tests.txt"
