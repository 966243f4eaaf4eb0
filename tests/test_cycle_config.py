"""Cycle config files: every setting checked when the file is read (one line naming the file and the key,
exit 2), and the plan's own flags and global batch notes."""

import dataclasses
import os
from importlib import resources
from pathlib import Path

import pytest
import yaml

from sicog.cli import main
from sicog.cycle.commands import load_checked
from sicog.cycle.config import ConfigError, load_config
from sicog.cycle.plan import launcher_processes

REAL = {
    "name": "real", "toy_size": None, "vision_tower": "/data/clip", "language_model": "/data/qwen",
    "data": {"image_folder": "/data/images", "align": "/data/align.jsonl", "cod": "/data/cod.jsonl",
             "cot": "/data/cot.jsonl", "sft": "/data/sft.jsonl", "unlabeled_images": "/data/ui.jsonl",
             "unlabeled_questions": "/data/uq.jsonl", "unlabeled_web": "/data/uw.jsonl",
             "bench_mc": "/data/MMStar.tsv"},
    "arms": ["A", "B", "C", "D"],
    # The training schedule every config names.
    "batch_size": 8, "stage1_steps": 100, "stage1_lr": 1e-3, "stage0_steps": 20, "stage15_steps": 20,
    "stage2_steps": 50, "finetune_lr": 2e-5,
}


