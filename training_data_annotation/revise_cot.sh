#!/usr/bin/env bash
# Re-template LLaVA-CoT answers (SUMMARY/CAPTION/REASONING/CONCLUSION tags) into the 4-step CoT
# format and short-answer records (`sicog annotate cot`).
#
#   export ORIGINAL_COT_FILE=... OUTPUT_COT_DIR=... OUTPUT_SHORT_DIR=...
#   bash revise_cot.sh [--dry-run] [more `sicog annotate cot` options]
# or, positionally (an empty argument keeps the exported value):
#   bash revise_cot.sh COT_FILE COT_DIR SHORT_DIR [options]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
# Annotation is one process calling an API: the process counts other stages' scripts read (NPROC_PER_NODE,
# NNODES, DISTRIBUTED_ARGS, often left exported for a training run) would start copies racing for one output.
unset NPROC_PER_NODE NNODES DISTRIBUTED_ARGS SICOG_TORCHRUN

parse_common_args "$@"
positional_vars ORIGINAL_COT_FILE OUTPUT_COT_DIR OUTPUT_SHORT_DIR

require_vars ORIGINAL_COT_FILE OUTPUT_COT_DIR OUTPUT_SHORT_DIR

sicog_exec annotate cot --input "$ORIGINAL_COT_FILE" --cot-dir "$OUTPUT_COT_DIR" --short-dir "$OUTPUT_SHORT_DIR" \
    ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
