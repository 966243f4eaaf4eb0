#!/usr/bin/env bash
# The wheels the GPU check needs on a device machine without internet (Python 3.12, x86-64 Linux), saved
# into WHEEL_DIR (default .whl/, ignored by git): the transformers installed here (the device's may be
# older than SICOG needs) and liger-kernel at the `gpu` extra's version (`sicog train --fused_loss`).
# gpu_check.sh installs whatever it finds there before it runs. Needs the package index (run it here,
# then carry .whl to the device). Optional: SICOG_PYTHON (default .venv/bin/python).
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
