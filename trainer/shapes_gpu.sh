#!/usr/bin/env bash
# Trains fvlm's shipped default model (trainer/configs/shapes_gpu.yaml) on one GPU in a fixed
# wall-clock budget:
#   1. ShapesQA data on all CPU cores (skipped when data/shapes_gpu already exists),
#   2. a 40-step speed probe of the real config,
#   3. the run, with train.total_samples = measured samples/s x the seconds left, so the cosine
#      schedule ends when the time does (the chosen value is printed and saved in the run's
#      config.yaml; rerunning with --set train.total_samples=N reproduces the run on any machine).
#
#   bash trainer/shapes_gpu.sh [TOTAL_SECONDS (default 300, data and probe included)]
#   DATA_ONLY=1 bash trainer/shapes_gpu.sh     # step 1 alone (benchmarks/gpu_suite.sh runs it early)
#
# Needs torch, transformers, tokenizers, webdataset, opencv, pillow, pyyaml, tqdm (no wandb/decord).
set -euo pipefail
PY=${PYTHON:-python3}
BUDGET=${1:-300}
CLIPS=${CLIPS:-24000}
BATCH=${BATCH:-128}
WORKERS=${WORKERS:-$(($(nproc) > 3 ? $(nproc) - 2 : 1))}
CONFIG=trainer/configs/shapes_gpu.yaml
RUN=${RUN:-runs/shapes_gpu}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$SECONDS

if [ ! -d data/shapes_gpu/val ]; then
    "$PY" -m fvlm.cli make-shapes data/shapes_gpu --n "$CLIPS" --subsets train --no-videos --workers "$WORKERS"
    "$PY" -m fvlm.cli make-shapes data/shapes_gpu --eval-n 400 --subsets val --no-videos --workers "$WORKERS"
fi
echo "[shapes_gpu] data ready after $((SECONDS - start)) s"
[ -z "${DATA_ONLY:-}" ] || exit 0

probe=$RUN-probe
rm -rf "$probe"
"$PY" -m trainer.run --config "$CONFIG" --set run.out_dir="$probe" --set train.total_samples=$((BATCH * 40)) \
    --set data.batch_size="$BATCH" --set data.val_shards=null --set log.every_steps=10 "${@:2}"
rate=$("$PY" - "$probe/metrics.csv" <<'EOF'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["event"] == "train"]
a, b = rows[-3], rows[-1]  # steady state: the last 20 steps (the first ones compile and warm up)
print(int((int(b["samples"]) - int(a["samples"])) / (float(b["wall_time"]) - float(a["wall_time"]))))
EOF
)
left=$((BUDGET - (SECONDS - start) - 20))  # 20 s for start-up, evaluations and the last save
total=$((rate * left * 9 / 10 / BATCH * BATCH))
echo "[shapes_gpu] probe: $rate samples/s; $left s left -> train.total_samples=$total"
rm -rf "$probe"
"$PY" -m trainer.run --config "$CONFIG" --set run.out_dir="$RUN" --set train.total_samples="$total" \
    --set data.batch_size="$BATCH" "${@:2}"
echo "[shapes_gpu] done after $((SECONDS - start)) s"
