import json
import stat
from pathlib import Path

import pytest
import torch
from ports import free_port
from safetensors.torch import load_file
from train_helpers import TINY_FLAGS, logged_losses, make_checkpoint, make_dataset, make_parts, weights

from sicog.cli import main
from sicog.data.jsonl import FILE_MODE


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("train")
    clip, llm = make_parts(root, tokenizer)
    return {"root": root, "clip": clip, "llm": llm, "base": make_checkpoint(root, tokenizer),
            "data": make_dataset(root, n=4, text_only=0)}


def common(world, out, steps=30, lr="2e-3"):
    return [
        "--data_path", str(world["data"]), "--image_folder", str(world["root"] / "images"), "--output_dir", str(out),
        "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--learning_rate", lr, "--logging_steps", "1",
        "--save_steps", str(steps), "--use_cpu", "--lr_scheduler_type", "constant", "--seed", "0",
    ]


@pytest.mark.slow
def test_every_stage_learns_a_fixed_batch(world, tmp_path):
    main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
          *TINY_FLAGS, *common(world, tmp_path / "s1", lr="1e-2")])
    runs = {
        "1": tmp_path / "s1",
        "0": ["--model_name_or_path", str(world["base"])],
        "1.5": ["--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
                "--projector", str(tmp_path / "s1"), *TINY_FLAGS],
        "2": ["--model_name_or_path", str(world["base"])],
    }
    for stage, flags in runs.items():
        out = tmp_path / f"s{stage}"
        if stage != "1":
            main(["train", "--stage", stage, *flags, *common(world, out)])
        losses = logged_losses(out)
        assert len(losses) == 30
        assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, (stage, losses)


@pytest.mark.slow
def test_stage1_changes_only_the_projector(world, tmp_path):
    def stage1(out, lr):
        main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
              *TINY_FLAGS, *common(world, out, steps=3, lr=lr)])
        return weights(out)

    trained, untouched = stage1(tmp_path / "trained", "1e-2"), stage1(tmp_path / "zero_lr", "0")
    for part, source in (("vision_tower", world["clip"]), ("language_model", world["llm"])):
        for name, tensor in weights(source).items():
            assert torch.equal(trained[f"{part}.{name}"], tensor), name
    resampler = [k for k in trained if k.startswith("resampler.")]
    assert any(not torch.equal(trained[k], untouched[k]) for k in resampler)
    projector = load_file(str(tmp_path / "trained" / "projector.safetensors"))
    assert sorted(f"resampler.{k}" for k in projector) == sorted(resampler)
    assert all(torch.equal(trained[f"resampler.{k}"], v) for k, v in projector.items())


def test_checkpoints_and_final_weights_get_the_umask_mode(world, tmp_path):
    main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
          *TINY_FLAGS, *common(world, tmp_path / "s1", steps=2), "--save_steps", "1"])
    weights = sorted((tmp_path / "s1").rglob("*.safetensors"))
    assert {p.relative_to(tmp_path / "s1").as_posix() for p in weights} >= {
        "model.safetensors", "projector.safetensors", "checkpoint-2/model.safetensors"}
    for path in weights:
        assert stat.S_IMODE(path.stat().st_mode) == FILE_MODE, path


@pytest.mark.parametrize("sampler", [["--group_by_modality_length", "True"],
                                     ["--train_sampling_strategy", "group_by_length"]], ids=["modality", "length"])
