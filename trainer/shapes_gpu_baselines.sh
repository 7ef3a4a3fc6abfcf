#!/usr/bin/env bash
# Trains the two ShapesQA baselines of the shipped model on one lent GPU, at its training FLOPs
# (flops.budget in each config): A6 (the same foveated model trained coarse-only) and B1 (16
# pooled DINO tokens per frame). Same data as the shipped model (data/shapes_gpu, made here if
# missing), same tokenizer recipe, same batch. Each run has its own wall-clock limit, so one that
# hangs costs only itself; a run cut short leaves its newest checkpoint on the machine, under
# budget (the summary line says so; $OUT gets final models only). Evaluation needs decoded test videos, so it happens where decord is:
#   fvlm eval-shapes runs/shapes_gpu_a6/final --index data/shapes128/test/index.jsonl --limit 800
#
#   bash trainer/shapes_gpu_baselines.sh [SECONDS_PER_RUN (default 260)] [extra --set ...]
#
# When $OUT is set (the device tool) the final models (weights, config, tokenizer), metrics and
# logs are packed into $OUT/baselines.tar.gz. Needs what trainer/shapes_gpu.sh needs.
set -uo pipefail
PY=${PYTHON:-python3}
LIMIT=${1:-260}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export FVLM_ATTENTION_BACKEND=${FVLM_ATTENTION_BACKEND:-torch}  # no Triton autotuning in the budget

DATA_ONLY=1 bash trainer/shapes_gpu.sh || exit 1
status=0
for name in a6 b1; do
    run=runs/shapes_gpu_$name
    rm -rf "$run"
    start=$SECONDS
    timeout "$LIMIT" "$PY" -m trainer.run --config "trainer/configs/shapes_gpu_$name.yaml" --no-wandb "${@:2}" \
        2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '(it/s|s/it)\]$' > "$run.log"
    rc=${PIPESTATUS[0]}
    if [ -d "$run/final" ]; then
        echo "[baselines] $name: done in $((SECONDS - start)) s -> $run/final"
    else
        echo "[baselines] $name: exit $rc after $((SECONDS - start)) s, no final model (UNDER BUDGET);" \
             "newest checkpoint: $(ls -d "$run"/checkpoints/step_* 2>/dev/null | tail -n 1)"
        status=1
    fi
    tail -n 3 "$run.log"
done
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/baselines.tar.gz" --exclude=checkpoints \
        $(ls -d runs/shapes_gpu_a6 runs/shapes_gpu_b1 runs/shapes_gpu_a6.log runs/shapes_gpu_b1.log 2>/dev/null)
fi
exit $status
