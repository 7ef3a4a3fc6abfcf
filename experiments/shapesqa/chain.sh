# Sourced by shapes_finetune.sh, shapes_branch_baselines.sh, shapes_where_baselines.sh and
# shapes_gpu_baselines.sh (from the repo root): the shared set-up, the helper that makes missing
# ShapesQA data, and the loop that trains a chain of configs, each from the one before.
# A config NAME is trainer/configs/NAME.yaml (the shipped model's recipe) or, failing that,
# experiments/shapesqa/configs/NAME.yaml (the experiments).
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

need_final() {  # need_final RUN HINT: stop unless RUN/final holds a model
    if [ ! -f "$1/final/model.safetensors" ]; then
        echo "$1/final is missing: $2" >&2
        exit 1
    fi
}

shapes() {  # shapes DIR SUBSET ARGS...: make one ShapesQA subset unless it exists
    local dir=$1 subset=$2
    shift 2
    [ -d "$dir/$subset" ] || "$PY" -m fvlm.cli make-shapes "$dir" --subsets "$subset" --workers 2 "$@"
}

run_chain() {  # run_chain TAG CONFIG...: train each config whose runs/CONFIG/final does not exist yet, in order
    local tag=$1 name config
    shift
    for name in "$@"; do
        if [ -d "runs/$name/final" ]; then
            echo "[$tag] $name: runs/$name/final exists, skipped"
            continue
        fi
        config=trainer/configs/$name.yaml
        [ -f "$config" ] || config=experiments/shapesqa/configs/$name.yaml
        "$PY" -m trainer.run --config "$config" --no-wandb
    done
}
