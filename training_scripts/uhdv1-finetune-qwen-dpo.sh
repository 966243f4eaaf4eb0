#!/usr/bin/env bash
# DPO: preference training of a SICOG model on chosen/rejected pairs (curation pairs.jsonl and/or
# `sicog curate pairs-from-noisy` output; several files: DATA_PATH=a.jsonl,b.jsonl or a .yaml mixture).
# Required: EXPERIMENT_NAME, DATA_PATH (the pairs), PREV_STAGE_CHECKPOINT (the model to improve, also the reference).
# Optional: DPO_LEARNING_RATE (5e-7), DPO_BATCH (pairs per device, 1), ACCU_STEPS (1), DPO_BETA (0.1),
# DPO_GAMMA (1.0, weight of the SFT loss on chosen), DPO_ALPHA (1.0, weight of the DPO loss), IMAGE_FOLDER,
# OUTPUT_DIR (model_weight/$EXPERIMENT_NAME/llava-qwen-uhd-dpo), SAVE_STEPS (3000), SAVE_TOTAL_LIMIT (1), DEEPSPEED,
# PRECISION, EPOCHS/MAX_STEPS, NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT.
# Extra arguments go to `sicog train` (e.g. --lora_r 64); --dry-run prints the command only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME DATA_PATH PREV_STAGE_CHECKPOINT
# LLaVA-NeXT's scripts/train/dpo.sh: linear decay after a 10% warm-up, a checkpoint every 3000 steps keeping one.
training_flags --learning-rate "${DPO_LEARNING_RATE:-5e-7}" --batch "${DPO_BATCH:-1}" --folder llava-qwen-uhd-dpo \
    --save-steps 3000 --save-total-limit 1 --scheduler linear --warmup 0.1
# The DPO weights are passed only when set: their defaults are sicog train's (see its --help).
optional_flags DPO_BETA:--dpo_beta DPO_GAMMA:--dpo_gamma DPO_ALPHA:--dpo_alpha
sicog_exec train --stage dpo --model_name_or_path "$PREV_STAGE_CHECKPOINT" --group_by_modality_length True \
    ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"} "${TRAIN_FLAGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
