#!/usr/bin/env bash
# Stage 1.5: multimodal pre-training on the curated self-generated data, from the stage-1 projector.
# Required: EXPERIMENT_NAME, DATA_PATH, MM_PROJECTOR_CHECKPOINT (stage 1's output folder or its
# projector.safetensors).
# Optional: FINETUNE_LEARNING_RATE (2e-5), FINETUNE_BATCH or FINETUNE_RANK_BATCH (4), ACCU_STEPS (1),
# LLM_CKPT_DIR, CLIP_CKPT_DIR (as in stage 1), PUBLISHED_WEIGHTS_DIR, IMAGE_FOLDER, OUTPUT_DIR (model_weight/$EXPERIMENT_NAME/llava-qwen-uhd-stage15),
# SAVE_STEPS (4000), SAVE_TOTAL_LIMIT (2), DEEPSPEED, PRECISION, EPOCHS/MAX_STEPS, torchrun variables.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME DATA_PATH MM_PROJECTOR_CHECKPOINT
training_flags --learning-rate "${FINETUNE_LEARNING_RATE:-2e-5}" --batch "${FINETUNE_BATCH:-${FINETUNE_RANK_BATCH:-4}}" \
    --paper-batch 128 --folder llava-qwen-uhd-stage15 --save-steps 4000 --save-total-limit 2
sicog_exec train --stage 1.5 --group_by_modality_length True \
    --vision_tower "${CLIP_CKPT_DIR:-$(pretrained clip-vit-large-patch14-336)}" \
    --language_model "${LLM_CKPT_DIR:-$(pretrained Qwen2-7B-Instruct)}" \
    --projector "$MM_PROJECTOR_CHECKPOINT" \
    "${TRAIN_FLAGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
