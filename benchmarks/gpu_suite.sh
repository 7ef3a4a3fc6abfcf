#!/usr/bin/env bash
# The whole GPU check of issue #8 in one call (about 6-8 minutes on an H100; every stage has its own
# time limit, so a stage that hangs costs only its own results):
#   1. correctness: tests/test_fast.py (CUDA graphs and torch.compile against the eager path),
#   2. benchmarks.e2e at 8,16,32,64 frames (eager, fast, compiled; SmolVLM2-shaped and B1 beside),
#   3. benchmarks.train_step (fVLM coarse_fine and B1, 8 clips x 8 frames).
# Writes suite.log, e2e.{md,json,png} and train_step.{md,json} into $OUT (default
# benchmarks/results/<gpu>-<date>). Needs only torch, transformers, triton, pillow, numpy, pytest.
#
#   bash benchmarks/gpu_suite.sh              # or, through the device tool: run(command=..., timeout_s=600)
set -uo pipefail
PY=${PYTHON:-python3}  # the GPU image: python3 holds torch
cd "$(dirname "$0")/.."
gpu=$("$PY" -c "import re, torch; m = re.search(r'[A-Z]\d{3,4}', torch.cuda.get_device_name()); print(m.group(0).lower() if m else 'gpu')" 2>/dev/null || echo gpu)
OUT=${OUT:-benchmarks/results/${gpu}-$(date +%F)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log="$OUT/suite.log"
{
    date -Is
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    "$PY" -c "import sys, torch, transformers, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$log"
status=0
stage() {  # stage NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) $(date -Is)" | tee -a "$log"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$log"
    [ "$rc" = 0 ] || status=1
}
stage tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_fast.py
stage e2e 330 "$PY" -m benchmarks.e2e --device cuda --frames 8,16,32,64 --out "$OUT"
stage train_step 90 "$PY" -m benchmarks.train_step --device cuda --out "$OUT"
echo "suite exit $status; results in $OUT" | tee -a "$log"
exit $status