def test_grouped_samplers_resume_mid_epoch_in_the_uninterrupted_order(world, tmp_path, sampler):
    """Resumed from a checkpoint in the middle of the second epoch, a grouped sampler trains the rest of the run
    on the very samples, in the very order, of the run that was never stopped."""
    import shutil

    data = make_dataset(tmp_path / "data", n=6, text_only=2)  # 8 samples, 4 steps an epoch
    flags = common(world, tmp_path / "full", steps=8, lr="1e-3")
    flags[flags.index("--data_path") + 1] = str(data)
    flags[flags.index("--image_folder") + 1] = str(tmp_path / "data" / "images")
    flags[flags.index("--per_device_train_batch_size") + 1] = "2"
    flags[flags.index("--save_steps") + 1] = "6"

    def run(out, log):
        flags[flags.index("--output_dir") + 1] = str(out)
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags, *sampler,
                     "--report_to", "none", "--sample_log", str(log)]) == 0
        return {e["step"]: e["ids"] for e in map(json.loads, Path(f"{log}.rank0.jsonl").read_text().splitlines())}

    full = run(tmp_path / "full", tmp_path / "full_ids")
    assert sorted(i for step in range(4, 8) for i in full[step]) == sorted(json.loads(r)["id"] for r in
                                                                            data.read_text().splitlines())
    shutil.copytree(tmp_path / "full" / "checkpoint-6", tmp_path / "resumed" / "checkpoint-6")
    resumed = run(tmp_path / "resumed", tmp_path / "resumed_ids")
    assert resumed == {step: full[step] for step in (6, 7)}


def test_invalid_records_stop_the_run_and_are_all_listed(world, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    good = world["data"].read_text().splitlines()
    missing_image = {"id": "x1", "image": "missing.png", "conversations": [
        {"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "ok"}]}
    wrong_order = {"id": "x2", "conversations": [{"from": "gpt", "value": "wrong order"}]}
    bad.write_text("\n".join([good[0], json.dumps(missing_image), json.dumps(wrong_order)]) + "\n")
    flags = common(world, tmp_path / "out", steps=1)
    flags[flags.index("--data_path") + 1] = str(bad)
    assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags]) == 2
    assert "2 invalid training records" in capsys.readouterr().err
    listed = [json.loads(line) for line in (tmp_path / "out" / "data_errors.jsonl").read_text().splitlines()]
    assert [(p["id"], p["line"]) for p in listed] == [("x1", 2), ("x2", 3)]
    assert "missing.png" in listed[0]["reason"] and "conversations[0].from" in listed[1]["reason"]


def test_an_unreadable_data_source_stops_with_one_line(world, tmp_path, capsys):
    flags = common(world, tmp_path / "out", steps=1)
    for source, says in ((tmp_path / "gone.jsonl", "gone.jsonl: file not found"),
                         (tmp_path / "mix.yaml", "mix.yaml: mixture file not found")):
        flags[flags.index("--data_path") + 1] = str(source)
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags]) == 2
        err = capsys.readouterr().err
        assert f"sicog train: error: {tmp_path}/{says}" in err and "Traceback" not in err


def test_global_batch_is_logged_recorded_and_checked_against_the_paper(world, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="sicog.train.run"):
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]),
                     *common(world, tmp_path / "run", steps=1), "--gradient_accumulation_steps", "2"]) == 0
    assert "global batch 8 = 4 per device x 2 accumulation steps x 1 processes" in caplog.text
    assert "global batch 8 differs from the paper's 128 for stage 2" in caplog.text
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["global_batch"] == 8
    assert "inference_long_side" not in caplog.text  # this checkpoint generates on images as trained


def test_a_model_that_resizes_images_at_inference_is_warned_about_once(world, tmp_path, caplog):
    """Training encodes images at their own size; with inference_long_side set, generation does not."""
    import logging

    with caplog.at_level(logging.WARNING, logger="sicog.train.run"):
        assert main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model",
                     str(world["llm"]), *TINY_FLAGS, "--inference_long_side", "128",
                     *common(world, tmp_path / "run", steps=1)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "inference_long_side" in r.getMessage()]
    assert len(warnings) == 1
    assert "native size" in warnings[0] and "long side of 128 pixels" in warnings[0]


