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

# positional_vars NAME...: leading plain arguments in SICOG_ARGS fill these variables in order (an empty
# argument never overwrites an exported value); the rest stay in SICOG_ARGS.
positional_vars() {
    local names=("$@") rest=() arg taken=0
    for arg in ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}; do
        if ((${#rest[@]} == 0 && taken < ${#names[@]})) && [[ "$arg" != -* ]]; then
            if [[ -n "$arg" ]]; then printf -v "${names[taken]}" '%s' "$arg"; fi
            taken=$((taken + 1))
        else
            rest+=("$arg")
        fi
    done
    SICOG_ARGS=(${rest[@]+"${rest[@]}"})
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

# sicog_python: the interpreter that runs sicog: SICOG_PYTHON when set; else python3 from PATH when it imports
# sicog (an activated environment, e.g. a cluster's GPU one, even where the checkout also has a .venv); else the
# checkout's .venv (what `make install` creates, so the scripts work without activating it); else python3.
# The import is tried from / so that a checkout in the working directory does not count as installed.
sicog_python() {
    if [[ -n "${SICOG_PYTHON:-}" ]]; then
        echo "$SICOG_PYTHON"
    elif (cd / && python3 -c "import sicog") >/dev/null 2>&1; then
        echo python3
    elif [[ -x "$SICOG_ROOT/.venv/bin/python" ]]; then
        echo "$SICOG_ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

# sicog_exec ARGS...: run `python -m sicog ARGS...`, under torchrun when NPROC_PER_NODE or NNODES > 1 or a
# training script set SICOG_TORCHRUN=1 (DeepSpeed needs the rank variables torchrun sets; without them it
# looks for MPI and mpi4py). One node: torchrun --standalone (a free port) unless MASTER_ADDR is set.
# Several nodes: NODE_RANK and MASTER_ADDR are required (MASTER_PORT defaults to 29500).
# The interpreter is SICOG_PYTHON, else sicog_python's choice.
sicog_exec() {
    local python cmd
    python="$(sicog_python)"
    if [[ "${NPROC_PER_NODE:-1}" != "1" || "${NNODES:-1}" != "1" || "${SICOG_TORCHRUN:-0}" == "1" ]]; then
        cmd=("$python" -m torch.distributed.run --nproc_per_node "${NPROC_PER_NODE:-1}")
        if [[ "${NNODES:-1}" != "1" ]]; then
            require_vars NODE_RANK MASTER_ADDR
            cmd+=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR"
                  --master_port "${MASTER_PORT:-29500}")
        elif [[ -n "${MASTER_ADDR:-}" ]]; then
            cmd+=(--nnodes 1 --node_rank 0 --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
        else
            cmd+=(--standalone)
        fi
        cmd+=(-m sicog "$@")
    else
        cmd=("$python" -m sicog "$@")
    fi
    printf '%q ' "${cmd[@]}"
    printf '\n'
    if ((SICOG_DRY_RUN)); then exit 0; fi
    exec "${cmd[@]}"
}

# device_kind: cuda when nvidia-smi lists a GPU, else cpu; DEVICE=cpu or DEVICE=cuda decides instead.
device_kind() {
    if [[ -n "${DEVICE:-}" ]]; then
        echo "$DEVICE"
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo cuda
    else
        echo cpu
    fi
}

# training_flags LEARNING_RATE PER_DEVICE_BATCH [PAPER_GLOBAL_BATCH]: the `sicog train` flags every stage
# shares, in TRAIN_FLAGS. Reads ACCU_STEPS, OUTPUT_DIR, DATA_PATH, IMAGE_FOLDER, MODEL_MAX_LENGTH, EPOCHS or
# MAX_STEPS, DEEPSPEED (zero2 | zero3 | a JSON path | none), PRECISION (bf16 | fp16 | fp32; default bf16 on
# a GPU, fp32 on a CPU), DEVICE (see device_kind), SAVE_STEPS, NUM_WORKERS, GRADIENT_CHECKPOINTING (true |
# false), NPROC_PER_NODE, NNODES, REPORT_TO (tracker: tensorboard, wandb, ...; default none) and RUN_NAME
# (the run's name in the tracker; default EXPERIMENT_NAME). Prints the global batch (per-device batch x ACCU_STEPS x processes) and
# warns when it is not the paper's for the stage. Schedule as published: cosine, 3% warm-up, no decay.
training_flags() {
    local device global
    device="$(device_kind)"
    global=$(($2 * ${ACCU_STEPS:-1} * ${NPROC_PER_NODE:-1} * ${NNODES:-1}))
    echo "global batch: $global = $2 per device x ${ACCU_STEPS:-1} accumulation steps x ${NPROC_PER_NODE:-1}" \
         "processes per node x ${NNODES:-1} nodes" >&2
    if [[ -n "${3:-}" && "$global" != "$3" ]]; then
        echo "warning: the paper trains this stage with a global batch of $3, not $global" \
             "(set the per-device batch, ACCU_STEPS, NPROC_PER_NODE and NNODES so that they multiply to $3)" >&2
    fi
    TRAIN_FLAGS=(
        --learning_rate "$1" --per_device_train_batch_size "$2"
        --gradient_accumulation_steps "${ACCU_STEPS:-1}"
        --output_dir "${OUTPUT_DIR:-$SICOG_ROOT/model_weight/$EXPERIMENT_NAME}"
        --data_path "$DATA_PATH" --model_max_length "${MODEL_MAX_LENGTH:-4096}"
        --lr_scheduler_type cosine --warmup_steps 0.03 --weight_decay 0.0
        --logging_steps "${LOGGING_STEPS:-1}" --save_strategy steps --save_steps "${SAVE_STEPS:-500}"
        --save_total_limit "${SAVE_TOTAL_LIMIT:-2}" --dataloader_num_workers "${NUM_WORKERS:-4}"
        --group_by_modality_length True
    )
    if [[ -n "${IMAGE_FOLDER:-}" ]]; then TRAIN_FLAGS+=(--image_folder "$IMAGE_FOLDER"); fi
    if [[ -n "${REPORT_TO:-}" ]]; then TRAIN_FLAGS+=(--report_to "$REPORT_TO"); fi
    if [[ -n "${RUN_NAME:-${EXPERIMENT_NAME:-}}" ]]; then TRAIN_FLAGS+=(--run_name "${RUN_NAME:-$EXPERIMENT_NAME}"); fi
    if [[ -n "${MAX_STEPS:-}" ]]; then
        TRAIN_FLAGS+=(--max_steps "$MAX_STEPS")
    else
        TRAIN_FLAGS+=(--num_train_epochs "${EPOCHS:-1}")
    fi
    case "${DEEPSPEED:-zero2}" in
        none) ;;
        *) TRAIN_FLAGS+=(--deepspeed "${DEEPSPEED:-zero2}"); SICOG_TORCHRUN=1 ;;
    esac
    if [[ "$device" == "cpu" ]]; then TRAIN_FLAGS+=(--use_cpu True); fi
    local precision="${PRECISION:-$([[ "$device" == "cpu" ]] && echo fp32 || echo bf16)}"
    case "$precision" in
        bf16) TRAIN_FLAGS+=(--bf16 True) ;;
        fp16) TRAIN_FLAGS+=(--fp16 True) ;;
        fp32) ;;
        *) echo "error: PRECISION must be bf16, fp16 or fp32 (got ${precision})" >&2; exit 2 ;;
    esac
    if [[ "${GRADIENT_CHECKPOINTING:-true}" == "true" ]]; then TRAIN_FLAGS+=(--gradient_checkpointing True); fi
}

