"""The published training scripts, driven by the README's environment variables (dry runs)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from sicog.cycle.flags import TRAIN_SCHEDULE
from sicog.train.arguments import DataArguments
from sicog.train.run import PAPER_GLOBAL_BATCH

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "uhdv1-finetune-qwen-stage0-warmup.sh": ("0", ["EXPERIMENT_NAME", "DATA_PATH", "PREV_STAGE_CHECKPOINT"]),
    "uhdv1-pretrain-qwen-stage1-align.sh": ("1", ["EXPERIMENT_NAME", "DATA_PATH"]),
    "uhdv1-finetune-qwen-stage15-sft.sh": ("1.5", ["EXPERIMENT_NAME", "DATA_PATH", "MM_PROJECTOR_CHECKPOINT"]),
    "uhdv1-finetune-qwen-stage2-sft.sh": ("2", ["EXPERIMENT_NAME", "DATA_PATH", "PREV_STAGE_CHECKPOINT"]),
}
# What each published script passes (SICOG_REFERENCE_CODE/training_scripts; checked below when it is there): the
# output folder under model_weight/$EXPERIMENT_NAME, the checkpoint cadence, and whether batches are grouped.
PUBLISHED = {
    "uhdv1-finetune-qwen-stage0-warmup.sh": ("llava-qwen-uhd-stage0", "2000", "2", True),
    "uhdv1-pretrain-qwen-stage1-align.sh": ("checkpoints_new/llava-qwen-uhd-stage1", "24000", "1", False),
    "uhdv1-finetune-qwen-stage15-sft.sh": ("llava-qwen-uhd-stage15", "4000", "2", True),
    "uhdv1-finetune-qwen-stage2-sft.sh": ("llava-qwen-uhd-stage2", "4000", "2", True),
}
README_ENV = {
    "PRETRAIN_LEARNING_RATE": "2e-4", "FINETUNE_LEARNING_RATE": "2e-5", "PRETRAIN_BATCH": "8", "FINETUNE_BATCH": "4",
    "ACCU_STEPS": "2", "EXPERIMENT_NAME": "exp", "DATA_PATH": "data.jsonl", "PREV_STAGE_CHECKPOINT": "ckpt",
    "MM_PROJECTOR_CHECKPOINT": "proj", "LLM_CKPT_DIR": "qwen",
}


def dry_run(script, env, *args, cwd=ROOT, path=None):
    """``path``: how the script is named on the command line (default: its absolute path)."""
    ours = (*README_ENV, "FINETUNE_RANK_BATCH", "OUTPUT_DIR", "REPORT_TO", "RUN_NAME", "SAVE_STEPS",
            "SAVE_TOTAL_LIMIT", "NPROC_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "CUDA_VISIBLE_DEVICES",
            "CDPATH", "DISTRIBUTED_ARGS", "MASTER_PORT")
    clean = {k: v for k, v in os.environ.items() if k not in ours}
    return subprocess.run(["bash", path or str(ROOT / "training_scripts" / script), "--dry-run", *args], cwd=cwd,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def parsed(stdout):
    words = shlex.split(stdout.strip().splitlines()[-1])
    return words, {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_an_exported_cdpath_leaves_the_checkout_folder_as_it_is():
    """A cd that finds its folder through CDPATH prints it: the checkout's folder must not take that in."""
    script = "uhdv1-finetune-qwen-stage2-sft.sh"
    result = dry_run(script, {**README_ENV, "CDPATH": "."}, path=f"training_scripts/{script}")
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout)[1]["--output_dir"] == str(ROOT / "model_weight" / "exp" / PUBLISHED[script][0])


