#!/usr/bin/env bash
# Trains fvlm's shipped default model (trainer/configs/shapes_gpu.yaml) on one GPU in a fixed
# wall-clock budget:
#   1. ShapesQA data on all CPU cores (skipped when data/shapes_gpu already exists),
#   2. with VISION_SECONDS > 0: stage 0 first (shapes_gpu_vision.yaml: the encoder alone learns every
#      object's shape and colour), timed like step 3, and the run below starts from it,
#   3. a 40-step speed probe of the real config, then the run, with train.total_samples = measured
#      samples/s x the seconds left, so the cosine schedule ends when the time does (the chosen value
#      is printed and saved in the run's config.yaml; rerunning with --set train.total_samples=N
#      reproduces the run on any machine).
#
#   bash experiments/shapesqa/shapes_gpu.sh [TOTAL_SECONDS (default 300, data and probes included)] [--set ...]
#   VISION_SECONDS=90 bash experiments/shapesqa/shapes_gpu.sh 330 --set loss.object_weight=1 ...  # with stage 0
#   DATA_ONLY=1 bash experiments/shapesqa/shapes_gpu.sh     # step 1 alone (benchmarks/gpu_suite.sh runs it early)
#
# Needs torch, transformers, tokenizers, webdataset, opencv, pillow, pyyaml, tqdm (no wandb/decord).
set -euo pipefail
PY=${PYTHON:-python3}
BUDGET=${1:-300}
VISION_SECONDS=${VISION_SECONDS:-0}
CLIPS=${CLIPS:-24000}
EVAL_CLIPS=${EVAL_CLIPS:-400}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
RUN=${RUN:-runs/shapes_gpu}
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS

if [ ! -d data/shapes_gpu/val ]; then
    "$PY" -m fvlm.cli make-shapes data/shapes_gpu --n "$CLIPS" --subsets train --no-videos --workers "$WORKERS"
    "$PY" -m fvlm.cli make-shapes data/shapes_gpu --eval-n "$EVAL_CLIPS" --subsets val --no-videos --workers "$WORKERS"
fi
echo "[shapes_gpu] data ready after $((SECONDS - start)) s"
[ -z "${DATA_ONLY:-}" ] || exit 0

# timed CONFIG OUT_DIR SECONDS [--set ...]: a 40-step speed probe, then a run sized to the seconds left
timed() {
    local config=$1 out=$2 until=$((SECONDS + $3)) probe=$2-probe
    shift 3
    rm -rf "$probe"
    "$PY" -m trainer.run --config "$config" --set run.out_dir="$probe" --set train.total_samples=$((BATCH * 40)) \
        --set data.batch_size="$BATCH" --set data.val_shards=null --set log.every_steps=10 "$@"
    local rate
    rate=$("$PY" - "$probe/metrics.csv" <<'PYEOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["event"] == "train"]
a, b = rows[-3], rows[-1]  # steady state: the last 20 steps (the first ones compile and warm up)
print(int((int(b["samples"]) - int(a["samples"])) / (float(b["wall_time"]) - float(a["wall_time"]))))
PYEOF
)
    local left=$((until - SECONDS - 20))  # 20 s for start-up, evaluations and the last save
    local total=$((rate * left * 9 / 10 / BATCH * BATCH))
    if [ "$total" -lt "$BATCH" ]; then
        echo "[shapes_gpu] $config: no time left for a run after the probe ($left s)" >&2
        exit 1
    fi
    echo "[shapes_gpu] $config probe: $rate samples/s; $left s left -> train.total_samples=$total"
    rm -rf "$probe"
    "$PY" -m trainer.run --config "$config" --set run.out_dir="$out" --set train.total_samples="$total" \
        --set data.batch_size="$BATCH" "$@"
}

init=()
if [ "$VISION_SECONDS" -gt 0 ]; then
    timed experiments/shapesqa/configs/shapes_gpu_vision.yaml "$RUN-vision" "$VISION_SECONDS"
    init=(--set model.init_from="$RUN-vision/final" --set model.tokenizer="$RUN-vision/final")
fi
timed trainer/configs/shapes_gpu.yaml "$RUN" $((BUDGET - (SECONDS - start))) "${init[@]}" "${@:2}"
echo "[shapes_gpu] done after $((SECONDS - start)) s"
