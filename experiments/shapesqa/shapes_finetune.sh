#!/usr/bin/env bash
# The CPU fine-tunes behind fvlm's shipped default model, in order, from the GPU-trained model
# (runs/shapes_gpu2/final: README.md "How it was trained"). Makes the ShapesQA data that is missing,
# then runs each config whose RUN/final does not exist yet, so an interrupted chain picks up where it
# stopped (a run cut short resumes from its newest checkpoint). About 4.5 hours on 2 CPU cores:
#   shapes_objects, shapes_objects_curriculum   object supervision of the encoder (+ curriculum shards)
#   shapes_gaze, shapes_token, shapes_token_mix gaze and token supervision: the question steers the gaze
#   shapes_vision                               stage 0: the encoder alone learns every object's shape
#   shapes_vision_vlm                           the query, connector and LLM re-fitted to it
#   shapes_readout, shapes_readout_mix          DINO frozen: the LLM learns to read the shape
#   shapes_where_read                           the gaze embedding on: the LLM learns to read where the
#                                               query looked (motion and position questions only)
#   shapes_where_mix, _thirds, _thirds2         the other question types brought back, gaze kept
#   shapes_where_modes                          half of the batches autoregressive, more colour questions
# The last run's final/ is what ships in fvlm/assets/default_model (with tokenizer_config.json without
# the local-path keys the trainer adds; attention_map, the most selective layer, is set from
# shapes_where_read on).
#
#   bash experiments/shapesqa/shapes_finetune.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
source experiments/shapesqa/chain.sh
need_final runs/shapes_gpu2 "train it first (README.md, 'How it was trained')"

shapes data/shapes128 train --n 8000 --no-videos
shapes data/shapes128 val --eval-n 400
shapes data/shapes128b train --n 12000 --seed 1 --no-videos
shapes data/shapes128s train --split easy --qtypes shape,color,caption --n 9000 --seed 2 --no-videos
shapes data/shapes128e train --split easy --n 8000 --no-videos
# the gaze read-out's data (trainer/configs/shapes_where_read.yaml)
shapes data/where/mix train --n 3000 --no-videos
shapes data/where/mix val --eval-n 200
shapes data/where/objects train --split easy --qtypes shape,color,caption --n 2500 --seed 2 --no-videos
shapes data/where/mp train --split mix --qtypes motion,position --per-clip 2 --n 3000 --seed 3 --no-videos
shapes data/where/mp2 train --split mix --qtypes motion,position --per-clip 2 --n 4000 --seed 5 --no-videos
shapes data/where/color train --split easy --qtypes color --per-clip 2 --n 6000 --seed 16 --no-videos

run_chain shapes_finetune shapes_objects shapes_objects_curriculum shapes_gaze shapes_token shapes_token_mix \
    shapes_vision shapes_vision_vlm shapes_readout shapes_readout_mix \
    shapes_where_read shapes_where_mix shapes_where_thirds shapes_where_thirds2 shapes_where_modes
echo "[shapes_finetune] done: runs/shapes_where_modes/final"