@pytest.mark.parametrize("script", SCRIPTS)
def test_readme_variables_resolve(script, tmp_path):
    stage, _ = SCRIPTS[script]
    result = dry_run(script, README_ENV, "--save_steps", "7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    words, flags = parsed(result.stdout)
    assert words[words.index("train") + 1 :][:2] == ["--stage", stage]
    assert flags["--gradient_accumulation_steps"] == "2" and flags["--data_path"] == "data.jsonl"
    assert flags["--learning_rate"] == ("2e-4" if stage == "1" else "2e-5")
    assert flags["--per_device_train_batch_size"] == ("8" if stage == "1" else "4")
    assert flags["--output_dir"] == str(ROOT / "model_weight" / "exp" / PUBLISHED[script][0])
    assert words[-2:] == ["--save_steps", "7"]
    if stage == "1.5":
        assert flags["--projector"] == "proj" and flags["--language_model"] == "qwen"
    if stage in ("0", "2"):
        assert flags["--model_name_or_path"] == "ckpt"


@pytest.mark.parametrize("script", SCRIPTS)
def test_stage_settings_are_the_published_scripts(script, tmp_path):
    """Each stage writes to its own folder of the experiment (one EXPERIMENT_NAME for the whole chain never makes a
    stage resume another's checkpoints), saves at the published cadence, drops the last partial batch, and groups
    batches by modality and length only where the published script does (not in stage 1)."""
    folder, save_steps, save_limit, grouped = PUBLISHED[script]
    words, flags = parsed(dry_run(script, README_ENV, cwd=tmp_path).stdout)
    assert flags["--output_dir"] == str(ROOT / "model_weight" / "exp" / folder)
    assert (flags["--save_steps"], flags["--save_total_limit"]) == (save_steps, save_limit)
    assert flags["--dataloader_drop_last"] == "True"
    assert (flags.get("--group_by_modality_length") == "True") == grouped
    assert (flags["--lr_scheduler_type"], flags["--warmup_steps"]) == ("cosine", "0.03")
    # The global batch the script checks against, and its length, are sicog train's.
    paper = re.search(r"--paper-batch (\d+)", (ROOT / "training_scripts" / script).read_text()).group(1)
    assert int(paper) == PAPER_GLOBAL_BATCH[flags["--stage"]]
    assert flags["--model_max_length"] == str(DataArguments.model_max_length)
    # The cycle's training steps get the same schedule.
    assert {name: flags[f"--{name}"] for name in ("lr_scheduler_type", "warmup_steps", "weight_decay")} == {
        name: TRAIN_SCHEDULE[name] for name in ("lr_scheduler_type", "warmup_steps", "weight_decay")}
    env = {**README_ENV, "SAVE_STEPS": "9", "SAVE_TOTAL_LIMIT": "3", "OUTPUT_DIR": str(tmp_path / "out")}
    _, flags = parsed(dry_run(script, env, cwd=tmp_path).stdout)
    assert (flags["--save_steps"], flags["--save_total_limit"]) == ("9", "3")
    assert flags["--output_dir"] == str(tmp_path / "out")


@pytest.mark.skipif(not (Path(os.environ.get("SICOG_REFERENCE_CODE") or "/nonexistent") / "training_scripts").is_dir(),
                    reason="published SICOG code not found: set SICOG_REFERENCE_CODE to the folder holding llava/")
@pytest.mark.parametrize("script", SCRIPTS)
def test_published_table_matches_the_published_scripts(script):
    text = (Path(os.environ["SICOG_REFERENCE_CODE"]) / "training_scripts" / script).read_text()
    ckpt = re.search(r"^CKPT=(\S+)", text, re.M).group(1)
    output = re.search(r"^OUTPUT_DIR=/model_weight/\$EXPERIMENT_NAME/(\S+)", text, re.M).group(1)
    published = (output.replace("$CKPT", ckpt), re.search(r"--save_steps (\d+)", text).group(1),
                 re.search(r"--save_total_limit (\d+)", text).group(1), "--group_by_modality_length True" in text)
    assert published == PUBLISHED[script]
    assert "--dataloader_drop_last True" in text


def test_finetune_rank_batch_is_an_alias():
    env = {k: v for k, v in README_ENV.items() if k != "FINETUNE_BATCH"}
    _, flags = parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**env, "FINETUNE_RANK_BATCH": "3"}).stdout)
    assert flags["--per_device_train_batch_size"] == "3"


def test_tracker_variables_reach_train():
    _, default = parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", README_ENV).stdout)
    assert "--report_to" not in default and default["--run_name"] == README_ENV["EXPERIMENT_NAME"]
    _, flags = parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh",
                              {**README_ENV, "REPORT_TO": "tensorboard", "RUN_NAME": "sft-a"}).stdout)
    assert (flags["--report_to"], flags["--run_name"]) == ("tensorboard", "sft-a")


