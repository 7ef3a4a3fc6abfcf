#!/usr/bin/env bash
# Trains the two ShapesQA baselines of the shipped model on one GPU, at its training FLOPs
# (flops.budget in each config): A6 (the same foveated model trained coarse-only) and B1 (16
# pooled DINO tokens per frame). Same data as the shipped model (data/shapes_gpu, made here if
# missing), same tokenizer recipe, same batch. Both train at once, each under its own wall-clock
# limit, so one that hangs costs only itself; a run cut short leaves its newest checkpoint on the
# machine, under budget (the summary line says so; its archive holds those weights). Evaluation needs
# decoded test videos, so it happens where decord is:
#   fvlm eval-shapes runs/shapes_gpu_a6/final --index data/shapes128/test/index.jsonl --limit 800
#
#   bash experiments/shapesqa/shapes_gpu_baselines.sh [SECONDS_PER_RUN (default 260)] [extra --set ...]
#
# The final models (weights, config, tokenizer), metrics and logs are also packed, one archive per
# baseline without optimizer state, into $RESULTS_DIR/baseline_{a6,b1}.tar.gz (default ./results), to
# copy them to the machine that evaluates them. Needs what experiments/shapesqa/shapes_gpu.sh needs.
set -uo pipefail
LIMIT=${1:-260}
cd "$(dirname "$0")/../.."
source experiments/shapesqa/chain.sh
export FVLM_ATTENTION_BACKEND=${FVLM_ATTENTION_BACKEND:-torch}  # no Triton autotuning in the budget

DATA_ONLY=1 bash experiments/shapesqa/shapes_gpu.sh || exit 1
mkdir -p runs
newest_checkpoint() { ls -d "$1"/checkpoints/step_* 2>/dev/null | tail -n 1; }  # step names are zero-padded
# one baseline, in the background: train NAME -> runs/shapes_gpu_NAME(.log)
train() {
    local name=$1 run=runs/shapes_gpu_$1 start=$SECONDS
    shift
    rm -rf "$run"
    timeout "$LIMIT" "$PY" -m trainer.run --config "experiments/shapesqa/configs/shapes_gpu_$name.yaml" --no-wandb "$@" \
        2>&1 | tr '\r' '\n' | grep --line-buffered -v -E '(it/s|s/it)\]$' > "$run.log"
    local rc=${PIPESTATUS[0]}
    if [ -d "$run/final" ]; then
        echo "[baselines] $name: done in $((SECONDS - start)) s -> $run/final"
    else
        echo "[baselines] $name: exit $rc after $((SECONDS - start)) s, no final model (UNDER BUDGET);" \
             "newest checkpoint: $(newest_checkpoint "$run")"
        return 1
    fi
}
# Both at once: a step of this model is launch-bound, so two runs share one GPU at nearly full
# speed each (training is sized by FLOPs, not time, so sharing changes no result).
train a6 "${@:2}" & a6=$!
train b1 "${@:2}" & b1=$!
status=0
wait $a6 || status=1
wait $b1 || status=1
for name in a6 b1; do tail -n 3 "runs/shapes_gpu_$name.log"; done
RESULTS_DIR=${RESULTS_DIR:-results}
mkdir -p "$RESULTS_DIR"
for name in a6 b1; do  # one archive per baseline, about 10 MB each
    run=runs/shapes_gpu_$name  # final/, or the newest checkpoint's weights if time ran out
    keep=$([ -d "$run/final" ] || newest_checkpoint "$run")
    tar -czf "$RESULTS_DIR/baseline_$name.tar.gz" --exclude=optimizer.pt --exclude=rng.pt \
        $(ls -d "$run"/* "$run.log" 2>/dev/null | grep -v /checkpoints$) $keep
done
echo "[baselines] archives in $RESULTS_DIR/"
exit $status
