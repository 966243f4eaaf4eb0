# Shared by every SICOG wrapper script (source it; do not run it).
# Wrappers: read environment variables, name every missing one, print the resolved command,
# honour --dry-run, then exec `sicog ...` (or torchrun -m sicog ... when distributed).
# Nothing here installs packages or uses absolute paths.

# CDPATH unset for the cd: a cd that finds its folder through CDPATH prints it, and the root would hold it twice.
SICOG_ROOT="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)"
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

# read_distributed_args: DISTRIBUTED_ARGS, the torchrun arguments a cluster sets for the published training scripts
# (`torchrun $DISTRIBUTED_ARGS ...`), read into the variables sicog_exec launches with: --nproc_per_node, --nnodes,
# --node_rank, --master_addr, --master_port ("--name value" or "--name=value", - or _) fill NPROC_PER_NODE, NNODES,
# NODE_RANK, MASTER_ADDR, MASTER_PORT; --standalone is one node, as without MASTER_ADDR. A variable set otherwise, or
# any other argument, stops the script with one line: the run launched would not be the one the cluster asked for.
read_distributed_args() {
    local words=() i=0 name value var
    read -r -d '' -a words <<<"${DISTRIBUTED_ARGS:-}" || true  # every line: the value is often written over several
    DISTRIBUTED_ARGS=""  # read once
    while ((i < ${#words[@]})); do
        name="${words[i]%%=*}"
        if [[ "${words[i]}" == *=* ]]; then
            value="${words[i]#*=}" i=$((i + 1))
        elif [[ "${name//-/_}" == __standalone ]]; then
            i=$((i + 1))
            continue
        else
            value="${words[i + 1]:-}" i=$((i + 2))
        fi
        case "${name//-/_}" in
            __nproc_per_node) var=NPROC_PER_NODE ;;
            __nnodes) var=NNODES ;;
            __node_rank) var=NODE_RANK ;;
            __master_addr) var=MASTER_ADDR ;;
            __master_port) var=MASTER_PORT ;;
            *) echo "error: DISTRIBUTED_ARGS: $name is not read by these scripts; set NPROC_PER_NODE, NNODES," \
                    "NODE_RANK, MASTER_ADDR and MASTER_PORT instead" >&2
               exit 2 ;;
        esac
        if [[ -n "${!var:-}" && "${!var}" != "$value" ]]; then
            echo "error: DISTRIBUTED_ARGS says $name $value but $var is ${!var}; set one of them" >&2
            exit 2
        fi
        printf -v "$var" '%s' "$value"
    done
}