def test_bad_arguments_stop_with_one_line_and_exit_2(world, tmp_path, capsys):
    """A missing model source, a config file with an unknown key or none at all, a model path that does not
    exist: each is one `sicog train: error:` line and exit 2, never a traceback."""
    unknown_key = tmp_path / "typo.yaml"
    unknown_key.write_text(f"data_path: {world['data']}\noutput_dir: {tmp_path / 'y'}\nlearning_rat: 1e-5\n")
    no_data = tmp_path / "no_data.yaml"
    no_data.write_text(f"stage: '2'\noutput_dir: {tmp_path / 'y'}\n")
    runs = [
        (["--stage", "2", *common(world, tmp_path / "x", steps=1)], "stage 2 needs --model_name_or_path"),
        ([str(no_data)], f"config {no_data}: missing required key(s): data_path"),
        ([str(unknown_key)], f"config {unknown_key}: Some keys are not used by the HfArgumentParser: ['learning_rat']"),
        ([str(tmp_path / "gone.json")], f"config {tmp_path / 'gone.json'}: No such file or directory"),
        (["--stage", "2", "--model_name_or_path", str(tmp_path / "nonexistent"), *common(world, tmp_path / "x")],
         f"--model_name_or_path {tmp_path / 'nonexistent'}: no such file or folder"),
        (["--stage", "1.5", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
          "--projector", str(world["root"] / "images"), *TINY_FLAGS, *common(world, tmp_path / "x")],
         f"--projector {world['root'] / 'images'}: no projector checkpoint at"),
        # Settings that cannot work together, an empty part list, an unwritable sample log: each failed later in a
        # traceback (SicogConfig's check, the first step).
        (["--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]), *TINY_FLAGS,
          *common(world, tmp_path / "x"), "--resampler_num_queries", "15"],
         "invalid SicogConfig: resampler_num_queries=15 is not a perfect square"),
        (["--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, tmp_path / "x"),
          "--tunable_parts", ","], "--tunable_parts ',' names no part"),
        (["--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, tmp_path / "x"),
          "--sample_log", str(world["data"] / "ids")], f"--sample_log {world['data'] / 'ids'}: "),
        # Fewer records than one batch of every process: with --max_steps it trained no step and saved its start.
        (["--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, tmp_path / "x"),
          "--per_device_train_batch_size", "8", "--dataloader_drop_last", "True"],
         f"4 usable training records in {world['data']}, fewer than one batch of every process (8 per device x 1 "
         "processes) with --dataloader_drop_last"),
    ]
    for argv, says in runs:
        assert main(["train", *argv]) == 2, says
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith(f"sicog train: error: {says}") and "Traceback" not in err


def script_env(world, tmp_path, **extra) -> dict:
    """The README's variables (DEEPSPEED and PRECISION left to the scripts' defaults, no GPU), tiny sizes."""
    import os
    import sys

    clean = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "DEEPSPEED", "PRECISION")}
    return {**clean, "DATA_PATH": str(world["data"]), "IMAGE_FOLDER": str(world["root"] / "images"), "MAX_STEPS": "2",
            "NUM_WORKERS": "0", "GRADIENT_CHECKPOINTING": "false", "PRETRAIN_BATCH": "2", "FINETUNE_BATCH": "2",
            "ACCU_STEPS": "2", "SICOG_PYTHON": sys.executable, "CLIP_CKPT_DIR": str(world["clip"]),
            "LLM_CKPT_DIR": str(world["llm"]), "DEVICE": "cpu", "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_every_script_trains_for_real(world, tmp_path):
    """The four published scripts, driven by the README's variables with NPROC_PER_NODE unset and the default
    DEEPSPEED=zero2, run `sicog train` end to end on a CPU: no flag is added by hand."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    runs = [
        ("stage1", "uhdv1-pretrain-qwen-stage1-align.sh", {}),
        ("stage0", "uhdv1-finetune-qwen-stage0-warmup.sh", {"PREV_STAGE_CHECKPOINT": str(world["base"])}),
        ("stage15", "uhdv1-finetune-qwen-stage15-sft.sh", {"MM_PROJECTOR_CHECKPOINT": str(tmp_path / "stage1")}),
        ("stage2", "uhdv1-finetune-qwen-stage2-sft.sh", {"PREV_STAGE_CHECKPOINT": str(world["base"])}),
    ]
    for name, script, extra in runs:
        env = script_env(world, tmp_path, **extra, EXPERIMENT_NAME=name, OUTPUT_DIR=str(tmp_path / name))
        args = TINY_FLAGS if name in ("stage1", "stage15") else []
        result = subprocess.run(["bash", str(root / "training_scripts" / script), *args],
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (script, result.stderr[-3000:])
        assert all(flag in result.stdout for flag in ("WORLD_SIZE=1", "--deepspeed zero2", "--use_cpu True"))
        assert "global batch: 4 = 2 per device x 2 accumulation steps" in result.stderr
        assert (tmp_path / name / "model.safetensors").is_file(), script
        assert json.loads((tmp_path / name / "train_results.json").read_text())["stage"] in ("0", "1", "1.5", "2")


def test_a_script_on_one_process_under_deepspeed_fails_in_one_line(world, tmp_path):
    """The default DEEPSPEED=zero2 on one process: a bad input is `sicog train`'s one line and exit 2, as with
    DEEPSPEED=none, not a launcher's traceback."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = script_env(world, tmp_path, EXPERIMENT_NAME="bad", OUTPUT_DIR=str(tmp_path / "bad"),
                     PREV_STAGE_CHECKPOINT=str(world["base"]), DATA_PATH=str(tmp_path / "missing.jsonl"))
    result = subprocess.run(["bash", str(root / "training_scripts" / "uhdv1-finetune-qwen-stage0-warmup.sh")],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"sicog train: error: {tmp_path / 'missing.jsonl'}")


