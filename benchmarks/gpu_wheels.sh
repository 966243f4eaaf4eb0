#!/usr/bin/env bash
# Wheels for the GPU check on a device machine without internet (Python 3.12, x86-64 Linux), saved into
# WHEEL_DIR (default .whl/, ignored by git). Exactly two, fetched with --no-deps: transformers at the
# version installed here (the device's may be older than SICOG needs) and the newest liger-kernel that the
# `gpu` extra's requirement allows (`sicog train --fused_loss`). Their dependencies are not fetched: the
# device must already have torch with CUDA (liger-kernel runs on its triton) and what this transformers
# needs (huggingface_hub, tokenizers, safetensors, ... at versions it accepts), or WHEEL_DIR must hold
# those too (benchmarks/README.md lists a full set). gpu_check.sh installs whatever WHEEL_DIR holds, also
# with --no-deps, before it runs. Needs the package index (run it here, then carry .whl to the device).
# Optional: SICOG_PYTHON (default .venv/bin/python).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${SICOG_PYTHON:-$root/.venv/bin/python}"
dir="${WHEEL_DIR:-$root/.whl}"
transformers="transformers==$("$python" -c 'import transformers; print(transformers.__version__)')"
liger="$(grep -o 'liger-kernel>=[0-9.]*' "$root/pyproject.toml")"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$dir" "$transformers" "$liger"
ls -l "$dir"
