#!/usr/bin/env bash
# Candidate captions for unlabeled images (`sicog generate captions`; see docs/generation.md).
#
# Required:  EXPERIMENT_NAME  the output is ${OUTPUT_DIR}/${EXPERIMENT_NAME}.jsonl (+ .errors.jsonl)
#            MODEL_PATH       the stage-0 perception checkpoint
#            DATA_PATH        records {id, image} (.jsonl or .json);
#                             with SPLIT set the input is ${DATA_PATH}_${SPLIT}.json
# Optional:  SPLIT, IMAGE_FOLDER (where relative image paths start), OUTPUT_DIR (default: the input's folder),
#            PROMPT (cod-default | default | cod-conv; default cod-default), NUM_CANDIDATES (default 6),
#            TEMPERATURE (0.7), TOP_P (0.9), BEAMS (1), MAX_NEW_TOKENS (1200), BATCH_SIZE (8), SEED (0),
#            AUGMENT_METHODS (corrupted images; comma-separated, applied in order:
#                             gaussian_blur, color_jitter, mirror_rotation, mask),
#            NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (torchrun; one process per GPU)
# Arguments: --dry-run prints the command only; anything else is passed on to `sicog generate captions`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME MODEL_PATH DATA_PATH

input="$DATA_PATH"
if [[ -n "${SPLIT:-}" ]]; then input="${DATA_PATH}_${SPLIT}.json"; fi
OUTPUT_DIR="${OUTPUT_DIR:-$(dirname "$input")}"

args=(generate captions --model "$MODEL_PATH" --data "$input" --output "${OUTPUT_DIR}/${EXPERIMENT_NAME}.jsonl")
if [[ -n "${IMAGE_FOLDER:-}" ]]; then args+=(--image-folder "$IMAGE_FOLDER"); fi
if [[ -n "${PROMPT:-}" ]]; then args+=(--prompt "$PROMPT"); fi
if [[ -n "${NUM_CANDIDATES:-}" ]]; then args+=(--num-candidates "$NUM_CANDIDATES"); fi
if [[ -n "${TEMPERATURE:-}" ]]; then args+=(--temperature "$TEMPERATURE"); fi
if [[ -n "${TOP_P:-}" ]]; then args+=(--top-p "$TOP_P"); fi
if [[ -n "${BEAMS:-}" ]]; then args+=(--num-beams "$BEAMS"); fi
if [[ -n "${MAX_NEW_TOKENS:-}" ]]; then args+=(--max-new-tokens "$MAX_NEW_TOKENS"); fi
if [[ -n "${BATCH_SIZE:-}" ]]; then args+=(--batch-size "$BATCH_SIZE"); fi
if [[ -n "${SEED:-}" ]]; then args+=(--seed "$SEED"); fi
if [[ -n "${AUGMENT_METHODS:-}" ]]; then args+=(--corrupt "$AUGMENT_METHODS"); fi

sicog_exec "${args[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
