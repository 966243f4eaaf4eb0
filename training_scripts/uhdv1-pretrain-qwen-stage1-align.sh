#!/usr/bin/env bash
# Stage 1: modality alignment. Trains the projector only, on the global image view (no slices).
# Required: EXPERIMENT_NAME, DATA_PATH.
# Optional: PRETRAIN_LEARNING_RATE (2e-4), PRETRAIN_BATCH (8), ACCU_STEPS (1), CLIP_CKPT_DIR and
# LLM_CKPT_DIR (default: model_weight/clip-vit-large-patch14-336 and model_weight/Qwen2-7B-Instruct),
# IMAGE_FOLDER, OUTPUT_DIR, DEEPSPEED, PRECISION, EPOCHS/MAX_STEPS, torchrun variables.
# Writes OUTPUT_DIR/projector.safetensors: the MM_PROJECTOR_CHECKPOINT of stage 1.5.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME DATA_PATH
training_flags "${PRETRAIN_LEARNING_RATE:-2e-4}" "${PRETRAIN_BATCH:-8}" 256
sicog_exec train --stage 1 \
    --vision_tower "${CLIP_CKPT_DIR:-$SICOG_ROOT/model_weight/clip-vit-large-patch14-336}" \
    --language_model "${LLM_CKPT_DIR:-$SICOG_ROOT/model_weight/Qwen2-7B-Instruct}" \
    "${TRAIN_FLAGS[@]}" "${SICOG_ARGS[@]}"
