#!/usr/bin/env bash
# A6, B1 and the read-out without its gaze embedding, at the gaze read-out's training FLOPs, on
# 2 CPU cores (about 2 h of training).
# All three branch from runs/shapes_readout_mix/final, after which the shipped recipe runs the gaze
# read-out (shapes_where_read, _mix, _thirds, _thirds2, _modes: 1,900 steps, 3.72e14 FLOPs); each
# runs the same five configs on the same data at each one's training FLOPs:
#   A6  shapes_where_{read,mix,thirds,thirds2,modes}_a6   trained coarse-only (gaze embedding on)
#   B1  shapes_where_{read,mix,thirds,thirds2,modes}_b1   16 pooled DINO tokens per frame
#   no gaze embedding  shapes_where_{read,...}_nogaze    the same recipe with gaze_embedding off
# Runs whose final/ exists are skipped. Then the shipped model and the three others are scored on
# the card's test questions (data/shapes128/test, the first 800 records) and on two sets of fresh
# clips (seed 14, the full mix; seed 15, motion and position), written to runs/NAME/eval_*.json:
#
#   bash experiments/shapesqa/shapes_where_baselines.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/shapesqa/chain.sh
need_final runs/shapes_readout_mix "run bash experiments/shapesqa/shapes_finetune.sh first"
for d in mix/train mix/val objects/train mp/train mp2/train color/train; do
    [ -d "data/where/$d" ] || { echo "data/where/$d is missing: run shapes_finetune.sh" >&2; exit 1; }
done

for arm in a6 b1 nogaze; do
    run_chain where_baselines shapes_where_{read,mix,thirds,thirds2,modes}_$arm
done

shapes data/shapes128 test --eval-n 400
shapes data/shapes128fresh14 test --eval-n 300 --seed 14 --no-shards
shapes data/shapes128fresh15mp test --eval-n 400 --split mix --qtypes motion,position --per-clip 2 \
    --seed 15 --no-shards

score() {  # score MODEL_DIR OUT_DIR: the three test sets, each to OUT_DIR/eval_*.json
    mkdir -p "$2"
    "$PY" -m fvlm.cli eval-shapes "$1" --index data/shapes128/test/index.jsonl --limit 800 \
        --json "$2/eval_test.json"
    "$PY" -m fvlm.cli eval-shapes "$1" --index data/shapes128fresh14/test/index.jsonl \
        --json "$2/eval_fresh14.json"
    "$PY" -m fvlm.cli eval-shapes "$1" --index data/shapes128fresh15mp/test/index.jsonl \
        --json "$2/eval_fresh15mp.json"
}
score fvlm/assets/default_model runs/shipped
for arm in a6 b1 nogaze; do
    score "runs/shapes_where_modes_$arm/final" "runs/shapes_where_modes_$arm"
done
