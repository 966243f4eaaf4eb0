# Shared by every SICOG wrapper script (source it; do not run it).
# Wrappers: read environment variables, name every missing one, print the resolved command,
# honour --dry-run, then exec `sicog ...` (or torchrun -m sicog ... when distributed).
# Nothing here installs packages or uses absolute paths.

SICOG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SICOG_DRY_RUN=0
SICOG_ARGS=()

# parse_common_args "$@": takes out --dry-run; every other argument passes through to sicog.
parse_common_args() {
    local arg
    for arg in "$@"; do
        if [[ "$arg" == "--dry-run" ]]; then SICOG_DRY_RUN=1; else SICOG_ARGS+=("$arg"); fi
    done
}

# require_vars NAME...: fail once, listing every variable that is unset or empty.
require_vars() {
    local name missing=()
    for name in "$@"; do
        [[ -n "${!name:-}" ]] || missing+=("$name")
    done
    if ((${#missing[@]})); then
        echo "error: set these environment variables first: ${missing[*]}" >&2
        exit 2
    fi
}

# sicog_exec ARGS...: run `python -m sicog ARGS...`, under torchrun when NPROC_PER_NODE or NNODES > 1.
sicog_exec() {
    local python="${SICOG_PYTHON:-python3}" cmd
    if [[ "${NPROC_PER_NODE:-1}" != "1" || "${NNODES:-1}" != "1" ]]; then
        cmd=("$python" -m torch.distributed.run
             --nproc_per_node "${NPROC_PER_NODE:-1}" --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}"
             --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}"
             -m sicog "$@")
    else
        cmd=("$python" -m sicog "$@")
    fi
    printf '%q ' "${cmd[@]}"
    printf '\n'
    if ((SICOG_DRY_RUN)); then exit 0; fi
    exec "${cmd[@]}"
}
