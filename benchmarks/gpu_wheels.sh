#!/usr/bin/env bash
# Wheels for the GPU check on a machine without internet (CPython PYTHON_VERSION, default 3.12, on x86-64 Linux),
# saved into WHEEL_DIR (default .whl/, ignored by git; its old wheels are removed first) with requirements.txt, the
# list that gpu_check.sh installs there with `pip install --no-index --find-links WHEEL_DIR -r requirements.txt`.
#
# What is fetched: every package in the dependency closure of sicog's runtime requirements (pyproject.toml) and of
# liger-kernel (`sicog train --fused_loss liger`), with markers evaluated for that machine, each with --no-deps at
# the version installed in this checkout's environment (transformers is also pinned to it in requirements.txt; the
# others there keep pyproject.toml's ranges, so pip on the machine uses its own packages where they fit and takes
# only the rest from the wheels). Left out, being big and on the GPU image already (pip there still checks that
# their versions fit): torch, triton, nvidia-* and cuda-* (the machine's CUDA build is the one to use; gigabytes),
# numpy, scipy, scikit-learn, matplotlib and pillow (tens of MB); see NOT_CARRIED in gpu_check.py. The closure is computed by `gpu_check.py --wheel-set`, which also
# reads the requirements of each downloaded wheel, so this repeats until nothing is missing (a package not
# installed here, e.g. liger-kernel, is fetched at the newest version its requirement allows, then walked).
# Run it here, with the package index; then carry WHEEL_DIR to the GPU machine (the device tool: carry [".whl"]).
# Optional: SICOG_PYTHON (default .venv/bin/python: the environment whose versions are pinned), PYTHON_VERSION
# (3.12; 3.11 for a local simulation), WHEEL_DIR.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${SICOG_PYTHON:-$root/.venv/bin/python}"
dir="${WHEEL_DIR:-$root/.whl}"
version="${PYTHON_VERSION:-3.12}"
# torch 2.11's own wheels are manylinux_2_28, so the machine's glibc is at least 2.28.
platforms=(manylinux1_x86_64 manylinux2010_x86_64 manylinux2014_x86_64)
for minor in $(seq 17 28); do platforms+=("manylinux_2_${minor}_x86_64"); done
mkdir -p "$dir"
rm -f "$dir"/*.whl "$dir/requirements.txt"
for round in 1 2 3 4 5 6; do
    missing="$(OMP_NUM_THREADS=1 "$python" "$root/benchmarks/gpu_check.py" --wheel-set "$version" --wheel-dir "$dir")"
    if [[ -z "$missing" ]]; then
        echo "$(ls "$dir"/*.whl | wc -l) wheels for Python $version in $dir ($(du -sh "$dir" | cut -f1)), after $((round - 1)) download round(s)"
        exit 0
    fi
    mapfile -t wanted <<<"$missing"
    echo "round $round: fetching ${wanted[*]}"
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
        "${platforms[@]/#/--platform=}" --dest "$dir" "${wanted[@]}"
done
echo "error: the wheel set for $dir is still incomplete after 6 rounds" >&2
exit 1