# require_vars NAME...: fail once, listing every variable that is unset or empty.
require_vars() {
    read_distributed_args
    local name missing=() names=("$@") nodes="${NNODES:-1}"
    # On several nodes sicog_exec needs these too: named now, with the script's own.
    if [[ "$nodes" =~ ^[0-9]+$ ]] && ((10#$nodes > 1)); then names+=(NODE_RANK MASTER_ADDR); fi
    for name in "${names[@]}"; do
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

# launch_flags: LAUNCH_FLAGS, torchrun's arguments for NPROC_PER_NODE processes on each of NNODES nodes. One node:
# --standalone (a free port) unless MASTER_ADDR is set. Several nodes: NODE_RANK (checked) and MASTER_ADDR are
# required; MASTER_PORT defaults to 29500.
launch_flags() {
    LAUNCH_FLAGS=(--nproc_per_node "${NPROC_PER_NODE:-1}")
    if [[ "${NNODES:-1}" != "1" ]]; then
        require_vars NODE_RANK MASTER_ADDR
        if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || ((10#$NODE_RANK >= NNODES)); then
            echo "error: NODE_RANK must be a whole number from 0 to $((NNODES - 1)) (got '$NODE_RANK')" >&2
            exit 2
        fi
        LAUNCH_FLAGS+=(--nnodes "$NNODES" --node_rank "$NODE_RANK")
    elif [[ -n "${MASTER_ADDR:-}" ]]; then
        LAUNCH_FLAGS+=(--nnodes 1 --node_rank 0)
    else
        LAUNCH_FLAGS+=(--standalone)
        return
    fi
    LAUNCH_FLAGS+=(--master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
}

# sicog_exec ARGS...: run `python -m sicog ARGS...`, under torchrun when NPROC_PER_NODE or NNODES > 1 (through
# sicog.launch: torchrun's arguments (launch_flags), a failure in one line after the processes' errors, their exit
# status). One process that a training script runs under DeepSpeed
# (SICOG_TORCHRUN=1) gets the rank variables torchrun would set (without them DeepSpeed looks for MPI and mpi4py),
# but not torchrun itself, whose agent turns the command's one-line error and exit 2 into a traceback and exit 1.
# The interpreter is SICOG_PYTHON, else sicog_python's choice.
sicog_exec() {
    local python cmd
    resolve_process_counts
    python="$(sicog_python)"
    if [[ "${NPROC_PER_NODE:-1}" == "1" && "${NNODES:-1}" == "1" && "${SICOG_TORCHRUN:-0}" == "1" ]]; then
        cmd=(env RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 LOCAL_WORLD_SIZE=1 MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
             MASTER_PORT="${MASTER_PORT:-$(free_port "$python")}" "$python" -m sicog "$@")
    elif [[ "${NPROC_PER_NODE:-1}" != "1" || "${NNODES:-1}" != "1" ]]; then
        launch_flags
        cmd=("$python" -m sicog.launch "${LAUNCH_FLAGS[@]}" -m sicog "$@")
    else
        cmd=("$python" -m sicog "$@")
    fi
    printf '%q ' "${cmd[@]}"
    printf '\n'
    if ((SICOG_DRY_RUN)); then exit 0; fi
    exec "${cmd[@]}"
}

# pretrained NAME: the folder of a downloaded checkpoint: model_weight/NAME in this checkout, else, when only it
# exists, NAME in the folder the seed README tells users to put the downloads in (PUBLISHED_WEIGHTS_DIR, by
# default the model_weight folder at the file system's root).
pretrained() {
    local ours="$SICOG_ROOT/model_weight/$1" published="${PUBLISHED_WEIGHTS_DIR:-/model_weight}/$1"
    if [[ ! -e "$ours" && -e "$published" ]]; then echo "$published"; else echo "$ours"; fi
}

# free_port PYTHON: a TCP port on the loopback interface that no process listens on now.
free_port() {
    "$1" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# positive_number NAME VALUE: VALUE as a whole number above 0 (leading zeros read as decimal), on stdout; anything
# else stops with one line naming NAME (call it as x="$(positive_number ...)" || exit 2: the exit is the subshell's).
positive_number() {
    if [[ "$2" =~ ^[0-9]+$ ]] && ((10#$2 > 0)); then
        echo "$((10#$2))"
    else
        echo "error: $1 must be a whole number above 0 (got '$2')" >&2
        exit 2
    fi
}

# A decimal number as Python's float() reads one, without a sign: 1, 0.5, 2., .5, 2e-5.
UNSIGNED_NUMBER='([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?'

# positive_decimal NAME VALUE: VALUE as a number above 0, whole, with a decimal point or an exponent (1, 0.5, 2.,
# 2e-5), on stdout; anything else stops with one line naming NAME (call it as positive_number is called).
positive_decimal() {
    if [[ "$2" =~ ^${UNSIGNED_NUMBER}$ && "${2%%[eE]*}" =~ [1-9] ]]; then
        echo "$2"
    else
        echo "error: $1 must be a number above 0 (got '$2')" >&2
        exit 2
    fi
}

# check_numbers NAME...: stop with one line naming the first variable NAME that is set to something other than a
# number (0.7, -1, 2e-5); the command checks its range. A typo reached the command as text, and its usage.
check_numbers() {
    local name
    for name in "$@"; do
        if [[ -n "${!name:-}" && ! "${!name}" =~ ^[-+]?${UNSIGNED_NUMBER}$ ]]; then
            echo "error: $name must be a number (got '${!name}')" >&2
            exit 2
        fi
    done
}

# resolve_process_counts: NPROC_PER_NODE and NNODES as numbers (default 1 each). torchrun's own spellings gpu and
# auto for NPROC_PER_NODE become the number of GPUs this process sees, as torchrun counts them: those
# CUDA_VISIBLE_DEVICES names when it is set, else those nvidia-smi lists (the scripts multiply it into the global
# batch); anything else that is not a positive whole number stops the script with one line.
resolve_process_counts() {
    read_distributed_args
    local value="${NPROC_PER_NODE:-1}" gpus
    if [[ "$value" == "gpu" || "$value" == "auto" ]]; then
        if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
            gpus=0
            for _ in ${CUDA_VISIBLE_DEVICES//,/ }; do gpus=$((gpus + 1)); done
        else
            gpus="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
        fi
        if ((gpus == 0)); then
            echo "error: NPROC_PER_NODE=$value: no GPU found (CUDA_VISIBLE_DEVICES names none, or nvidia-smi -L lists" \
                 "none); set the number of processes" >&2
            exit 2
        fi
        NPROC_PER_NODE="$gpus"
    elif [[ "$value" =~ ^[0-9]+$ ]] && ((10#$value > 0)); then
        NPROC_PER_NODE="$((10#$value))"
    else
        echo "error: NPROC_PER_NODE must be a number of processes, gpu or auto (got $value)" >&2
        exit 2
    fi
    NNODES="$(positive_number NNODES "${NNODES:-1}")" || exit 2
}

# device_kind: cuda when nvidia-smi lists a GPU, else cpu; DEVICE=cpu or DEVICE=cuda (any case) decides instead.
device_kind() {
    if [[ -n "${DEVICE:-}" ]]; then
        case "${DEVICE,,}" in
            cpu | cuda) echo "${DEVICE,,}" ;;
            *) echo "error: DEVICE must be cpu or cuda (got $DEVICE)" >&2; exit 2 ;;
        esac
    elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo cuda
    else
        echo cpu
    fi
}

# training_flags --learning-rate LR --batch PER_DEVICE --folder NAME --save-steps N --save-total-limit N
#                [--paper-batch N] [--scheduler NAME --warmup RATIO]:
# the `sicog train` flags every stage shares, in TRAIN_FLAGS. Each script gives its published settings: the output
# folder model_weight/$EXPERIMENT_NAME/NAME (the published CKPT; OUTPUT_DIR replaces the whole path), the checkpoint
# cadence (the variables SAVE_STEPS and SAVE_TOTAL_LIMIT override it), the paper's global batch (warned about when
# the run's differs) and the schedule (default: the published SFT one, cosine with 3% warm-up).
# Reads ACCU_STEPS, OUTPUT_DIR, DATA_PATH, IMAGE_FOLDER, MODEL_MAX_LENGTH, EPOCHS or MAX_STEPS, DEEPSPEED (zero2 |
# zero3 | a JSON path | none), PRECISION (bf16 | fp16 | fp32; default bf16 on a GPU, fp32 on a CPU), DEVICE (see
# device_kind), NUM_WORKERS, GRADIENT_CHECKPOINTING (true | false), NPROC_PER_NODE, NNODES, REPORT_TO (tracker:
# tensorboard, wandb, ...; default none) and RUN_NAME (the run's name in the tracker; default EXPERIMENT_NAME).
# Prints the global batch (per-device batch x ACCU_STEPS x processes). As published: no weight decay, and the
# last partial batch of an epoch is dropped (every published stage, and LLaVA-NeXT's DPO, pass
# --dataloader_drop_last True).
training_flags() {
    local lr="" batch="" folder="" save_steps="" save_limit="" paper="" scheduler=cosine warmup=0.03
    while (($#)); do
        case "$1" in
            --learning-rate) lr="$2" ;;
            --batch) batch="$2" ;;
            --folder) folder="$2" ;;
            --save-steps) save_steps="$2" ;;
            --save-total-limit) save_limit="$2" ;;
            --paper-batch) paper="$2" ;;
            --scheduler) scheduler="$2" ;;
            --warmup) warmup="$2" ;;
            *) echo "training_flags: unknown option $1" >&2; exit 2 ;;
        esac
        shift 2
    done
    local device global accumulation
    resolve_process_counts
    batch="$(positive_number "the per-device batch (FINETUNE_BATCH, PRETRAIN_BATCH or DPO_BATCH)" "$batch")" || exit 2
    lr="$(positive_decimal "the learning rate (FINETUNE_LEARNING_RATE, PRETRAIN_LEARNING_RATE or DPO_LEARNING_RATE)" \
          "$lr")" || exit 2
    accumulation="$(positive_number ACCU_STEPS "${ACCU_STEPS:-1}")" || exit 2
    device="$(device_kind)" || exit 2
    global=$((batch * accumulation * NPROC_PER_NODE * NNODES))
    echo "global batch: $global = $batch per device x $accumulation accumulation steps x $NPROC_PER_NODE" \
         "processes per node x $NNODES nodes" >&2
    if [[ -n "$paper" && "$global" != "$paper" ]]; then
        echo "warning: the paper trains this stage with a global batch of $paper, not $global" \
             "(set the per-device batch, ACCU_STEPS, NPROC_PER_NODE and NNODES so that they multiply to $paper)" >&2
    fi
    TRAIN_FLAGS=(
        --learning_rate "$lr" --per_device_train_batch_size "$batch"
        --gradient_accumulation_steps "$accumulation"
        --output_dir "${OUTPUT_DIR:-$SICOG_ROOT/model_weight/$EXPERIMENT_NAME/$folder}"
        --data_path "$DATA_PATH" --model_max_length "${MODEL_MAX_LENGTH:-4096}"
        --lr_scheduler_type "$scheduler" --warmup_steps "$warmup" --weight_decay 0.0
        --logging_steps "${LOGGING_STEPS:-1}" --save_strategy steps --save_steps "${SAVE_STEPS:-$save_steps}"
        --save_total_limit "${SAVE_TOTAL_LIMIT:-$save_limit}" --dataloader_num_workers "${NUM_WORKERS:-4}"
        --dataloader_drop_last True
    )
    if [[ -n "${IMAGE_FOLDER:-}" ]]; then TRAIN_FLAGS+=(--image_folder "$IMAGE_FOLDER"); fi
    if [[ -n "${REPORT_TO:-}" ]]; then TRAIN_FLAGS+=(--report_to "$REPORT_TO"); fi
    if [[ -n "${RUN_NAME:-${EXPERIMENT_NAME:-}}" ]]; then TRAIN_FLAGS+=(--run_name "${RUN_NAME:-$EXPERIMENT_NAME}"); fi
    # Checked here as the other counts are: EPOCHS=0 trained no step and saved the starting weights as the run's, and
    # MAX_STEPS=0 handed the length back to the epochs.
    local length
    if [[ -n "${MAX_STEPS:-}" ]]; then
        length="$(positive_number MAX_STEPS "$MAX_STEPS")" || exit 2
        TRAIN_FLAGS+=(--max_steps "$length")
    else
        length="$(positive_decimal EPOCHS "${EPOCHS:-1}")" || exit 2
        TRAIN_FLAGS+=(--num_train_epochs "$length")
    fi
    case "${DEEPSPEED:-zero2}" in
        none) ;;
        zero2 | zero3 | *.json) TRAIN_FLAGS+=(--deepspeed "${DEEPSPEED:-zero2}"); SICOG_TORCHRUN=1 ;;
        *) echo "error: DEEPSPEED must be zero2, zero3, a DeepSpeed .json config or none (got $DEEPSPEED)" >&2; exit 2 ;;
    esac
    if [[ "$device" == "cpu" ]]; then TRAIN_FLAGS+=(--use_cpu True); fi
    local precision="${PRECISION:-$([[ "$device" == "cpu" ]] && echo fp32 || echo bf16)}"
    case "$precision" in
        bf16) TRAIN_FLAGS+=(--bf16 True) ;;
        fp16)
            if [[ "$device" == "cpu" ]]; then  # torch's CPU kernels (and DeepSpeed on a CPU) have no fp16 training
                echo "error: PRECISION=fp16 needs a GPU; on a CPU use bf16 or fp32" >&2
                exit 2
            fi
            TRAIN_FLAGS+=(--fp16 True) ;;
        fp32) ;;
        *) echo "error: PRECISION must be bf16, fp16 or fp32 (got ${precision})" >&2; exit 2 ;;
    esac
    if switched_on GRADIENT_CHECKPOINTING true; then TRAIN_FLAGS+=(--gradient_checkpointing True); fi
}

