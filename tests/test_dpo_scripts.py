"""training_scripts/uhdv1-finetune-qwen-dpo.sh, driven by environment variables (dry runs)."""

import os
import shlex
import subprocess
from pathlib import Path

from sicog.cycle.flags import DPO_SCHEDULE

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "training_scripts" / "uhdv1-finetune-qwen-dpo.sh"
OURS = ("EXPERIMENT_NAME", "DATA_PATH", "PREV_STAGE_CHECKPOINT", "DPO_LEARNING_RATE", "DPO_BATCH", "DPO_BETA",
        "DPO_GAMMA", "DPO_ALPHA", "ACCU_STEPS", "OUTPUT_DIR", "DEEPSPEED", "NPROC_PER_NODE", "NNODES", "IMAGE_FOLDER",
        "SAVE_STEPS", "SAVE_TOTAL_LIMIT")


def dry_run(env, *args, cwd=ROOT):
    clean = {k: v for k, v in os.environ.items() if k not in OURS}
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
        timeout=60,
    )


def parsed(stdout):
    words = shlex.split(stdout.strip().splitlines()[-1])
    return words, {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}


def test_defaults_resolve_from_any_directory(tmp_path):
    env = {"EXPERIMENT_NAME": "dpo", "DATA_PATH": "pairs.jsonl,noisy_pairs.jsonl", "PREV_STAGE_CHECKPOINT": "ckpt"}
    result = dry_run(env, "--lora_r", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    words, flags = parsed(result.stdout)
    assert words[words.index("train") + 1 :][:2] == ["--stage", "dpo"]
    assert flags["--model_name_or_path"] == "ckpt" and flags["--data_path"] == "pairs.jsonl,noisy_pairs.jsonl"
    assert not {"--dpo_beta", "--dpo_gamma", "--dpo_alpha"} & set(flags)  # sicog train's own defaults apply
    assert (flags["--learning_rate"], flags["--per_device_train_batch_size"]) == ("5e-7", "1")
    assert flags["--deepspeed"] == "zero2"
    assert flags["--output_dir"] == str(ROOT / "model_weight" / "dpo" / "llava-qwen-uhd-dpo")
    assert words[-2:] == ["--lora_r", "8"]


def test_schedule_and_batches_are_llava_next_dpo():
    """LLaVA-NeXT's scripts/train/dpo.sh: linear decay after a 10% warm-up, the last partial batch dropped, batches
    grouped by modality and length, a checkpoint every 3000 steps keeping one (SAVE_STEPS / SAVE_TOTAL_LIMIT)."""
    env = {"EXPERIMENT_NAME": "dpo", "DATA_PATH": "p.jsonl", "PREV_STAGE_CHECKPOINT": "ckpt"}
    words, flags = parsed(dry_run(env).stdout)
    assert (flags["--lr_scheduler_type"], flags["--warmup_steps"]) == ("linear", "0.1")
    # The cycle's arm F trains on the same schedule.
    assert {name: flags[f"--{name}"] for name in DPO_SCHEDULE} == DPO_SCHEDULE
    assert words.count("--lr_scheduler_type") == 1 and words.count("--warmup_steps") == 1
    assert flags["--dataloader_drop_last"] == "True" and flags["--group_by_modality_length"] == "True"
    assert (flags["--save_steps"], flags["--save_total_limit"]) == ("3000", "1")
    _, flags = parsed(dry_run({**env, "SAVE_STEPS": "50", "SAVE_TOTAL_LIMIT": "2"}).stdout)
    assert (flags["--save_steps"], flags["--save_total_limit"]) == ("50", "2")


def test_variables_set_the_hyper_parameters_and_torchrun():
    env = {"EXPERIMENT_NAME": "dpo", "DATA_PATH": "p.jsonl", "PREV_STAGE_CHECKPOINT": "ckpt", "DPO_BETA": "0.2",
           "DPO_GAMMA": "0", "DPO_ALPHA": "2", "DPO_LEARNING_RATE": "1e-6", "DPO_BATCH": "2", "DEEPSPEED": "zero3",
           "NPROC_PER_NODE": "8"}
    words, flags = parsed(dry_run(env).stdout)
    assert "sicog.launch" in words and flags["--nproc_per_node"] == "8" and flags["--deepspeed"] == "zero3"
    assert (flags["--dpo_beta"], flags["--dpo_gamma"], flags["--dpo_alpha"]) == ("0.2", "0", "2")
    assert (flags["--learning_rate"], flags["--per_device_train_batch_size"]) == ("1e-6", "2")


def test_missing_variables_are_all_named():
    result = dry_run({})
    assert result.returncode == 2
    assert all(name in result.stderr for name in ("EXPERIMENT_NAME", "DATA_PATH", "PREV_STAGE_CHECKPOINT"))
