#!/usr/bin/env bash
# GPU check on one H100/H200: bf16 vs fp32 agreement of a ~1B SICOG model; training-step tokens/s, MFU,
# peak memory, loss curve and bf16 vs fp32 forward of the plain path and of each fast path (--fused_loss liger,
# --compile_layers, both) and where its time goes (top kernels); SDPA vs eager vs flash-attn; greedy, greedy
# through N copies and seeded sampled outputs of every decoding path on 8 records (float32); each decoding path's
# bf16 logits against float32 on the same forced tokens; generation throughput (N = 6, batch 8, 32 and 128) on
# each decoding path (transformers' own, the shared prefill on the dynamic cache, on the static cache, and with
# compiled steps). --sections picks sections and their order. Sections and configurations that would start after
# --budget-s (default 480 s, counted from the start of this script) are skipped and say so; results are saved
# after every configuration.
# Results: $OUT/gpu_check.json and gpu_check.md when OUT is set, else in --out DIR (default ./gpu_check_results),
# also when the wheels or the imports fail (the setup and imports sections say why).
# Arguments go to benchmarks/gpu_check.py (--tiny: tiny config on the CPU, what the tests run); --dry-run
# prints the commands only.
#
# A machine without internet (the lent H200: torch with CUDA, but an older transformers and huggingface_hub, no
# braceexpand, no liger-kernel): benchmarks/gpu_wheels.sh fills WHEEL_DIR (default .whl/ in the repository root)
# here with wheels and requirements.txt. When WHEEL_DIR/requirements.txt exists, this script makes a fresh virtual
# environment GPU_CHECK_VENV (default /tmp/sicog-gpu-check-venv; emptied on every run) that sees the interpreter's
# own packages (its torch and CUDA) behind its own, installs requirements.txt into it with
# `pip install --no-index --find-links WHEEL_DIR` (pip takes from the wheels only what the machine's packages do
# not satisfy, and checks that the versions fit), and runs the check with it. If that fails, the check still runs
# with the interpreter as it is, and gpu_check.json records the failure and pip's output.
# The interpreter: SICOG_PYTHON, else what scripts/_common.sh's sicog_python finds (python3 where it imports sicog,
# else the checkout's .venv, else python3). Optional: SICOG_COMMIT (recorded as the commit, instead of git's).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/_common.sh"
parse_common_args "$@"
export GPU_CHECK_STARTED_AT="$(date +%s)"
python="$(sicog_python)"
wheel_dir="${WHEEL_DIR:-$SICOG_ROOT/.whl}"
venv="${GPU_CHECK_VENV:-/tmp/sicog-gpu-check-venv}"
pip_install=(-m pip --isolated install --no-index --find-links "$wheel_dir" --no-compile --no-cache-dir --progress-bar off
             --disable-pip-version-check -r "$wheel_dir/requirements.txt")

# make_venv: GPU_CHECK_VENV, empty, whose Python sees the packages of $python behind its own. --system-site-packages
# is not enough: the H200's python3 is itself a virtual environment (/opt/torch/.venv), and that option reaches only
# the installation beneath it, not the environment that holds torch. So a .pth file adds every site-packages folder
# of $python, in its order (site.addsitedir also runs their own .pth files); the new environment's come first.
# pip (the interpreter's own, found through them) then counts those packages as installed, and leaves them in place.
make_venv() {
    "$python" -m venv --clear --without-pip "$venv" || return
    local dirs site
    dirs="$("$python" -c 'import site; print(repr(site.getsitepackages()))')" || return
    site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" || return
    # One line, run by site.py at start-up (no comprehension: its scope would not see the import).
    echo "import site; list(map(site.addsitedir, $dirs))" >"$site/_gpu_check_base.pth"
    if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python" -m ensurepip --default-pip || return
    fi
}

setup_failed() {  # setup_failed MESSAGE: gpu_check.py records MESSAGE and the log in its setup section
    export GPU_CHECK_SETUP_ERROR="$1; the check runs with $python as it is"
    echo "warning: $GPU_CHECK_SETUP_ERROR (log: $GPU_CHECK_SETUP_LOG)" >&2
}

if [[ -f "$wheel_dir/requirements.txt" ]] || compgen -G "$wheel_dir/*.whl" >/dev/null; then
    echo "installing $wheel_dir/requirements.txt into $venv (from $wheel_dir only)"
    if ((SICOG_DRY_RUN)); then
        printf '%q ' "$python" -m venv --clear --without-pip "$venv"
        printf '\n'
        printf '%q ' PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "${pip_install[@]}"
        printf '\n'
        python="$venv/bin/python"
    else
        mkdir -p "$(dirname "$venv")"
        export GPU_CHECK_SETUP_LOG="$venv.setup.log" GPU_CHECK_WHEEL_DIR="$wheel_dir"  # beside the environment
        started=$SECONDS
        if [[ ! -f "$wheel_dir/requirements.txt" ]]; then
            echo "no requirements.txt beside the wheels" >"$GPU_CHECK_SETUP_LOG"
            setup_failed "$wheel_dir holds wheels but no requirements.txt (benchmarks/gpu_wheels.sh writes both)"
        # --isolated and PIP_CONFIG_FILE=/dev/null: no pip configuration of the machine (an index, find-links,
        # constraints) takes part; only WHEEL_DIR and the installed packages count.
        elif { make_venv && PIP_CONFIG_FILE=/dev/null "$venv/bin/python" "${pip_install[@]}"; } \
                >"$GPU_CHECK_SETUP_LOG" 2>&1; then
            python="$venv/bin/python"
        else
            setup_failed "installing $wheel_dir/requirements.txt into $venv failed (exit $?)"
        fi
        export GPU_CHECK_SETUP_SECONDS=$((SECONDS - started))
        tail -n 3 "$GPU_CHECK_SETUP_LOG" || true
    fi
fi
export PYTHONPATH="$SICOG_ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cmd=("$python" "$SICOG_ROOT/benchmarks/gpu_check.py" "${SICOG_ARGS[@]}")
printf '%q ' "${cmd[@]}"
printf '\n'
if ((SICOG_DRY_RUN)); then exit 0; fi
exec "${cmd[@]}"
