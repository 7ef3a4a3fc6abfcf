#!/usr/bin/env bash
# fvlm's GPU checks and benchmarks on one CUDA machine, in one command of under 10 minutes; every
# stage has its own time limit, so a stage that hangs costs only its own results:
#   1. GPU correctness: tests/test_kernels.py (Triton kernel, bf16, every autotune config) and
#      tests/test_engine.py (the inference engine's CUDA graphs and torch.compile against the
#      reference path; its CPU tests run too),
#   2. benchmarks.kernels, 3. benchmarks.e2e at 8,16,32,64 frames (engine vs eager in the same run),
#   4. benchmarks.train_step, 5. benchmarks.e2e at 64 frames with the torch.compile'd engine and
#   6. benchmarks.train_step --compile (fVLM coarse_fine), both into RESULTS_DIR/compiled/,
#   7. benchmarks.loader: the trainer's data pipeline alone at 224 px on fresh ShapesQA shards,
#   8. benchmarks.llm_token: one LLM token on the engine, projections stacked vs separate,
#   9. benchmarks.frame_chunk: coarse_fine's patch pass at once or in chunks (TTFT, memory).
# Results go to the folder given as the first argument, else $FVLM_RESULTS, else
# benchmarks/results/<gpu>-<date>/ (suite.log, *.md, *.json, e2e.png).
# Needs torch, transformers, triton, tokenizers, opencv, pillow, numpy, pytest, pyyaml, tqdm, webdataset; on a
# machine without network access, missing packages can be put as wheels in .whl/ (installed to
# /tmp/site). Set PYTHON to the interpreter that holds torch (default python3).
#
#   bash benchmarks/gpu_suite.sh [RESULTS_DIR]
set -uo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
gpu=$("$PY" -c "import re, torch; m = re.search(r'[A-Z]\d{3,4}', torch.cuda.get_device_name()); print(m.group(0).lower() if m else 'gpu')" 2>/dev/null || echo gpu)
RES=${1:-${FVLM_RESULTS:-benchmarks/results/${gpu}-$(date +%F)}}
mkdir -p "$RES"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
log="$RES/suite.log"
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
    timeout "$limit" "$@" 2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '(it/s|s/it)\]$' | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s" | tee -a "$log"
    [ "$rc" = 0 ] || status=1
    return "$rc"
}
xdist=$("$PY" -c "import xdist" 2>/dev/null && echo "-n 6")  # Triton and torch.compile compile on CPU cores
stage tests 110 "$PY" -m pytest -q -p no:cacheprovider -rs $xdist tests/test_kernels.py tests/test_engine.py
stage kernels 70 "$PY" -m benchmarks.kernels --out "$RES"
stage e2e 140 "$PY" -m benchmarks.e2e --device cuda --frames 8,16,32,64 --no-compile --out "$RES"  # compile: stage 5
stage train_step 25 "$PY" -m benchmarks.train_step --device cuda --out "$RES"
stage e2e_compiled 110 "$PY" -m benchmarks.e2e --device cuda --frames 64 --out "$RES/compiled"
stage train_step_compiled 50 "$PY" -m benchmarks.train_step --device cuda --compile --modes coarse_fine \
    --out "$RES/compiled"
shards=$(mktemp -d)
stage loader 35 bash -c "\"$PY\" -m fvlm.cli make-shapes $shards --n 96 --eval-n 1 --no-videos --split easy \
    --shard-size 8 --workers 8 >/dev/null && \"$PY\" -m benchmarks.loader '$shards/train/*.tar' \
    --image-size 224 --workers 0,4,8 --batches 8 --out \"$RES\""
rm -rf "$shards"
stage llm_token 30 "$PY" -m benchmarks.llm_token --device cuda --out "$RES"
stage frame_chunk 20 "$PY" -m benchmarks.frame_chunk --device cuda --out "$RES"
echo "suite exit $status; results in $RES" | tee -a "$log"
exit $status