def test_multi_node_variables_launch_torchrun():
    env = {**README_ENV, "NPROC_PER_NODE": "8", "NNODES": "4", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "12345", "DEEPSPEED": "zero3"}
    words, flags = parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env).stdout)
    assert "sicog.launch" in words
    launch = (flags["--nproc_per_node"], flags["--nnodes"], flags["--node_rank"], flags["--master_addr"],
              flags["--master_port"])
    assert launch == ("8", "4", "1", "10.0.0.1", "12345")
    assert flags["--deepspeed"] == "zero3"
    env.pop("MASTER_PORT")  # torchrun's own default, as the published scripts' users expect
    assert parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env).stdout)[1]["--master_port"] == "29500"


@pytest.mark.parametrize("spelling", ["--nproc_per_node 8 --nnodes 4 --node_rank 1 --master_addr 10.0.0.1 "
                                      "--master_port 12345",
                                      "--nproc-per-node=8 --nnodes=4 --node-rank=1 --master-addr=10.0.0.1 "
                                      "--master-port=12345",
                                      "\n    --nproc_per_node 8\n    --nnodes 4 --node_rank 1"
                                      "\n    --master_addr 10.0.0.1\n    --master_port 12345\n"])
def test_the_published_distributed_args_launch_as_the_variables_do(spelling):
    """The published scripts run `torchrun $DISTRIBUTED_ARGS`: a cluster that sets it gets the same launch."""
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "DISTRIBUTED_ARGS": spelling})
    assert result.returncode == 0, result.stderr
    words, flags = parsed(result.stdout)
    launch = (flags["--nproc_per_node"], flags["--nnodes"], flags["--node_rank"], flags["--master_addr"],
              flags["--master_port"])
    assert "sicog.launch" in words and launch == ("8", "4", "1", "10.0.0.1", "12345")
    assert "global batch: 256 = 4 per device x 2 accumulation steps x 8 processes per node x 4 nodes" in result.stderr


@pytest.mark.parametrize(("extra", "says"), [
    ({"DISTRIBUTED_ARGS": "--nproc_per_node 8\n--rdzv_backend c10d"}, "DISTRIBUTED_ARGS: --rdzv_backend is not read"),
    ({"DISTRIBUTED_ARGS": "--nproc_per_node 8", "NPROC_PER_NODE": "4"},
     "DISTRIBUTED_ARGS says --nproc_per_node 8 but NPROC_PER_NODE is 4"),
])
def test_distributed_args_the_scripts_cannot_follow_stop_with_one_line(extra, says):
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, **extra})
    assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_variables_are_all_named(script):
    result = dry_run(script, {})
    assert result.returncode == 2
    for name in SCRIPTS[script][1]:
        assert name in result.stderr


@pytest.mark.parametrize("script", ["uhdv1-pretrain-qwen-stage1-align.sh", "uhdv1-finetune-qwen-stage15-sft.sh"])
def test_downloads_where_the_seed_readme_puts_them_are_found(script, tmp_path):
    """The seed README has users download CLIP and Qwen2 into /model_weight/: used when the checkout's model_weight/
    lacks them, the checkout's own wins."""
    env = {k: v for k, v in README_ENV.items() if k not in ("LLM_CKPT_DIR", "CLIP_CKPT_DIR")}
    env["PUBLISHED_WEIGHTS_DIR"] = str(tmp_path)
    names = ("clip-vit-large-patch14-336", "Qwen2-7B-Instruct")
    ours = [ROOT / "model_weight" / name for name in names]
    _, flags = parsed(dry_run(script, env).stdout)
    assert [flags["--vision_tower"], flags["--language_model"]] == [str(path) for path in ours]
    for name in names:
        (tmp_path / name).mkdir()
    _, flags = parsed(dry_run(script, env).stdout)
    # a checkout holding its own downloads keeps them
    assert [flags["--vision_tower"], flags["--language_model"]] == [
        str(path if path.exists() else tmp_path / path.name) for path in ours]


