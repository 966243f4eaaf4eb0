#!/usr/bin/env bash
# Reasoning quality evaluation: self-consistency curation of generated CoT answers (sicog curate reasoning).
#
# Required:  RAW_DATASET                 generation output with "candidates" (.jsonl or .json)
# Optional:  MODEL_NAME_OR_PATH          the model that generated the candidates (recorded in the report)
#            TEMPERATURE                 sampling temperature expected in the records (others are reported)
#            ENCODER_MODEL_NAME_OR_PATH  sentence encoder (default: the packaged all-MiniLM-L6-v2)
#            THRESHOLD                   keep records whose best MBR score >= THRESHOLD (default 0.85)
#            MIN_AGREEMENT               and whose majority answer has at least this share (default 0.5)
#            OUTPUT_DIR                  default: RAW_DATASET without its extension + "_curated"
#            ENCODER_TRUST_REMOTE_CODE=1, ENCODER_APPEND_EOS=1, ENCODER_MAX_LENGTH, ENCODER_QUERY_PREFIX,
#            ENCODER_DTYPE, BATCH_SIZE, SEED, NPROC_PER_NODE (ranks sharing the embedding work)
# Arguments: --dry-run prints the command only; anything else is passed on to `sicog curate reasoning`.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/_common.sh"
parse_common_args "$@"
require_vars RAW_DATASET

dataset_stem="${RAW_DATASET%.jsonl}"
dataset_stem="${dataset_stem%.json}"
OUTPUT_DIR="${OUTPUT_DIR:-${dataset_stem}_curated}"

args=(curate reasoning --input "$RAW_DATASET" --output-dir "$OUTPUT_DIR")
if [[ -n "${MODEL_NAME_OR_PATH:-}" ]]; then args+=(--model-name-or-path "$MODEL_NAME_OR_PATH"); fi
if [[ -n "${TEMPERATURE:-}" ]]; then args+=(--temperature "$TEMPERATURE"); fi
if [[ -n "${ENCODER_MODEL_NAME_OR_PATH:-}" ]]; then args+=(--encoder "$ENCODER_MODEL_NAME_OR_PATH"); fi
if [[ -n "${THRESHOLD:-}" ]]; then args+=(--threshold "$THRESHOLD"); fi
if [[ -n "${MIN_AGREEMENT:-}" ]]; then args+=(--min-agreement "$MIN_AGREEMENT"); fi
if [[ "${ENCODER_TRUST_REMOTE_CODE:-0}" == "1" ]]; then args+=(--trust-remote-code); fi
if [[ "${ENCODER_APPEND_EOS:-0}" == "1" ]]; then args+=(--append-eos); fi
if [[ -n "${ENCODER_MAX_LENGTH:-}" ]]; then args+=(--max-length "$ENCODER_MAX_LENGTH"); fi
if [[ -n "${ENCODER_QUERY_PREFIX:-}" ]]; then args+=(--query-prefix "$ENCODER_QUERY_PREFIX"); fi
if [[ -n "${ENCODER_DTYPE:-}" ]]; then args+=(--dtype "$ENCODER_DTYPE"); fi
if [[ -n "${BATCH_SIZE:-}" ]]; then args+=(--batch-size "$BATCH_SIZE"); fi
if [[ -n "${SEED:-}" ]]; then args+=(--seed "$SEED"); fi

sicog_exec "${args[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