@pytest.mark.slow
def test_two_nodes_on_loopback_train_and_save_once(world, tmp_path):
    """Two torchrun launches with node ranks 0 and 1 (one process each, gloo): one run, saved once."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    env = script_env(world, tmp_path, EXPERIMENT_NAME="nodes", OUTPUT_DIR=str(tmp_path / "nodes"),
                     PREV_STAGE_CHECKPOINT=str(world["base"]), NNODES="2", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()))
    script = str(root / "training_scripts" / "uhdv1-finetune-qwen-stage2-sft.sh")
    nodes = [subprocess.Popen(["bash", script], env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert all("--nnodes 2" in out for out, _ in outputs)
    assert "global batch: 8 = 2 per device x 2 accumulation steps x 1 processes per node x 2 nodes" in outputs[0][1]
    state = json.loads((tmp_path / "nodes" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == 2
    assert sorted(p.name for p in (tmp_path / "nodes" / "checkpoint-2").glob("rng_state_*.pth")) == [
        "rng_state_0.pth", "rng_state_1.pth"]  # both ranks trained in one run
    assert len(list((tmp_path / "nodes").glob("model*.safetensors"))) == 1


def test_tensorboard_tracking_records_the_loss_and_remote_code_is_saved(world, tmp_path):
    """`--report_to tensorboard --run_name` (the scripts' REPORT_TO / RUN_NAME) writes event files with the
    training loss; `--save_remote_code` writes the model code and the auto_map with the final checkpoint."""
    pytest.importorskip("tensorboard", reason="tensorboard is the optional 'tensorboard' extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, out, steps=2),
                 "--report_to", "tensorboard", "--run_name", "tiny-run", "--save_remote_code", "True"]) == 0
    events = sorted(out.rglob("events.out.tfevents.*"))
    assert events, f"no event file under {out}"
    accumulator = EventAccumulator(str(events[0].parent)).Reload()
    losses = [event.value for event in accumulator.Scalars("train/loss")]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoConfig"] == "configuration.SicogConfig"
    assert (out / "modeling.py").is_file() and (out / "processing.py").is_file()


def test_push_to_hub_uploads_once_after_everything_is_saved_with_a_model_card(world, tmp_path, monkeypatch):
    """`--push_to_hub`: no upload at save time; one upload at the end, when the weights, processor, projector,
    results and model card are all in the folder (the Hub client is replaced: no network)."""
    from types import SimpleNamespace

    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/me/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        files = {str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file()}
        card = (Path(folder_path) / "README.md").read_text() if "README.md" in files else None
        calls.append(("upload", repo_id, kwargs, files, card))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/0")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "tiny-stage1"
    flags = common(world, out, steps=2)
    flags[flags.index("--save_steps") + 1] = "1"  # checkpoints saved during the run: the Trainer must not push them
    assert main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
                 *TINY_FLAGS, *flags, "--push_to_hub", "True", "--hub_private_repo", "True"]) == 0
    assert [c[0] for c in calls] == ["create", "upload"]
    assert calls[0][1] == "tiny-stage1" and calls[0][2]["private"] is True
    _, repo_id, kwargs, files, card = calls[1]
    assert repo_id == "me/tiny-stage1" and "checkpoint-*" in kwargs["ignore_patterns"]
    # The Trainer's pickle of the arguments holds any --hub_token: it was uploaded, token and all.
    assert "training_args.bin" in kwargs["ignore_patterns"] and (out / "training_args.bin").is_file()
    for name in ("model.safetensors", "config.json", "processor_config.json", "tokenizer.json",
                 "projector.safetensors", "projector_config.json", "train_results.json", "README.md"):
        assert name in files, f"{name} was not written before the upload"
    assert card.startswith("---\n") and "pipeline_tag: image-text-to-text" in card
    assert "stage 1, alignment." in card
    assert f"- vision tower: `{world['clip']}`" in card and f"`{world['data']}`: 4 usable samples" in card
    assert "| global batch | 4 (4 per device x 1 accumulation steps x 1 processes) |" in card
    assert "| trained parts | resampler |" in card and "| learning rate | 0.002 |" in card
    assert 'AutoModelForImageTextToText.from_pretrained("me/tiny-stage1")' in card  # the full id, as created
    assert "import sicog" in card and "licences apply" in card
    # The finished run pushed again to another repository: nothing is trained, and the card names the new one (it
    # named the first, or the folder).
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    assert main(["train", "--stage", "1", "--vision_tower", str(world["clip"]), "--language_model", str(world["llm"]),
                 *TINY_FLAGS, *flags, "--push_to_hub", "True", "--hub_model_id", "org/renamed"]) == 0
    _, repo_id, _, _, card = calls[-1]
    assert repo_id == "org/renamed" and "# renamed\n" in card and 'from_pretrained("org/renamed")' in card


def test_a_run_that_cannot_push_stops_before_training(world, tmp_path, capsys):
    """Offline (the tests' HF_HUB_OFFLINE=1), the repository cannot be created: exit 1 at once, naming it."""
    out = tmp_path / "run"
    assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, out, steps=1),
                 "--push_to_hub", "True", "--hub_model_id", "me/tiny"]) == 1
    err = capsys.readouterr().err
    assert "to the Hub repository me/tiny failed (OfflineModeIsEnabled" in err and "before training" in err
    assert not (out / "model.safetensors").exists()


