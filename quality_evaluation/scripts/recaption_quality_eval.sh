#!/usr/bin/env bash
# Caption quality evaluation: self-consistency curation of generated captions (sicog curate captions).
#
# Required:  RAW_DATASET                 generation output with "candidates" (.jsonl or .json)
# Optional:  MODEL_NAME_OR_PATH          the model that generated the candidates (recorded in the report)
#            TEMPERATURE                 sampling temperature expected in the records (others are reported)
#            ENCODER_MODEL_NAME_OR_PATH  sentence encoder (default: the packaged all-MiniLM-L6-v2)
#            THRESHOLD                   keep records whose best MBR score >= THRESHOLD (default: the
#                                        encoder's, on the score formula it was set on: 0.83 for the
#                                        packaged MiniLM, self-similarity excluded; 0.85 for NV-Embed-v2,
#                                        self-similarity included as the published scripts scored; the
#                                        arguments --include-self/--no-include-self choose the formula)
#            OUTPUT_DIR                  default: RAW_DATASET without its extension + "_curated"
#            ENCODER_TRUST_REMOTE_CODE=1, ENCODER_APPEND_EOS=1, ENCODER_MAX_LENGTH, ENCODER_QUERY_PREFIX,
#            ENCODER_PADDING_SIDE, ENCODER_DTYPE, BATCH_SIZE, SEED, NPROC_PER_NODE (ranks sharing the embedding work)
#            ENCODER_PYTHON              the Python of an environment the encoder loads in, when it does not load
#                                        here: the texts are embedded there, from this checkout, and scored here
# The paper's encoder as the published scripts ran it: ENCODER_MODEL_NAME_OR_PATH=<NV-Embed-v2>
#            ENCODER_TRUST_REMOTE_CODE=1 ENCODER_APPEND_EOS=1 ENCODER_MAX_LENGTH=1024 ENCODER_DTYPE=float32
#            ENCODER_PADDING_SIDE=right, no ENCODER_QUERY_PREFIX, and ENCODER_PYTHON=<its environment's python>: its
#            code needs transformers 4.42 (docs/curation.md#nv-embed-v2 says how to make that environment).
# Arguments: --dry-run prints the commands only; anything else is passed on to `sicog curate captions` (with
#            ENCODER_PYTHON, to the scoring: the ENCODER_* variables set the encoder).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/_common.sh"
parse_common_args "$@"
require_vars RAW_DATASET

run_curation captions
