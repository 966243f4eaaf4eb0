#!/usr/bin/env bash
# GPU check on one H100/H200: bf16 vs fp32 agreement of a ~1B SICOG model; training-step tokens/s, MFU,
# peak memory and loss curve of the plain path and of each fast path (--fused_loss liger,
# --compile_layers, both); SDPA vs eager vs flash-attn; generation throughput (N = 6, batch 8, 32 and
# 128) on each decoding path (dynamic cache, static cache, static cache with compiled steps); greedy
# outputs of every decoding path on 8 records. Sections that would start after --budget-s (default
# 480 s) are skipped and say so.
# Results: $OUT/gpu_check.json and gpu_check.md when OUT is set, else in --out DIR (default ./gpu_check_results).
# Arguments go to benchmarks/gpu_check.py (--tiny: tiny config on the CPU, what the tests run); --dry-run
# prints the command only.
# The GPU machine may have an older transformers than SICOG needs, and no liger-kernel: wheels in WHEEL_DIR
# (default .whl/ in the repository root; benchmarks/gpu_wheels.sh fetches both), when there are any, are
# installed first into WHEEL_TARGET (default /tmp/site), which then comes first on PYTHONPATH. Optional:
# SICOG_PYTHON (python3), SICOG_COMMIT (recorded when the tree has no git metadata).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
python="${SICOG_PYTHON:-python3}"
wheel_dir="${WHEEL_DIR:-$SICOG_ROOT/.whl}"
shopt -s nullglob
wheels=("$wheel_dir"/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    target="${WHEEL_TARGET:-/tmp/site}"
    echo "installing ${#wheels[@]} wheel(s) from $wheel_dir into $target"
    if ((SICOG_DRY_RUN == 0)); then
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$target" "${wheels[@]}"
    fi
    export PYTHONPATH="$target:$SICOG_ROOT"
else
    export PYTHONPATH="$SICOG_ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd=("$python" "$SICOG_ROOT/benchmarks/gpu_check.py" "${SICOG_ARGS[@]}")
printf '%q ' "${cmd[@]}"
printf '\n'
if ((SICOG_DRY_RUN)); then exit 0; fi
exec "${cmd[@]}"
