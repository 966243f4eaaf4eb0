#!/usr/bin/env bash
# Rewrite original captions into 5-step Chain-of-Description captions with a VLM behind an
# OpenAI-compatible API (`sicog annotate cod`), writing CoD and detailed-description records.
#
#   export ORIGINAL_CAPTION_FILE=... IMAGE_DIR=... OUTPUT_COD_DIR=... OUTPUT_DD_DIR=...
#   bash revise_cod.sh [--dry-run] [more `sicog annotate cod` options, e.g. --limit 10]
# or, positionally (an empty argument keeps the exported value):
#   bash revise_cod.sh CAPTION_FILE IMAGE_DIR COD_DIR DD_DIR [options]
#
# The API: OPENAI_API_KEY, OPENAI_BASE_URL (any compatible server, e.g. a local vLLM); optional
# ANNOTATION_MODEL (default gpt-4o) and ANNOTATION_CONCURRENCY (default 8).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
# Annotation is one process calling an API: the process counts other stages' scripts read (NPROC_PER_NODE,
# NNODES, DISTRIBUTED_ARGS, often left exported for a training run) would start copies racing for one output.
unset NPROC_PER_NODE NNODES DISTRIBUTED_ARGS SICOG_TORCHRUN

parse_common_args "$@"
positional_vars ORIGINAL_CAPTION_FILE IMAGE_DIR OUTPUT_COD_DIR OUTPUT_DD_DIR

require_vars ORIGINAL_CAPTION_FILE IMAGE_DIR OUTPUT_COD_DIR OUTPUT_DD_DIR

args=(annotate cod
      --input "$ORIGINAL_CAPTION_FILE" --image-folder "$IMAGE_DIR"
      --cod-dir "$OUTPUT_COD_DIR" --dd-dir "$OUTPUT_DD_DIR")
if [[ -n "${ANNOTATION_MODEL:-}" ]]; then args+=(--model "$ANNOTATION_MODEL"); fi
if [[ -n "${ANNOTATION_CONCURRENCY:-}" ]]; then args+=(--concurrency "$ANNOTATION_CONCURRENCY"); fi
sicog_exec "${args[@]}" ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
