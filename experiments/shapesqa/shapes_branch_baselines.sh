#!/usr/bin/env bash
# A6 and B1 baselines of the shipped model's last three fine-tunes, on 2 CPU cores (about 1.5 h).
# Both branch from runs/shapes_vision/final (made by experiments/shapesqa/shapes_finetune.sh), the point after
# which the shipped chain runs shapes_vision_vlm, shapes_readout and shapes_readout_mix; each
# baseline runs the same three configs on the same data at the same training FLOPs (flops.budget):
#   A6  shapes_vision_vlm_a6, shapes_readout_a6, shapes_readout_mix_a6   trained coarse-only
#   B1  shapes_vision_vlm_b1, shapes_readout_b1, shapes_readout_mix_b1   16 pooled DINO tokens / frame
# Everything before the branch point (the GPU phase and six CPU fine-tunes) is shared, so this
# measures what the last 1,400 steps' foveation buys, not a whole training run (trainer/README.md).
# Runs whose final/ exists are skipped. Then each final model, and the shipped chain's, is scored on
# the main test questions (data/shapes128/test, the first 800; written to runs/NAME/eval_test.json):
#
#   bash experiments/shapesqa/shapes_branch_baselines.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/shapesqa/chain.sh
need_final runs/shapes_vision "run bash experiments/shapesqa/shapes_finetune.sh first"
shapes data/shapes128 test --eval-n 400

run_chain baselines shapes_vision_vlm_a6 shapes_readout_a6 shapes_readout_mix_a6 \
    shapes_vision_vlm_b1 shapes_readout_b1 shapes_readout_mix_b1
for name in shapes_readout_mix shapes_readout_mix_a6 shapes_readout_mix_b1; do
    "$PY" -m fvlm.cli eval-shapes "runs/$name/final" --index data/shapes128/test/index.jsonl --limit 800 \
        --json "runs/$name/eval_test.json"
done