def test_the_readme_typo_path_works():
    result = subprocess.run(["bash", "training_scritps/uhdv1-finetune-qwen-stage15-sft.sh", "--dry-run"], cwd=ROOT,
                            env={**os.environ, **README_ENV}, capture_output=True, text=True)
    assert result.returncode == 0 and "--stage 1.5" in result.stdout


def test_scripts_install_nothing_and_hold_no_absolute_paths():
    files = list((ROOT / "training_scripts").glob("*.sh")) + [ROOT / "scripts" / "_common.sh"]
    for path in files:
        text = path.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        assert not re.search(r"pip install|apt-get|conda ", code), path
        assert not re.search(r"(^|[\s\"'=])/(?!dev/null)[A-Za-z]", code), path


def test_extra_arguments_expand_on_the_bash_of_older_clusters():
    """Before bash 4.4, `set -u` takes an empty array's "${A[@]}" for an unbound variable: a script run without
    extra arguments stopped on CentOS 7's bash 4.2. The arguments a user may leave out expand only when given."""
    for path in [*ROOT.glob("*_scripts/*.sh"), *ROOT.glob("training_scritps/*.sh"), *ROOT.glob("*/scripts/*.sh"),
                 *ROOT.glob("training_data_annotation/*.sh"), ROOT / "scripts" / "_common.sh"]:
        for name in ("SICOG_ARGS", "OPTIONAL_FLAGS"):
            expansion = f'"${{{name}[@]}}"'
            assert expansion not in path.read_text().replace(f"+{expansion}", ""), (path, name)


def test_one_process_with_deepspeed_starts_with_the_rank_variables_and_without_torchrun():
    """torchrun's agent would turn the command's one-line error (exit 2) into a traceback and exit 1."""
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "DEVICE": "cpu"})
    words, flags = parsed(result.stdout)
    assert "sicog.launch" not in words and words[0] == "env"
    assert {"RANK=0", "LOCAL_RANK=0", "WORLD_SIZE=1", "LOCAL_WORLD_SIZE=1", "MASTER_ADDR=127.0.0.1"} <= set(words)
    assert int(next(w for w in words if w.startswith("MASTER_PORT=")).split("=")[1]) > 0
    assert words[words.index("-m") + 1] == "sicog"
    assert flags["--use_cpu"] == "True" and "--bf16" not in words  # fp32 on a CPU unless PRECISION says otherwise
    words, _ = parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "DEEPSPEED": "none"}).stdout)
    assert "sicog.launch" not in words


@pytest.mark.parametrize(("env", "global_batch", "warned"), [
    ({}, 8, True),  # the README's ACCU_STEPS=2 on one process
    ({"NPROC_PER_NODE": "8", "NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1", "ACCU_STEPS": "1"},
     128, False),
    ({"NPROC_PER_NODE": "8", "NNODES": "4", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"}, 256, True),
])
def test_global_batch_is_printed_and_checked_against_the_paper(env, global_batch, warned):
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, **env})
    assert result.returncode == 0 and f"global batch: {global_batch} = 4 per device" in result.stderr
    assert ("the paper trains this stage with a global batch of 128" in result.stderr) == warned
    stage1 = dry_run("uhdv1-pretrain-qwen-stage1-align.sh", {**README_ENV, **env, "ACCU_STEPS": "1"})
    assert f"global batch: {8 * global_batch // 4 // int(env.get('ACCU_STEPS', '2')) }" in stage1.stderr


def fake_nvidia_smi(folder: Path, gpus: int | None) -> dict:
    """PATH with an nvidia-smi that lists ``gpus`` GPUs (None: one that fails, as on a machine without a driver)."""
    folder.mkdir(exist_ok=True)
    listing = "".join(f"echo 'GPU {i}: NVIDIA H100 (UUID: GPU-{i})'\n" for i in range(gpus or 0))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{listing}exit {0 if gpus is not None else 9}\n")
    (folder / "nvidia-smi").chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.parametrize("spelling", ["gpu", "auto"])
