"""Real 2-process runs on CPU (gloo) under torchrun with DeepSpeed ZeRO-2 and ZeRO-3."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from ports import free_port
from safetensors.torch import load_file
from test_convert import release_like_model
from train_helpers import TINY_FLAGS, make_checkpoint, make_dataset, make_parts, weights

from sicog.cli import main
from sicog.model.builders import save_pretrained, save_projector

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("dist")
    clip, llm = make_parts(root, tokenizer)
    return {"root": root, "clip": clip, "llm": llm, "base": make_checkpoint(root, tokenizer),
            "data": make_dataset(root, n=14, text_only=2)}


def torchrun(args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "sicog", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def flags(world, out, zero, steps, extra=()):
    """No --use_cpu, as users run on a machine without a GPU (each process once ran as a one-process run alone)."""
    return [
        "--data_path", str(world["data"]), "--image_folder", str(world["root"] / "images"), "--output_dir", str(out),
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--learning_rate", "1e-3",
        "--logging_steps", "1", "--deepspeed", zero, "--seed", "7", "--max_steps", str(steps),
        "--save_steps", "2", "--dataloader_num_workers", "0", *extra,
    ]


def losses(out):
    checkpoint = max(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return {e["step"]: e["loss"] for e in state["log_history"] if "loss" in e}


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_ranks_cover_the_data_and_resume_exactly(world, tmp_path, zero):
    full = tmp_path / "full"
    # 16 records / (2 per device x 2 accumulation x 2 ranks) -> 2 optimizer steps an epoch; 4 steps = 2 epochs.
    torchrun(["--stage", "2", "--model_name_or_path", str(world["base"]), "--sample_log", str(tmp_path / "ids"),
              *flags(world, full, zero, 4)])
    per_rank = [
        [json.loads(line) for line in (tmp_path / f"ids.rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)
    ]
    first_epoch = [[i for entry in entries if entry["step"] < 2 for i in entry["ids"]] for entries in per_rank]
    assert not set(first_epoch[0]) & set(first_epoch[1])
    assert set(first_epoch[0]) | set(first_epoch[1]) == {f"img-{i}" for i in range(14)} | {"txt-0", "txt-1"}
    # every optimizer step consumed per-device 2 x accumulation 2 x world 2 = 8 samples
    for step in range(4):
        assert sum(len(e["ids"]) for entries in per_rank for e in entries if e["step"] == step) == 8
    # resume: cut the run back to its step-2 checkpoint and finish it again
    resumed = tmp_path / "resumed"
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    torchrun(["--stage", "2", "--model_name_or_path", str(world["base"]), *flags(world, resumed, zero, 4)])
    expected, got = losses(full), losses(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5)
    full_weights, resumed_weights = weights(full), weights(resumed)
    for name in full_weights:
        torch.testing.assert_close(resumed_weights[name], full_weights[name], rtol=1e-4, atol=1e-5)
    # On one process (the same global batch): ZeRO's shards load only into two; DeepSpeed failed with a traceback.
    alone = tmp_path / "alone"
    shutil.copytree(full / "checkpoint-2", alone / "checkpoint-2")
    one = flags(world, alone, zero, 4)
    one[one.index("--gradient_accumulation_steps") + 1] = "4"
    alone_env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}  # one process, as the scripts start it
    result = subprocess.run([sys.executable, "-m", "sicog", "train", "--stage", "2", "--model_name_or_path",
                             str(world["base"]), *one], capture_output=True, text=True, env=alone_env, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (f"error: {alone / 'checkpoint-2'} was saved by 2 DeepSpeed processes and this run has 1: its ZeRO "
            "optimizer shards load only into 2;") in result.stderr
    assert (full / "checkpoint-2" / "zero_to_fp32.py").is_file()  # the way out the line names


def test_train_loss_of_a_run_resumed_between_two_logs_is_the_uninterrupted_runs(world, tmp_path):
    """A checkpoint's marker summed the steps since the last log as rank 0 saw them, where logs average the ranks:
    two ranks resumed from a save between two logs reported another train_loss."""
    def run(out):
        flag = flags(world, out, "zero2", 6)
        del flag[flag.index("--deepspeed"):flag.index("--deepspeed") + 2]  # plain DDP
        flag[flag.index("--logging_steps") + 1], flag[flag.index("--save_steps") + 1] = "2", "3"
        flag[flag.index("--gradient_accumulation_steps") + 1] = "1"
        torchrun(["--stage", "2", "--model_name_or_path", str(world["base"]), *flag])
        return json.loads((out / "train_results.json").read_text())["train_loss"]

    uninterrupted = run(tmp_path / "full")
    shutil.copytree(tmp_path / "full" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    assert run(tmp_path / "resumed") == pytest.approx(uninterrupted, rel=1e-6)


def test_stage1_projector_loads_into_stage15_under_zero3(world, tmp_path):
    stage1 = tmp_path / "stage1"
    torchrun(["--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]), *TINY_FLAGS,
              *flags(world, stage1, "zero2", 2)])
    projector = load_file(str(stage1 / "projector.safetensors"))
    # learning rate 0: what stage 1.5 saves is exactly what it loaded under ZeRO-3
    stage15 = tmp_path / "stage15"
    torchrun(["--stage", "1.5", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
              "--projector", str(stage1), *TINY_FLAGS, *flags(world, stage15, "zero3", 1, ("--learning_rate", "0"))])
    saved = weights(stage15)
    for name, tensor in projector.items():
        assert saved[f"resampler.{name}"].numel() > 0
        assert torch.equal(saved[f"resampler.{name}"], tensor), name


def test_zero3_run_from_a_checkpoint_loads_its_projector_and_saves_under_the_usual_names(world, tmp_path, tokenizer):
    """A model loaded with --model_name_or_path under ZeRO-3 is partitioned while it loads: the --projector given
    with it still loads (its full tensors), and the save names every weight as a save without DeepSpeed does
    (transformers would write the tower as vision_tower.vision_model.*), so the result converts to the release."""
    model, processor = release_like_model(tokenizer)  # the published geometry, which `convert to-release` needs
    save_pretrained(model, processor, tmp_path / "base")
    for parameter in model.resampler.parameters():
        parameter.data.normal_(0, 0.05)  # other values than the checkpoint's resampler
    save_projector(model, tmp_path / "projector")
    projector = load_file(str(tmp_path / "projector" / "projector.safetensors"))
    out = tmp_path / "out"
    # learning rate 0: what the run saves is what it loaded
    torchrun(["--stage", "2", "--model_name_or_path", str(tmp_path / "base"),
              "--projector", str(tmp_path / "projector"),
              *flags(world, out, "zero3", 1, ("--learning_rate", "0"))])
    base, saved = weights(tmp_path / "base"), weights(out)
    assert sorted(saved) == sorted(base)
    for name, tensor in saved.items():
        expected = projector[name[len("resampler."):]] if name.startswith("resampler.") else base[name]
        assert torch.equal(tensor, expected), name
    assert main(["convert", "to-release", str(out), str(tmp_path / "release")]) == 0


def test_modality_grouped_sampler_resumes_mid_epoch_on_two_ranks(world, tmp_path):
    """Resumed in the middle of the second epoch, each rank trains on the uninterrupted run's samples: the epoch
    reaches the sampler even through the batch skipping of a multi-process resume."""
    # 16 records / (2 per device x 2 ranks) -> 4 steps an epoch; checkpoint-6 is half way through the second.
    extra = ("--gradient_accumulation_steps", "1", "--save_steps", "6", "--group_by_modality_length", "True")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    base = ["--stage", "2", "--model_name_or_path", str(world["base"])]
    torchrun([*base, "--sample_log", str(tmp_path / "full_ids"), *flags(world, full, "zero2", 8, extra)])
    shutil.copytree(full / "checkpoint-6", resumed / "checkpoint-6")
    torchrun([*base, "--sample_log", str(tmp_path / "resumed_ids"), *flags(world, resumed, "zero2", 8, extra)])
    for rank in (0, 1):
        logged = {name: {e["step"]: e["ids"] for e in map(json.loads, (tmp_path / f"{name}_ids.rank{rank}.jsonl")
                                                          .read_text().splitlines())} for name in ("full", "resumed")}
        assert logged["resumed"] == {step: logged["full"][step] for step in (6, 7)}, rank


def test_exit_handlers_run_after_a_multi_process_run(world, tmp_path):
    """A multi-process run leaves through os._exit (see sicog/train/cli.py), which skips interpreter exit; the exit
    handlers must still run, for trackers finish there (wandb writes and uploads a run's history at exit)."""
    launcher = tmp_path / "launch.py"
    launcher.write_text(
        "import atexit, os, sys\n"
        "from pathlib import Path\n"
        "from sicog.cli import main\n"
        f"atexit.register(lambda: Path({str(tmp_path)!r}, 'exited.rank' + os.environ['RANK']).write_text('ok'))\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(launcher), "train", "--stage", "2", "--model_name_or_path", str(world["base"]),
           *flags(world, tmp_path / "out", "zero2", 1)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("exited.rank*")) == ["exited.rank0", "exited.rank1"]
