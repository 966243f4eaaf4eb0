#!/usr/bin/env bash
# Stage 0: develop systematic perception (CoD captions) or reasoning (CoT answers) from a base model.
# Required: EXPERIMENT_NAME, DATA_PATH, PREV_STAGE_CHECKPOINT (the base model).
# Optional: FINETUNE_LEARNING_RATE (2e-5), FINETUNE_BATCH or FINETUNE_RANK_BATCH (4), ACCU_STEPS (1),
# IMAGE_FOLDER, OUTPUT_DIR (model_weight/$EXPERIMENT_NAME/llava-qwen-uhd-stage0), SAVE_STEPS (2000),
# SAVE_TOTAL_LIMIT (2), DEEPSPEED, PRECISION, EPOCHS/MAX_STEPS, NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT. Extra arguments go to `sicog train`; --dry-run prints the command only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME DATA_PATH PREV_STAGE_CHECKPOINT
training_flags --learning-rate "${FINETUNE_LEARNING_RATE:-2e-5}" --batch "${FINETUNE_BATCH:-${FINETUNE_RANK_BATCH:-4}}" \
    --paper-batch 128 --folder llava-qwen-uhd-stage0 --save-steps 2000 --save-total-limit 2
sicog_exec train --stage 0 --model_name_or_path "$PREV_STAGE_CHECKPOINT" --group_by_modality_length True \
    "${TRAIN_FLAGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
