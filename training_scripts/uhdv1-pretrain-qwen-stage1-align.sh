#!/usr/bin/env bash
# Stage 1: modality alignment. Trains the projector only, on the global image view (no slices).
# Required: EXPERIMENT_NAME, DATA_PATH.
# Optional: PRETRAIN_LEARNING_RATE (2e-4), PRETRAIN_BATCH (8), ACCU_STEPS (1), CLIP_CKPT_DIR and
# LLM_CKPT_DIR (default: model_weight/clip-vit-large-patch14-336 and model_weight/Qwen2-7B-Instruct, in the
# checkout, else in PUBLISHED_WEIGHTS_DIR, the seed README's folder: see docs/training.md),
# IMAGE_FOLDER, OUTPUT_DIR (model_weight/$EXPERIMENT_NAME/checkpoints_new/llava-qwen-uhd-stage1), SAVE_STEPS
# (24000), SAVE_TOTAL_LIMIT (1), DEEPSPEED, PRECISION, EPOCHS/MAX_STEPS, torchrun variables.
# Writes OUTPUT_DIR/projector.safetensors: the MM_PROJECTOR_CHECKPOINT of stage 1.5.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME DATA_PATH
# As published: no --group_by_modality_length (batches are random draws) and no checkpoint before step 24000.
training_flags --learning-rate "${PRETRAIN_LEARNING_RATE:-2e-4}" --batch "${PRETRAIN_BATCH:-8}" --paper-batch 256 \
    --folder checkpoints_new/llava-qwen-uhd-stage1 --save-steps 24000 --save-total-limit 1
sicog_exec train --stage 1 \
    --vision_tower "${CLIP_CKPT_DIR:-$(pretrained clip-vit-large-patch14-336)}" \
    --language_model "${LLM_CKPT_DIR:-$(pretrained Qwen2-7B-Instruct)}" \
    "${TRAIN_FLAGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