def test_nproc_per_node_gpu_is_the_number_of_gpus(spelling, tmp_path):
    """torchrun's own spellings: the script counts the GPUs, so the global batch and the launch agree."""
    env = {**README_ENV, **fake_nvidia_smi(tmp_path / "bin", 4), "NPROC_PER_NODE": spelling, "ACCU_STEPS": "1"}
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env)
    assert result.returncode == 0, result.stderr
    words, flags = parsed(result.stdout)
    assert "sicog.launch" in words and flags["--nproc_per_node"] == "4"
    assert "global batch: 16 = 4 per device x 1 accumulation steps x 4 processes per node" in result.stderr


@pytest.mark.parametrize(("value", "gpus", "says"), [
    ("two", 4, "NPROC_PER_NODE must be a number of processes, gpu or auto (got two)"),
    ("0", 4, "NPROC_PER_NODE must be a number of processes, gpu or auto (got 0)"),
    ("gpu", None, "NPROC_PER_NODE=gpu: no GPU found (CUDA_VISIBLE_DEVICES names none, or nvidia-smi -L lists none); "
                  "set the number of processes"),
])
def test_nproc_per_node_that_is_no_count_stops_with_one_line(value, gpus, says, tmp_path):
    env = {**README_ENV, **fake_nvidia_smi(tmp_path / "bin", gpus), "NPROC_PER_NODE": value}
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {says}"


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("FINETUNE_BATCH", "1.5", "the per-device batch (FINETUNE_BATCH, PRETRAIN_BATCH or DPO_BATCH) must be a whole "
                              "number above 0 (got '1.5')"),
    ("ACCU_STEPS", "abc", "ACCU_STEPS must be a whole number above 0 (got 'abc')"),
    ("NNODES", "2x", "NNODES must be a whole number above 0 (got '2x')"),
    ("NNODES", "0", "NNODES must be a whole number above 0 (got '0')"),
    ("GRADIENT_CHECKPOINTING", "yes", "GRADIENT_CHECKPOINTING must be true or false (got yes)"),
    # EPOCHS=0 trained no step and saved the starting weights as the run's; MAX_STEPS=0 trained the default 3 epochs.
    ("EPOCHS", "0", "EPOCHS must be a number above 0 (got '0')"),
    ("EPOCHS", "-1", "EPOCHS must be a number above 0 (got '-1')"),
    ("EPOCHS", "1e", "EPOCHS must be a number above 0 (got '1e')"),
    ("EPOCHS", "0e5", "EPOCHS must be a number above 0 (got '0e5')"),
    # A typo in a learning rate reached sicog train, which printed its whole usage (137 lines).
    ("FINETUNE_LEARNING_RATE", "2e-5x", "the learning rate (FINETUNE_LEARNING_RATE, PRETRAIN_LEARNING_RATE or "
                                        "DPO_LEARNING_RATE) must be a number above 0 (got '2e-5x')"),
    # false is every other switch's value: DeepSpeed then read it as its config, with a traceback.
    ("DEEPSPEED", "false", "DEEPSPEED must be zero2, zero3, a DeepSpeed .json config or none (got false)"),
    ("DEVICE", "gpu", "DEVICE must be cpu or cuda (got gpu)"),
    ("MAX_STEPS", "0", "MAX_STEPS must be a whole number above 0 (got '0')"),
])
def test_a_count_or_switch_that_is_none_stops_with_one_line(variable, value, says):
    """Bash's arithmetic error left the function with none of the stage's flags, and the run then failed on
    "--data_path is required" although DATA_PATH was set."""
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, variable: value})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"error: {says}"


def test_the_device_in_any_case_and_fp16_only_on_a_gpu():
    """DEVICE=CPU took the GPU branch (bf16 on a CPU), and fp16 on a CPU failed in DeepSpeed with a traceback."""
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "DEVICE": "CPU"})
    assert result.returncode == 0, result.stderr
    _, flags = parsed(result.stdout)
    assert flags["--use_cpu"] == "True" and "--bf16" not in flags
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "DEVICE": "cpu", "PRECISION": "fp16"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: PRECISION=fp16 needs a GPU; on a CPU use bf16 or fp32"
    assert parsed(dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "EPOCHS": "1e3"}).stdout)[1][
        "--num_train_epochs"] == "1e3"