def test_a_failed_upload_exits_1_and_says_how_to_upload_the_saved_run(world, tmp_path, capsys, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    def upload_folder(self, **kwargs):
        raise ConnectionError("connection reset")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "run"
    assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, out, steps=1),
                 "--push_to_hub", "True", "--hub_model_id", "me/tiny"]) == 1
    err = capsys.readouterr().err
    assert "(ConnectionError: connection reset); the run is saved" in err
    assert f'hf upload me/tiny {out} --exclude "_*" --exclude ".*" --exclude "checkpoint-*"' in err
    assert (out / "model.safetensors").is_file() and "- checkpoint: `" in (out / "README.md").read_text()


def test_model_card_metadata_names_only_hub_parts_and_datasets(tmp_path):
    from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments
    from sicog.train.hub import model_card

    args = SicogTrainingArguments(output_dir=str(tmp_path / "out"), stage="1.5", warmup_steps=0.03, use_cpu=True,
                                  lr_scheduler_type="cosine", save_remote_code=True, push_to_hub=True)
    assert args.push_at_end and not args.push_to_hub  # the Trainer's own save-time push is off
    model = ModelArguments(vision_tower="openai/clip-vit-large-patch14-336", language_model=str(tmp_path))
    data = DataArguments(data_path=f"{tmp_path}, lmms-lab/LLaVA-OneVision-Data:train")
    card = model_card(model, data, args, {"global_batch": 128, "samples": 10, "skipped": 0})
    assert card.data.base_model == ["openai/clip-vit-large-patch14-336"]
    assert card.data.datasets == ["lmms-lab/LLaVA-OneVision-Data"]
    assert "| schedule | cosine, warm-up 3% of the steps, weight decay 0 |" in card.text
    assert "pass `trust_remote_code=True`" in card.text and "train loss" not in card.text
    # DeepSpeed given as its JSON text or a config's mapping (transformers reads both into a mapping) was left out.
    args = SicogTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True,
                                  deepspeed='{"zero_optimization": {"stage": 3}, "train_batch_size": "auto"}')
    card = model_card(model, data, args, {"global_batch": 128, "samples": 10, "skipped": 0})
    assert "| precision | fp32, DeepSpeed ZeRO-3 |" in card.text