# optional_flags NAME:--flag ...: in OPTIONAL_FLAGS, "--flag value" for every variable NAME that is set.
optional_flags() {
    OPTIONAL_FLAGS=()
    local pair name
    for pair in "$@"; do
        name="${pair%%:*}"
        if [[ -n "${!name:-}" ]]; then OPTIONAL_FLAGS+=("${pair#*:}" "${!name}"); fi
    done
}

# generate_flags TASK: `sicog generate TASK` and its flags from the recap variables, in GENERATE_ARGS.
# Reads MODEL_PATH, DATA_PATH (+ SPLIT: ${DATA_PATH}_${SPLIT}.json), EXPERIMENT_NAME, OUTPUT_DIR,
# IMAGE_FOLDER, PROMPT, NUM_CANDIDATES, TEMPERATURE, TOP_P, BEAMS, MAX_NEW_TOKENS, BATCH_SIZE, SEED,
# AUGMENT_METHODS (one of them per record, as released), AUGMENT_ALL=1 (all of them, in order).
generate_flags() {
    local input="$DATA_PATH"
    if [[ -n "${SPLIT:-}" ]]; then input="${DATA_PATH}_${SPLIT}.json"; fi
    local output_dir="${OUTPUT_DIR:-$(dirname "$input")}"
    optional_flags IMAGE_FOLDER:--image-folder PROMPT:--prompt NUM_CANDIDATES:--num-candidates \
        TEMPERATURE:--temperature TOP_P:--top-p BEAMS:--num-beams MAX_NEW_TOKENS:--max-new-tokens \
        BATCH_SIZE:--batch-size SEED:--seed AUGMENT_METHODS:--corrupt
    GENERATE_ARGS=(generate "$1" --model "$MODEL_PATH" --data "$input"
                   --output "${output_dir}/${EXPERIMENT_NAME}.jsonl" ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"})
    if [[ "${AUGMENT_ALL:-0}" == "1" ]]; then GENERATE_ARGS+=(--corrupt-all); fi
}

# curate_flags TASK: `sicog curate TASK` and its flags from the quality-evaluation variables, in
# CURATE_ARGS. Reads RAW_DATASET, OUTPUT_DIR (default: <RAW_DATASET without extension>_curated),
# MODEL_NAME_OR_PATH, TEMPERATURE, ENCODER_MODEL_NAME_OR_PATH, THRESHOLD, MIN_AGREEMENT (reasoning),
# ENCODER_TRUST_REMOTE_CODE=1, ENCODER_APPEND_EOS=1, ENCODER_MAX_LENGTH, ENCODER_QUERY_PREFIX,
# ENCODER_DTYPE, BATCH_SIZE, SEED.
curate_flags() {
    local stem="${RAW_DATASET%.jsonl}"
    stem="${stem%.json}"
    local pairs=(MODEL_NAME_OR_PATH:--model-name-or-path TEMPERATURE:--temperature ENCODER_MODEL_NAME_OR_PATH:--encoder
                 THRESHOLD:--threshold ENCODER_MAX_LENGTH:--max-length ENCODER_QUERY_PREFIX:--query-prefix
                 ENCODER_DTYPE:--dtype BATCH_SIZE:--batch-size SEED:--seed)
    if [[ "$1" == "reasoning" ]]; then pairs+=(MIN_AGREEMENT:--min-agreement); fi
    optional_flags "${pairs[@]}"
    CURATE_ARGS=(curate "$1" --input "$RAW_DATASET" --output-dir "${OUTPUT_DIR:-${stem}_curated}"
                 ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"})
    if [[ "${ENCODER_TRUST_REMOTE_CODE:-0}" == "1" ]]; then CURATE_ARGS+=(--trust-remote-code); fi
    if [[ "${ENCODER_APPEND_EOS:-0}" == "1" ]]; then CURATE_ARGS+=(--append-eos); fi
}