# switched_on NAME DEFAULT: whether the switch NAME (DEFAULT when unset or empty) is on: true, True, TRUE or 1;
# false, False, FALSE or 0 is off; anything else stops the script with one line naming NAME.
switched_on() {
    local value="${!1:-$2}"
    case "$value" in
        true | True | TRUE | 1) return 0 ;;
        false | False | FALSE | 0) return 1 ;;
        *) echo "error: $1 must be true or false (got $value)" >&2; exit 2 ;;
    esac
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
# Reads MODEL_PATH, DATA_PATH (+ SPLIT for reasoning: ${DATA_PATH}_${SPLIT}.json, as the published reasoning script
# reads it, into ${EXPERIMENT_NAME}_${SPLIT}.jsonl; its caption script reads no SPLIT, so one exported for a
# reasoning job does not redirect a caption job), EXPERIMENT_NAME, OUTPUT_DIR,
# IMAGE_FOLDER, PROMPT, NUM_CANDIDATES, TEMPERATURE, TOP_P, BEAMS, MAX_NEW_TOKENS, BATCH_SIZE, SEED,
# AUGMENT_METHODS (one of them per record, as released), AUGMENT_ALL=1 or true (all of them, in order).
# TEMPERATURE and TOP_P are always passed, as the published recap scripts pass them: left unset they are
# `sicog generate`'s own defaults (the paper's 0.7 and 0.9, read from sicog/generate/settings.py), never the
# checkpoint's generation_config.json (top_p 0.8 on Qwen2-7B-Instruct).
generate_flags() {
    local python defaults default_temperature default_top_p
    python="$(sicog_python)"
    defaults="$("$python" -c 'from sicog.generate.settings import SamplingSettings as S; print(S.temperature, S.top_p)')" \
        || { echo "error: $python cannot import sicog (activate its environment or set SICOG_PYTHON)" >&2; exit 2; }
    read -r default_temperature default_top_p <<<"$defaults"
    # Local: optional_flags below reads them by name; the caller's environment is left as it was.
    local TEMPERATURE="${TEMPERATURE:-$default_temperature}" TOP_P="${TOP_P:-$default_top_p}"
    check_numbers TEMPERATURE TOP_P
    if [[ -n "${BEAMS:-}" ]]; then positive_number BEAMS "$BEAMS" >/dev/null || exit 2; fi
    local input="$DATA_PATH" name="$EXPERIMENT_NAME"
    # One output per split, as the published script names its file: the README runs the splits one at a time.
    if [[ "$1" == "reasoning" && -n "${SPLIT:-}" ]]; then input="${DATA_PATH}_${SPLIT}.json" name+="_${SPLIT}"; fi
    # Of several comma-separated inputs (`sicog generate --data a.jsonl,b.jsonl`), the first one's folder; a path that
    # names a file as a whole is that one input, commas in its folder's name included (as sicog reads it).
    local first="$input"
    if [[ ! -e "$input" ]]; then first="${input%%,*}"; fi
    local output_dir="${OUTPUT_DIR:-$(dirname "$first")}"
    optional_flags IMAGE_FOLDER:--image-folder PROMPT:--prompt NUM_CANDIDATES:--num-candidates \
        TEMPERATURE:--temperature TOP_P:--top-p BEAMS:--num-beams MAX_NEW_TOKENS:--max-new-tokens \
        BATCH_SIZE:--batch-size SEED:--seed AUGMENT_METHODS:--corrupt
    GENERATE_ARGS=(generate "$1" --model "$MODEL_PATH" --data "$input"
                   --output "${output_dir}/${name}.jsonl" ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"})
    if switched_on AUGMENT_ALL false; then GENERATE_ARGS+=(--corrupt-all); fi
}

# curate_flags TASK: `sicog curate TASK` and its flags from the quality-evaluation variables, in CURATE_ARGS, but
# those that say how the encoder embeds, which go to ENCODER_ARGS (`sicog curate` and embed_file both take them);
# CURATE_OUTPUT: the output folder.
# Reads RAW_DATASET, OUTPUT_DIR (default: <RAW_DATASET without extension>_curated), MODEL_NAME_OR_PATH,
# TEMPERATURE, THRESHOLD, MIN_AGREEMENT (reasoning), SEED, and for the encoder ENCODER_MODEL_NAME_OR_PATH,
# ENCODER_TRUST_REMOTE_CODE and ENCODER_APPEND_EOS (switches: true or 1 to turn on), ENCODER_MAX_LENGTH,
# ENCODER_QUERY_PREFIX, ENCODER_PADDING_SIDE, ENCODER_DTYPE, BATCH_SIZE.
curate_flags() {
    local stem="${RAW_DATASET%.jsonl}"
    CURATE_OUTPUT="${OUTPUT_DIR:-${stem%.json}_curated}"
    local pairs=(MODEL_NAME_OR_PATH:--model-name-or-path TEMPERATURE:--temperature THRESHOLD:--threshold SEED:--seed)
    if [[ "$1" == "reasoning" ]]; then pairs+=(MIN_AGREEMENT:--min-agreement); fi
    check_numbers TEMPERATURE THRESHOLD MIN_AGREEMENT
    optional_flags "${pairs[@]}"
    CURATE_ARGS=(curate "$1" --input "$RAW_DATASET" --output-dir "$CURATE_OUTPUT"
                 ${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"})
    optional_flags ENCODER_MODEL_NAME_OR_PATH:--encoder ENCODER_MAX_LENGTH:--max-length \
        ENCODER_QUERY_PREFIX:--query-prefix ENCODER_PADDING_SIDE:--padding-side ENCODER_DTYPE:--dtype \
        BATCH_SIZE:--batch-size
    ENCODER_ARGS=(${OPTIONAL_FLAGS[@]+"${OPTIONAL_FLAGS[@]}"})
    if switched_on ENCODER_TRUST_REMOTE_CODE false; then ENCODER_ARGS+=(--trust-remote-code); fi
    if switched_on ENCODER_APPEND_EOS false; then ENCODER_ARGS+=(--append-eos); fi
}

# run_curation TASK: curation by the quality-evaluation variables (curate_flags). With ENCODER_PYTHON, the Python of
# an environment the encoder loads in (NV-Embed-v2's code needs transformers 4.42, which this package does not run
# with), in three commands as docs/curation.md#nv-embed-v2 gives them: the texts curation compares (sicog curate
# texts, into <output folder>.texts.jsonl: each output its own, with its own encoder settings), their embeddings
# made by that Python from this checkout (python -m sicog.curate.embed_file, into <output folder>.emb.npy; with
# NPROC_PER_NODE or NNODES above 1, by the ranks of its torchrun, launch_flags), then the scoring here
# (--embeddings). The ENCODER_* variables set the encoder; the script's arguments go to the scoring alone. On
# several nodes the texts and the scoring are the first node's (NODE_RANK 0): the other nodes' ranks wait for it at
# torchrun's rendezvous, and their script ends after the embedding. Each command is printed; --dry-run runs none.
run_curation() {
    curate_flags "$1"
    if [[ -z "${ENCODER_PYTHON:-}" ]]; then
        sicog_exec "${CURATE_ARGS[@]}" ${ENCODER_ARGS[@]+"${ENCODER_ARGS[@]}"} ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
    fi
    require_vars ENCODER_MODEL_NAME_OR_PATH
    resolve_process_counts
    local stem="${CURATE_OUTPUT%/}" python ranks=() first_node=1
    python="$(sicog_python)"
    if ((NPROC_PER_NODE > 1 || NNODES > 1)); then
        launch_flags
        ranks=(-m torch.distributed.run "${LAUNCH_FLAGS[@]}")
    fi
    if ((NNODES > 1 && 10#${NODE_RANK:-0} > 0)); then first_node=0; fi
    if ((first_node)); then
        run_printed "$python" -m sicog curate texts "$1" --input "$RAW_DATASET" --output "${stem}.texts.jsonl"
    fi
    run_printed env PYTHONPATH="$SICOG_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$ENCODER_PYTHON" ${ranks[@]+"${ranks[@]}"} \
        -m sicog.curate.embed_file --texts "${stem}.texts.jsonl" --output "${stem}.emb.npy" "${ENCODER_ARGS[@]}"
    if ((!first_node)); then exit 0; fi
    # The embeddings are made: scoring is one process's work.
    NPROC_PER_NODE=1 NNODES=1 sicog_exec "${CURATE_ARGS[@]}" --embeddings "${stem}.emb.npy" \
        ${SICOG_ARGS[@]+"${SICOG_ARGS[@]}"}
}

# run_printed COMMAND...: print the command, then run it (not with --dry-run); a failure stops the script.
run_printed() {
    printf '%q ' "$@"
    printf '\n'
    if ((SICOG_DRY_RUN)); then return 0; fi
    "$@"
}