def write(tmp_path, omit: tuple[str, ...] = (), **settings) -> str:
    """A real-data config with ``settings`` changed and the keys ``omit`` left out."""
    values = {k: v for k, v in {**REAL, **settings}.items() if k not in omit}
    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def refused(tmp_path, path: str, *messages: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_checked(path)  # as a run loads it
    lines = str(err.value).splitlines()
    assert all(line.startswith(f"{path}: ") for line in lines)
    for message in messages:
        assert any(message in line for line in lines), (message, lines)
    assert main(["cycle", "--config", path, "--out", str(tmp_path / "run"), "--dry-run"]) == 2


def test_real_data_without_toy_size_null_is_refused_not_run_as_the_toy_demo(tmp_path):
    refused(tmp_path, write(tmp_path, omit=("toy_size",)),
            "key(s) 'data', 'vision_tower', 'language_model' name real data, but toy_size is 'demo'",
            "set toy_size: null")
    refused(tmp_path, write(tmp_path, toy_size="tiny"), "but toy_size is 'tiny'")
    assert load_config(write(tmp_path)).toy_size is None


def test_embed_command_without_a_sentence_encoder_to_run_is_refused(tmp_path):
    refused(tmp_path, write(tmp_path, embed_command=["/envs/nvembed/bin/python"]),
            "embed_command runs a sentence encoder apart, but encoder is None; name the encoder")
    toy = tmp_path / "toy.yaml"
    toy.write_text("preset: toy\nembed_command: [/envs/nvembed/bin/python]\n")
    refused(tmp_path, str(toy), "embed_command runs a sentence encoder apart, but encoder is 'toy-facts'")
    refused(tmp_path, write(tmp_path, embed_command="/envs/nvembed/bin/python", encoder="/models/NV-Embed-v2"),
            "key 'embed_command': expected a list of strings")
    config = load_config(write(tmp_path, embed_command=["/envs/nvembed/bin/python"], encoder="/models/NV-Embed-v2"))
    assert config.embed_command == ["/envs/nvembed/bin/python"]
    # Its curation reads embeddings made by the embed step: keeping them again did nothing but change the step key.
    refused(tmp_path, write(tmp_path, embed_command=["/envs/nvembed/bin/python"], encoder="/models/NV-Embed-v2",
                            curate={"keep_embeddings": True}),
            "curate.keep_embeddings keeps the embeddings made inside `sicog curate`; with embed_command")


def test_a_required_dataset_left_out_is_named_before_anything_runs(tmp_path):
    data = {k: v for k, v in REAL["data"].items() if k != "bench_mc"}
    refused(tmp_path, write(tmp_path, data=data), "key 'data': lacks bench_mc")


def test_every_source_of_a_dataset_is_relative_to_the_config_file(tmp_path):
    """Only the first of a comma list was: the second was looked for in the working folder."""
    data = {**REAL["data"], "sft": "sft/a.jsonl,sft/{b,c}.json,/data/d.jsonl,owner/hub_set:train",
            "image_folder": "im,ages", "bench_mc": "bench,v2/mmstar.tsv"}
    config = load_config(write(tmp_path, data=data))
    assert config.data["sft"] == ",".join([str(tmp_path / "sft" / "a.jsonl"), str(tmp_path / "sft" / "b.json"),
                                            str(tmp_path / "sft" / "c.json"), "/data/d.jsonl", "owner/hub_set:train"])
    # The datasets other commands read are one path each, commas and all.
    assert config.data["image_folder"] == str(tmp_path / "im,ages")
    assert config.data["bench_mc"] == str(tmp_path / "bench,v2" / "mmstar.tsv")
    refused(tmp_path, write(tmp_path, data={**REAL["data"], "sft": "sft/{a,b.json"}), "key 'data': sft:",
            "unbalanced braces")


def test_unknown_datasets_are_refused(tmp_path):
    data = {**REAL["data"], "image_uses": "/data/refs.jsonl"}
    refused(tmp_path, write(tmp_path, data=data), "key 'data': unknown dataset(s) ['image_uses']")
    assert "image_use" in load_config(write(tmp_path, data={**REAL["data"], "image_use": "/r.jsonl"})).data


@pytest.mark.parametrize("key, settings, messages", [
    ("train", {"learning_rate": 1e-5, "per_device_train_batch_size": 2, "max_steps": 50, "seed": 3},
     ["key 'train': setting(s) ['learning_rate', 'max_steps', 'per_device_train_batch_size', 'seed'] are "
      "set by the cycle itself", "learning_rate: use stage1_lr, finetune_lr and dpo_lr",
      "max_steps: use stage1_steps", "per_device_train_batch_size: use batch_size and stage1_batch_size",
      "seed: the plan"]),
    ("train", {"num_train_epochs": 3}, ["num_train_epochs: use stage1_steps"]),
    ("train", {"gradient_accumulation_steps": "two"},
     ["key 'train': gradient_accumulation_steps must be a whole number of at least 1, got 'two'"]),
    ("train", {"learnig_rate": 1.0}, ["key 'train': unknown setting(s) ['learnig_rate']"]),
    ("curate", {"threshold": 0.5, "min_agreement": 0.5},
     ["key 'curate': setting(s) ['min_agreement', 'threshold'] are set by the cycle itself",
      "min_agreement: use min_agreement", "threshold: use caption_threshold and reasoning_threshold"]),
    ("curate", {"encoder": "/m"}, ["encoder: use encoder"]),
    ("model", {"vision_tower": "/other"}, ["key 'model': setting(s) ['vision_tower']", "use vision_tower"]),
    ("generate", {"top_p": 0.5}, ["key 'generate': setting(s) ['top_p']", "top_p: use top_p"]),
])
def test_settings_the_plan_sets_are_refused_when_the_file_is_read(tmp_path, key, settings, messages):
    refused(tmp_path, write(tmp_path, **{key: settings}), *messages)


def test_passed_on_settings_the_plan_does_not_set_are_kept(tmp_path):
    config = load_config(write(tmp_path, train={"bf16": True, "gradient_accumulation_steps": 2},
                               curate={"trust_remote_code": True, "batch_size": 4}))
    assert config.train["gradient_accumulation_steps"] == 2 and config.curate["batch_size"] == 4


@pytest.mark.parametrize("text, key", [("top_p: .nan\n", "top_p"), ("caption_threshold: .nan\n", "caption_threshold"),
                                       ("stage1_lr: .inf\n", "stage1_lr"), ("finetune_lr: -.inf\n", "finetune_lr")])
def test_non_finite_numbers_are_refused(tmp_path, text, key):
    path = tmp_path / "nan.yaml"
    path.write_text("toy_size: tiny\n" + text)
    refused(tmp_path, str(path), f"key '{key}': must be a finite number")


def test_a_nucleus_mass_of_zero_is_refused(tmp_path):
    """Generation refuses it, after every training step before generation has run."""
    refused(tmp_path, write(tmp_path, top_p=0), "key 'top_p': must be greater than 0, got 0.0")


def test_a_whole_number_is_the_same_setting_as_its_float(tmp_path):
    """`top_p: 1` passed on as "1" and `top_p: 1.0` as "1.0": two step keys for one setting."""
    whole = load_config(write(tmp_path, top_p=1, caption_temperature=1, stage1_lr=1))
    floats = load_config(write(tmp_path, top_p=1.0, caption_temperature=1.0, stage1_lr=1.0))
    assert whole == floats and str(whole.top_p) == "1.0"
    assert load_config(write(tmp_path, batch_size=8)).batch_size == 8 and isinstance(whole.batch_size, int)


@pytest.mark.parametrize("key", ["batch_size", "top_p"])
def test_an_integer_too_large_for_any_step_is_refused(tmp_path, key):
    path = tmp_path / "big.yaml"
    path.write_text(f"toy_size: tiny\n{key}: {'9' * 400}\n")
    refused(tmp_path, str(path), f"key '{key}': must fit in 64 bits, got a 400-digit number")


@pytest.mark.parametrize("launcher, processes", [
    ([], 1), (["torchrun", "--nproc_per_node=8"], 8), (["torchrun", "--nproc-per-node=8"], 8),
    (["torchrun", "--nproc-per-node", "4", "--nnodes", "2"], 8),
    (["torchrun", "--nnodes=1:4", "--nproc_per_node=2"], 8),
    (["torchrun", "--nproc_per_node=gpu"], None), (["torchrun", "--nproc-per-node", "auto"], None),
    (["torchrun", "--nproc_per_node=${GPUS}"], None),
])
def test_launcher_processes_read_both_spellings_and_unknown_counts(launcher, processes):
    assert launcher_processes(launcher) == processes


@pytest.mark.parametrize("launcher, note", [
    (["torchrun", "--nproc_per_node=gpu"], "# global batch not known here: 8 per device x 2 accumulation x the "
                                           "processes the launcher starts"),
    (["torchrun", "--nproc-per-node=8"], "# global batch 128 = 8 per device x 2 accumulation x 8 processes"),
])
def test_dry_run_notes_the_global_batch_of_any_valid_launcher(tmp_path, capsys, launcher, note):
    path = write(tmp_path, launcher=launcher, train={"gradient_accumulation_steps": 2})
    assert main(["cycle", "--config", path, "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    stage1 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[run] stage1:"))
    assert note in stage1


def test_a_schedule_flag_in_train_replaces_the_plans_own(tmp_path, capsys):
    path = write(tmp_path, train={"warmup_steps": 5, "weight_decay": 0.1})
    assert main(["cycle", "--config", path, "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    stage1 = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("[run] stage1:")).split()
    assert [stage1[i + 1] for i, arg in enumerate(stage1) if arg == "--warmup_steps"] == ["5"]
    assert [stage1[i + 1] for i, arg in enumerate(stage1) if arg == "--weight_decay"] == ["0.1"]
    assert stage1[stage1.index("--lr_scheduler_type") + 1] == "cosine"  # the plan's, where train is silent


def test_quick_and_config_are_one_choice(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cycle", "--quick", "--config", "paper", "--out", str(tmp_path), "--dry-run"])
    assert exit_.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [(True, ["--include-self"]), (False, ["--no-include-self"])])
def test_a_curate_switch_with_a_no_form_is_passed_either_way(value, expected):
    # include_self defaults by encoder (sicog/curate/pipeline.py), so false must reach the command, not vanish.
    from sicog.cycle.config import CycleConfig
    from sicog.cycle.flags import curate_flags, generate_flags

    assert curate_flags(CycleConfig(curate={"include_self": value})) == expected
    # A switch without a --no- form is off when left out: false passes nothing.
    assert generate_flags(CycleConfig(generate={"compile": False})) == []


def test_a_real_config_leaving_out_generation_and_pool_settings_gets_the_commands_defaults(tmp_path, capsys):
    # No toy value may reach real data: the pools are used whole, and generation and evaluation use their own
    # defaults (sicog generate: 1,200 new tokens, 8 records a batch).
    assert main(["cycle", "--config", write(tmp_path), "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any("] pool_" in line for line in lines)
    for step in ("generate_captions", "generate_reasoning", "eval_D", "letters_D"):
        line = next(line for line in lines if line.startswith(f"[run] {step}:")).split()
        assert "--max-new-tokens" not in line and "--batch-size" not in line, step
    assert "--unlabeled_images_limit" not in " ".join(lines)


@pytest.mark.parametrize("omit", ["stage15_steps", "finetune_lr", "batch_size"])
def test_the_training_schedule_is_required(tmp_path, omit):
    refused(tmp_path, write(tmp_path, omit=(omit,)), f"key {omit!r}: required")


def test_the_dpo_schedule_is_required_with_dpo_only(tmp_path, capsys):
    path = write(tmp_path)
    assert main(["cycle", "--config", path, "--out", str(tmp_path / "run"), "--dry-run", "--dpo"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"sicog cycle: error: {path}: key '{key}': required (with --dpo); the presets in sicog/configs/cycle_*.yaml "
        "show values" for key in ("dpo_steps", "dpo_lr")]
    path = write(tmp_path, dpo_steps=10, dpo_lr=1e-4)
    assert main(["cycle", "--config", path, "--out", str(tmp_path / "run"), "--dry-run", "--dpo"]) == 0


@pytest.mark.parametrize("key, settings, message", [
    ("generate", {"compile": "maybe"},
     "key 'generate': setting 'compile': unrecognized arguments: maybe (as `sicog generate` reads it)"),
    ("generate", {"cache": "huge"}, "key 'generate': setting 'cache': argument --cache: invalid choice: 'huge'"),
    ("train", {"bf16": "yes_please"}, "key 'train': setting 'bf16': argument --bf16: Truthy value expected"),
    ("train", {"max_grad_norm": "high"}, "key 'train': setting 'max_grad_norm': argument --max_grad_norm/"
                                         "--max-grad-norm: invalid float value: 'high' (as `sicog train` reads it)"),
    ("generate", {"top_k": -3}, "key 'generate': setting 'top_k': argument --top-k: must be 0 or more, got -3"),
    ("generate", {"corrupt": "nosuch"}, "key 'generate': setting 'corrupt': argument --corrupt: unknown corruption(s)"),
    ("curate", {"batch_size": "ten"}, "key 'curate': setting 'batch_size': argument --batch-size:"),
    ("curate", {"batch_size": 0}, "key 'curate': setting 'batch_size': argument --batch-size: must be at least 1"),
    ("model", {"resampler_num_queries": "many"}, "key 'model': setting 'resampler_num_queries': argument "
                                                 "--resampler_num_queries/--resampler-num-queries: invalid "
                                                 "positive_int value: 'many'"),
])
def test_passed_on_values_are_parsed_by_their_commands_when_the_file_is_read(tmp_path, key, settings, message):
    path = write(tmp_path, **{key: settings})
    refused(tmp_path, path, message)
    assert not (tmp_path / "run").exists()  # refused before anything ran, the dry run's reading included


def test_every_bad_passed_on_value_is_named_and_good_ones_pass(tmp_path):
    path = write(tmp_path, generate={"compile": "maybe", "dtype": "float32"}, train={"bf16": "yes_please",
                                                                                    "bf16_full_eval": True})
    with pytest.raises(ConfigError) as err:
        load_checked(path)
    assert [line.split(": ")[1] for line in str(err.value).splitlines()] == ["key 'train'", "key 'generate'"]
    assert load_checked(write(tmp_path, generate={"compile": True, "cache": "static"}, train={"bf16": True}))


def test_a_toy_config_starts_from_the_toy_preset_and_may_name_another(tmp_path, monkeypatch):
    """A file setting only `world_seed` is the toy demo on another world; `preset: quick` starts from quick;
    a real-data file starts from nothing (its left-out settings take the commands' defaults)."""
    seed_only = tmp_path / "seed.yaml"
    seed_only.write_text("world_seed: 3\n")
    toy = load_config("toy")
    assert load_config(str(seed_only)) == dataclasses.replace(toy, world_seed=3)
    quick = tmp_path / "quick.yaml"
    quick.write_text("preset: quick\nworld_seed: 2\nstage2_steps: 5\n")
    assert load_config(str(quick)) == dataclasses.replace(load_config("quick"), world_seed=2, stage2_steps=5)
    copy = tmp_path / "copy.yaml"  # a copy of the quick preset, edited or not, is the quick run
    copy.write_text((resources.files("sicog.configs") / "cycle_quick.yaml").read_text())
    assert load_config(str(copy)) == load_config("quick")
    real = load_config(write(tmp_path))
    assert real.unlabeled_images_limit is None and real.caption_max_new_tokens is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: demo\n")
    refused(tmp_path, str(bad), "key 'preset': one of toy, quick, paper, got 'demo'")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").mkdir()  # a folder named like a preset (an earlier --out toy) does not hide it
    assert load_config("toy") == toy


def test_a_section_adds_to_its_presets_setting_by_setting_and_null_removes_one(tmp_path):
    """`train: {report_to: tensorboard}` over the paper preset replaced its whole train section: no bf16, no DeepSpeed,
    and over the toy preset `train: {bf16: false}` dropped the frozen tower's tunable_parts."""
    paper = load_config("paper")
    mine = load_config(write(tmp_path, preset="paper", train={"report_to": "tensorboard", "deepspeed": None},
                             curate={"batch_size": 64}))
    assert mine.train == {**{k: v for k, v in paper.train.items() if k != "deepspeed"}, "report_to": "tensorboard"}
    assert mine.curate == {**paper.curate, "batch_size": 64} and mine.model == paper.model
    toy_file = tmp_path / "toy.yaml"
    toy_file.write_text("train: {bf16: false}\nmodel: {resampler_num_queries: 16}\ngenerate: {compile: false}\n")
    toy, edited = load_config("toy"), load_config(str(toy_file))
    assert edited.train == {**toy.train, "bf16": False} and edited.model == {**toy.model, "resampler_num_queries": 16}
    assert edited.generate == {**toy.generate, "compile": False} and "tunable_parts" in edited.train
    # Without a preset, null is the command's default too: no "--deepspeed None" flag.
    assert load_config(write(tmp_path, train={"deepspeed": None, "bf16": True})).train == {"bf16": True}
    # A section of null drops the preset's; {} (which dropped it before sections were merged) is refused, naming both.
    toy_file.write_text("train: null\nmodel: {resampler_num_queries: 16}\n")
    assert load_config(str(toy_file)).train == {}
    toy_file.write_text("curate: {}\n")  # a section the preset does not set: nothing to drop
    assert load_config(str(toy_file)).curate == {}
    toy_file.write_text("model: {}\ntrain: {group_by_modality_length: true}\n")  # an old copy of cycle_quick.yaml
    refused(tmp_path, str(toy_file), "key 'model': {} adds nothing to the toy preset's model settings "
            "(resampler_pooling); write model: null to drop them, or leave the key out")


def test_model_paths_are_read_beside_the_file_that_names_them_and_hub_ids_stay_ids(tmp_path, monkeypatch):
    """The paper preset's ../../model_weight paths were read from the working folder (a copy there was taken), as
    were a preset's paths for a file that starts from it."""
    (tmp_path / "model_weight" / "clip-vit-large-patch14-336").mkdir(parents=True)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # where ../../model_weight/clip-vit-large-patch14-336 is there
    beside_preset = resources.files("sicog.configs") / "../../model_weight"
    paper = load_config("paper")
    assert (paper.vision_tower, paper.language_model) == (str(beside_preset / "clip-vit-large-patch14-336"),
                                                          str(beside_preset / "Qwen2-7B-Instruct"))
    mine = tmp_path / "mine.yaml"
    mine.write_text("preset: paper\nvision_tower: openai/clip-vit-large-patch14-336\n")
    config = load_config(str(mine))
    assert (config.vision_tower, config.language_model) == ("openai/clip-vit-large-patch14-336",
                                                            paper.language_model)
    relative = load_config(write(tmp_path, vision_tower="../towers/clip"))
    assert relative.vision_tower == str(tmp_path / "../towers/clip")
    # The encoder and a DeepSpeed file too (they were read from the working folder, and failed after stage 2).
    (tmp_path / "models" / "enc").mkdir(parents=True)
    beside = load_config(write(tmp_path, encoder="models/enc", train={"deepspeed": "ds.json"},
                               model={"projector": "proj/projector.bin"}))
    assert (beside.encoder, beside.train["deepspeed"]) == (str(tmp_path / "models/enc"), str(tmp_path / "ds.json"))
    assert beside.model["projector"] == str(tmp_path / "proj/projector.bin")
    inline = '{"zero_optimization": {"stage": 2}}'  # DeepSpeed's config as text stays text
    assert load_config(write(tmp_path, train={"deepspeed": inline})).train["deepspeed"] == inline
    kept = load_config(write(tmp_path, encoder="sentence-transformers/all-MiniLM-L6-v2", train={"deepspeed": "zero3"}))
    assert (kept.encoder, kept.train["deepspeed"]) == ("sentence-transformers/all-MiniLM-L6-v2", "zero3")
    # "owner/name" is a Hub id unless a folder of that name is beside the file
    (tmp_path / "towers" / "clip").mkdir(parents=True)
    monkeypatch.chdir("/")
    assert load_config(write(tmp_path, vision_tower="towers/clip")).vision_tower == str(tmp_path / "towers" / "clip")
    # A path written as one and not there yet stays a path, also with the config named relative to the working folder:
    # "./towers/other" beside "cycle.yaml" was taken for the Hub id "towers/other", and never reported missing.
    monkeypatch.chdir(tmp_path)
    named = Path(write(tmp_path, vision_tower="./towers/other")).name
    assert load_config(named).vision_tower == str(tmp_path / "towers" / "other")
    # ".." beside a config in a linked folder is the linked folder's parent, as the system reads it.
    (tmp_path / "real" / "configs").mkdir(parents=True)
    (tmp_path / "real" / "clip").mkdir()
    (tmp_path / "linked").symlink_to(tmp_path / "real" / "configs")
    linked = write(tmp_path / "linked", vision_tower="../clip")
    assert os.path.isdir(load_config(linked).vision_tower)


@pytest.mark.parametrize("dry_run", [True, False])
def test_an_out_that_is_a_file_or_lies_in_one_is_one_line(tmp_path, capsys, dry_run):
    """A run stopped with a traceback (FileExistsError), and a dry run planned a run that could not start."""
    (tmp_path / "afile").write_text("")
    for out, says in ((tmp_path / "afile", "is a file, not a folder"),
                      (tmp_path / "afile" / "run", f"cannot be made a folder ({tmp_path / 'afile'} is a file)")):
        assert main(["cycle", "--quick", "--out", str(out), *(["--dry-run"] if dry_run else [])]) == 2
        assert capsys.readouterr().err == f"error: --out {out} {says}\n"
