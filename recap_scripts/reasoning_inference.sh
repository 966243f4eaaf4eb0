#!/usr/bin/env bash
# Candidate answers for unlabeled image-question pairs (`sicog generate reasoning`; see docs/generation.md).
#
# Required:  EXPERIMENT_NAME  the output is ${OUTPUT_DIR}/${EXPERIMENT_NAME}.jsonl (+ .errors.jsonl);
#                             with SPLIT set, ${OUTPUT_DIR}/${EXPERIMENT_NAME}_${SPLIT}.jsonl (one per split)
#            MODEL_PATH       the stage-0 reasoning checkpoint
#            DATA_PATH        records {id, image, question} (.jsonl or .json);
#                             with SPLIT set the input is ${DATA_PATH}_${SPLIT}.json
# Optional:  SPLIT, IMAGE_FOLDER (where relative image paths start), OUTPUT_DIR (default: the (first) input's folder),
#            PROMPT (cot-default | default; default cot-default), NUM_CANDIDATES (default 6),
#            TEMPERATURE (0.7), TOP_P (0.9): always passed, so the checkpoint's generation_config.json
#                             (top_p 0.8 on Qwen2-7B-Instruct) does not decide them, as released;
#            BEAMS (1), MAX_NEW_TOKENS (1200), BATCH_SIZE (8), SEED (0),
#            AUGMENT_METHODS (noisy images for DPO; comma-separated or the README's quoted list; each record gets
#                             one of them at random, seeded, as released: gaussian_blur, color_jitter,
#                             mirror_rotation, mask), AUGMENT_ALL=1 or true (apply all of them, in order),
#            NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (torchrun; one process per GPU)
# Arguments: --dry-run prints the command only; anything else is passed on to `sicog generate reasoning`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
require_vars EXPERIMENT_NAME MODEL_PATH DATA_PATH

generate_flags reasoning
sicog_exec "${GENERATE_ARGS[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