@pytest.mark.parametrize(("precision", "deepspeed", "weights", "autocast"), [
    ("bf16", None, torch.float32, torch.bfloat16),
    ("fp16", None, torch.float32, torch.float16),
    (None, None, torch.float32, None),
    ("bf16", "zero2", torch.bfloat16, None),
    ("fp16", "zero3", torch.float16, None),
])
def test_16_bit_weights_only_under_deepspeed(tmp_path, precision, deepspeed, weights, autocast):
    """Without DeepSpeed the optimizer updates the loaded weights themselves: they stay fp32 and --bf16 / --fp16
    autocast the passes. DeepSpeed keeps fp32 master weights of its own, so it gets the 16-bit weights."""
    from sicog.train.arguments import SicogTrainingArguments

    flags = {precision: True} if precision else {}
    args = SicogTrainingArguments(output_dir=str(tmp_path), use_cpu=True, deepspeed=deepspeed, **flags)
    assert args.weights_dtype() == weights and args.autocast_dtype() == autocast


@pytest.mark.slow
def test_compiled_layers_train_as_the_plain_path(world, tmp_path):
    """`--compile_layers` (inductor, as on a GPU) through a whole run with gradient checkpointing: the same losses."""
    losses = {}
    for compiled in ("False", "True"):
        out = tmp_path / f"compiled-{compiled}"
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *common(world, out, steps=3),
                     "--gradient_checkpointing", "True", "--compile_layers", compiled]) == 0
        losses[compiled] = logged_losses(out)
    assert len(losses["True"]) == 3 and losses["True"] == pytest.approx(losses["False"], abs=1e-4)


def test_modality_grouped_steps_are_random_draws_of_one_modality():
    """As the published LengthGroupedSampler(group_by_modality=True): each optimizer step (one global batch) is a
    random draw of image or of text samples, only arranged by length inside it. Sorting 50 global batches together
    instead would give every step samples of nearly one length (all short answers, then all long captions)."""
    from sicog.train.trainer import ModalityLengthGroupedSampler

    batch, steps = 128, 200
    lengths = torch.randint(100, 3000, (batch * steps,), generator=torch.Generator().manual_seed(0)).tolist()
    has_image = [i % 4 != 0 for i in range(len(lengths))]
    order = list(ModalityLengthGroupedSampler(batch, lengths, has_image, seed=0))
    assert sorted(order) == list(range(len(lengths)))
    full = [order[i : i + batch] for i in range(0, len(order), batch)][: steps - 2]  # the ragged ends go last
    for step in full:
        assert len({has_image[i] for i in step}) == 1
        spread = max(lengths[i] for i in step) - min(lengths[i] for i in step)
        assert spread > 2500, spread  # a random draw from 100..3000 spans nearly all of it
    means = torch.tensor([sum(lengths[i] for i in step) / batch for step in full])
    assert means.std() < 150, means[:5].tolist()  # a random draw's mean: about 1550 +- 70, whatever the step


