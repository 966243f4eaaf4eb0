#!/usr/bin/env bash
# Candidate captions for unlabeled images (`sicog generate captions`; see docs/generation.md).
#
# Required:  EXPERIMENT_NAME  the output is ${OUTPUT_DIR}/${EXPERIMENT_NAME}.jsonl (+ .errors.jsonl)
#            MODEL_PATH       the stage-0 perception checkpoint
#            DATA_PATH        records {id, image} (.jsonl or .json), read as given: SPLIT is not read
#                             (as the published caption script; reasoning_inference.sh reads it)
# Optional:  IMAGE_FOLDER (where relative image paths start), OUTPUT_DIR (default: the (first) input's folder),
#            PROMPT (cod-default | default | cod-conv; default cod-default), NUM_CANDIDATES (default 6),
#            TEMPERATURE (0.7), TOP_P (0.9): always passed, so the checkpoint's generation_config.json
#                             (top_p 0.8 on Qwen2-7B-Instruct) does not decide them, as released;
#            BEAMS (1), MAX_NEW_TOKENS (1200), BATCH_SIZE (8), SEED (0),
#            AUGMENT_METHODS (corrupted images; comma-separated or the README's quoted list; each record gets
#                             one of them at random, seeded, as released: gaussian_blur, color_jitter,
#                             mirror_rotation, mask), AUGMENT_ALL=1 or true (apply all of them, in order),
#            NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (torchrun; one process per GPU)
# Arguments: --dry-run prints the command only; anything else is passed on to `sicog generate captions`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME MODEL_PATH DATA_PATH

generate_flags captions
sicog_exec "${GENERATE_ARGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