def test_counts_with_leading_zeros_and_switches_as_python_spells_them():
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "FINETUNE_BATCH": "08", "ACCU_STEPS": "02",
                                                           "GRADIENT_CHECKPOINTING": "True", "EPOCHS": "0.5"})
    assert result.returncode == 0, result.stderr
    _, flags = parsed(result.stdout)
    assert (flags["--per_device_train_batch_size"], flags["--gradient_accumulation_steps"]) == ("8", "2")
    assert flags["--num_train_epochs"] == "0.5"  # sicog train takes a part of an epoch
    assert flags["--gradient_checkpointing"] == "True"
    off = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "GRADIENT_CHECKPOINTING": "0"})
    assert "--gradient_checkpointing" not in parsed(off.stdout)[1]


def test_nproc_per_node_gpu_counts_the_gpus_this_process_sees(tmp_path):
    """torchrun's gpu counts the devices CUDA_VISIBLE_DEVICES leaves visible, not every GPU of the node."""
    env = {**README_ENV, **fake_nvidia_smi(tmp_path / "bin", 8), "NPROC_PER_NODE": "gpu", "ACCU_STEPS": "1",
           "CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env)
    assert result.returncode == 0, result.stderr
    assert parsed(result.stdout)[1]["--nproc_per_node"] == "4"


def test_several_nodes_need_a_node_rank_and_a_master_address():
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**README_ENV, "NNODES": "4", "NPROC_PER_NODE": "8"})
    assert result.returncode == 2 and "NODE_RANK" in result.stderr and "MASTER_ADDR" in result.stderr
    # ... named with the script's own missing variables, at once
    bare = {k: v for k, v in README_ENV.items() if k not in ("EXPERIMENT_NAME", "DATA_PATH")}
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", {**bare, "NNODES": "4", "NPROC_PER_NODE": "8"})
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: set these environment variables first: EXPERIMENT_NAME DATA_PATH NODE_RANK MASTER_ADDR")


@pytest.mark.parametrize("node_rank", ["4", "-1", "abc", " 1"])
def test_a_node_rank_outside_the_nodes_stops_with_one_line(node_rank):
    env = {**README_ENV, "NNODES": "4", "NPROC_PER_NODE": "8", "NODE_RANK": node_rank, "MASTER_ADDR": "10.0.0.1"}
    result = dry_run("uhdv1-finetune-qwen-stage2-sft.sh", env)
    assert result.returncode == 2
    says = f"error: NODE_RANK must be a whole number from 0 to 3 (got '{node_rank}')"
    assert result.stderr.strip().splitlines()[-1] == says


@pytest.mark.parametrize(("venv", "active", "override", "expected"), [
    (True, False, None, "{root}/.venv/bin/python"),  # what `make install` creates, used without activating it
    (True, True, None, "python3"),  # an activated environment with sicog wins over the checkout's .venv
    (False, False, None, "python3"),
    (True, True, "/opt/py/bin/python", "/opt/py/bin/python"),  # SICOG_PYTHON wins over both
])
def test_interpreter_defaults_to_the_checkouts_venv(tmp_path, venv, active, override, expected):
    # A copy of the scripts, so that whether a .venv exists is up to the test, not to this checkout.
    for folder in ("training_scripts", "scripts"):
        (tmp_path / folder).mkdir()
        for script in (ROOT / folder).glob("*.sh"):
            (tmp_path / folder / script.name).write_text(script.read_text())
    if venv:
        (tmp_path / ".venv" / "bin").mkdir(parents=True)
        (tmp_path / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
        (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
    # The python3 on PATH: one whose `import sicog` succeeds (an activated environment) or fails.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python3").write_text(f"#!/bin/sh\nexit {0 if active else 1}\n")
    (tmp_path / "bin" / "python3").chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if k not in (*README_ENV, "SICOG_PYTHON")}
    env = {**clean, **README_ENV, "DEEPSPEED": "none", "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           **({"SICOG_PYTHON": override} if override else {})}
    result = subprocess.run(["bash", "training_scripts/uhdv1-finetune-qwen-stage2-sft.sh", "--dry-run"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    words, _ = parsed(result.stdout)
    assert words[:3] == [expected.format(root=tmp_path), "-m", "sicog"]