def test_loss_weighting_micro_batches_reproduces_the_release(world, tmp_path):
    """Under gradient accumulation, `--loss_weighting micro_batches` averages each micro-batch's token mean, as the
    published trainer did; the default weighs every supervised token of the step the same (transformers' current
    loss), so a 3-token answer counts far less than a long one. Learning rate 0: every run scores one model."""
    long_answer = " ".join(["The image shows shapes, colours and numbers 0 1 2 3 4 5 6 7 8 9."] * 4)
    records = [("short", "Hi."), ("long", long_answer)]
    data = tmp_path / "answers.jsonl"
    data.write_text("".join(json.dumps({"id": i, "conversations": [{"from": "human", "value": "Say something."},
                                                                    {"from": "gpt", "value": a}]}) + "\n"
                            for i, a in records))

    def step_losses(name, steps, accumulation, *extra):
        flags = common(world, tmp_path / name, steps=steps, lr="0")
        flags[flags.index("--data_path") + 1] = str(data)
        flags[flags.index("--per_device_train_batch_size") + 1] = "1"
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags,
                     "--gradient_accumulation_steps", str(accumulation), "--report_to", "none",
                     "--sample_log", str(tmp_path / name), *extra]) == 0
        return logged_losses(tmp_path / name)

    alone = step_losses("alone", 2, 1)  # one sample a step: each sample's own token mean
    order = [json.loads(line)["ids"][0] for line in Path(f"{tmp_path / 'alone'}.rank0.jsonl").read_text().splitlines()]
    per_sample = dict(zip(order, alone))
    release = (per_sample["short"] + per_sample["long"]) / 2
    [micro] = step_losses("micro", 1, 2, "--loss_weighting", "micro_batches")
    [tokens] = step_losses("tokens", 1, 2)
    assert micro == pytest.approx(release, abs=2e-4)
    assert abs(tokens - per_sample["long"]) < abs(release - per_sample["long"]) - 1e-3, (tokens, per_sample)


def _cut_image_data(world, tmp_path) -> Path:
    """One record whose image has its whole header but half its pixels: the check before training passes it."""
    whole = (world["root"] / "images" / "0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) // 2])
    data = tmp_path / "cut.jsonl"
    data.write_text(json.dumps({"id": "cut", "image": str(tmp_path / "cut.png"), "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is this image?"}, {"from": "gpt", "value": "Red."}]}) + "\n")
    return data


def test_a_record_that_fails_in_a_dataloader_worker_is_the_same_one_line(world, tmp_path, capsys):
    """A truncated image (whole header, cut pixels: the check before training passes it) first decoded in a
    DataLoader worker (the scripts' NUM_WORKERS=4): torch's "Caught RecordError in DataLoader worker process 0.
    Original Traceback ..." (some 15 lines) was the one-line error."""
    data = _cut_image_data(world, tmp_path)
    lines = []
    for workers in ("0", "1"):
        flags = common(world, tmp_path / f"out-{workers}", steps=1)
        flags[flags.index("--data_path") + 1] = str(data)
        flags[flags.index("--per_device_train_batch_size") + 1] = "1"
        assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags, "--report_to", "none",
                     "--disable_tqdm", "True", "--dataloader_num_workers", workers]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "DataLoader worker" not in err
        lines.append(err.splitlines()[-1])
    assert lines[0] == lines[1]
    assert lines[0].startswith(f"sicog train: error: {data}:1 id='cut': cannot read image {tmp_path / 'cut.png'}: ")


def test_a_failed_runs_error_starts_its_own_line_after_the_progress_bar(world, tmp_path, capsys):
    """A record failing mid-run with the progress bar on: the error line continued the bar's line."""
    data = _cut_image_data(world, tmp_path)
    flags = common(world, tmp_path / "out", steps=1)
    flags[flags.index("--data_path") + 1] = str(data)
    flags[flags.index("--per_device_train_batch_size") + 1] = "1"
    assert main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), *flags, "--report_to", "none",
                 "--disable_tqdm", "False"]) == 2
    err = capsys.readouterr().err
    assert "it/s]" in err  # the bar was drawn
    lines = err.split("\n")
    [error] = [line for line in lines if "sicog train: error:" in line]
    assert error.startswith("sicog train: error:") and lines.index(error) == len(lines) - 2, lines[-3:]
