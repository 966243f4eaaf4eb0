"""The cycle engine: cache keys that follow exactly what each step reads, failures that stop only their
dependants, and the plan as data."""

import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from zombies import zombie

import sicog
from sicog.cycle.config import CycleConfig, load_config
from sicog.cycle.engine import (
    CycleFailed,
    Engine,
    Input,
    Joined,
    Out,
    Plan,
    Ref,
    Step,
    code_fingerprint,
    library_versions,
)
from sicog.cycle.flags import DPO_SCHEDULE
from sicog.cycle.plan import plan_seed
from sicog.cycle.world import make_world
from sicog.data.lock import OutputLocked, lock_path, output_lock

TRAIN = "stage1 A_stage2 stage0_perception stage0_reasoning B_stage15 B_stage2 C_stage15 C_stage2 D_stage15 D_stage2 " \
        "E_stage15 E_stage2"
GENERATE = "generate_captions generate_reasoning"
CURATE = "curate_captions curate_reasoning"
EVALS = " ".join(f"{kind}_{arm}" for kind in ("eval", "blind", "letters", "open", "perception", "captions",
                                                 "image_use")
                 for arm in "ABCDE")
# Every cycle setting -> (a changed value, the steps whose own command it enters). A new setting fails
# test_every_setting_is_covered until it is listed here.
CHANGES = {
    "name": ("other", ""),
    # Another world: every step reads it, except the head of the image-only pool, whose records (ids and
    # paths) are the same in both worlds (the images differ, and every step reading them reruns), and the
    # toy language's synonym table.
    "world_seed": (1, "ALL-pool_unlabeled_images-open_synonyms"),
    "toy_size": ("demo", "ALL-open_synonyms"),
    "unlabeled_images_limit": (3, "pool_unlabeled_images pool_unlabeled_web pool_oracle_captions"),
    "unlabeled_questions_limit": (3, "pool_unlabeled_questions pool_oracle_reasoning"),
    "batch_size": (3, TRAIN),
    "stage1_batch_size": (3, "stage1"),
    "stage1_steps": (5, "stage1"),
    "stage1_lr": (1e-4, "stage1"),
    "stage1_tunable_parts": ("resampler", "stage1"),
    "stage0_steps": (5, "stage0_perception stage0_reasoning"),
    "stage15_steps": (5, "B_stage15 C_stage15 D_stage15 E_stage15"),
    "stage2_steps": (5, "A_stage2 B_stage2 C_stage2 D_stage2 E_stage2"),
    "finetune_lr": (1e-4, TRAIN.replace("stage1 ", "")),
    "dpo_steps": (5, ""),  # no DPO arm in this plan (see test_dpo_settings_change_arm_f_only)
    "dpo_lr": (1e-4, ""),
    "train": ({"max_grad_norm": 0.5}, TRAIN),
    "model": ({"resampler_attention": "global"}, "stage1"),
    "caption_candidates": (2, "generate_captions"),
    "reasoning_candidates": (2, "generate_reasoning"),
    "caption_temperature": (0.5, "generate_captions"),
    "reasoning_temperature": (0.5, "generate_reasoning"),
    "top_p": (0.5, GENERATE),
    "generation_batch_size": (2, GENERATE),
    "generate": ({"cache": "dynamic"}, GENERATE),  # the quick preset generates with a static cache
    "caption_max_new_tokens": (20, "generate_captions " + " ".join(f"captions_{a}" for a in "ABCDE")),
    "reasoning_max_new_tokens": (20, "generate_reasoning"),
    "caption_threshold": (0.6, "curate_captions"),
    "reasoning_threshold": (0.6, "curate_reasoning"),
    "min_agreement": (0.7, "curate_reasoning"),
    "curate": ({"batch_size": 7}, CURATE),
    "eval_batch_size": (3, EVALS),
    "launcher": (["python"], f"{TRAIN} {GENERATE} {CURATE} {EVALS}"),
    "threads": (2, "ALL"),
}
# The training schedule every config names (sicog.cycle.config.REQUIRED).
SCHEDULE = {"batch_size": 2, "stage1_steps": 2, "stage1_lr": 1e-3, "stage0_steps": 2, "stage15_steps": 2,
            "stage2_steps": 2, "finetune_lr": 1e-4}
# Settings of a real-data cycle, changed on a real config (see test_real_world_inputs_are_hashed_by_content).
REAL_ONLY = {"data", "vision_tower", "language_model"}
# Settings that change which steps there are, each with a test of its own.
RESHAPING = {"encoder", "embed_command"}


def keys_of(config: CycleConfig, out: Path, dpo: bool = False) -> tuple[dict[str, str], Plan]:
    world = make_world(config, out)
    seed_plan = plan_seed(config, world, 0, dpo=dpo)
    engine = Engine(out / "seed0", threads=config.threads, launcher=config.launcher, anchor=out)
    return engine.compute_keys(seed_plan.plan), seed_plan.plan


@pytest.fixture(scope="module")
def quick_keys(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    return out, load_config("quick"), *keys_of(load_config("quick"), out)


def test_every_setting_is_covered():
    assert set(CHANGES) | REAL_ONLY | RESHAPING | {"arms"} == {f.name for f in dataclasses.fields(CycleConfig)}


def test_the_toy_encoder_is_two_steps_before_curation_and_a_sentence_encoder_none(quick_keys):
    out, config, base, plan = quick_keys
    assert config.encoder == "toy-facts"
    embed = {f"{step}_{part}" for step in CURATE.split() for part in ("texts", "embed")}
    assert embed <= set(plan.steps)
    assert plan.steps["curate_captions_embed"].argv[:3] == ("toy", "embed", "captions")
    keys, changed_plan = keys_of(dataclasses.replace(config, encoder="/some/encoder"), out)
    assert set(changed_plan.steps) == set(plan.steps) - embed
    assert {name for name in changed_plan.steps if keys[name] != base[name]} == plan.downstream(CURATE.split())
    assert "/some/encoder" in changed_plan.steps["curate_captions"].argv


def test_an_encoder_run_apart_is_two_steps_before_curation_and_takes_the_encoders_settings(quick_keys):
    out, config, _, _ = quick_keys
    apart = dataclasses.replace(config, encoder="/some/encoder", embed_command=["/envs/nvembed/bin/python"],
                                curate={"batch_size": 7, "chunk_size": 64, "include_self": False})
    keys, plan = keys_of(apart, out)
    for task in ("captions", "reasoning"):
        embed, curate = plan.steps[f"curate_{task}_embed"], plan.steps[f"curate_{task}"]
        assert embed.program == ("/envs/nvembed/bin/python", "-m", "sicog.curate.embed_file")
        assert embed.argv[-6:] == ("--encoder", "/some/encoder", "--batch-size", "7", "--chunk-size", "64")
        assert curate.argv[curate.argv.index("--embeddings") + 1] == Ref(f"curate_{task}_embed", "embeddings.npy")
        assert "--no-include-self" in curate.argv
        assert not {"--batch-size", "--chunk-size", "--encoder"} & set(curate.argv)
    # Another environment may embed otherwise: the embeddings, and what reads them, are made again.
    other, _ = keys_of(dataclasses.replace(apart, embed_command=["/envs/other/bin/python"]), out)
    assert {name for name in keys if other[name] != keys[name]} == plan.downstream(
        ["curate_captions_embed", "curate_reasoning_embed"])
    # Where its torchrun's processes meet is no part of a key, as for the launcher.
    ranks = ["/envs/nvembed/bin/python", "-m", "torch.distributed.run", "--nproc_per_node=2"]
    met = [keys_of(dataclasses.replace(apart, embed_command=[*ranks, *endpoint]), out)[0]
           for endpoint in (["--rdzv_endpoint=node0:29500"], ["--rdzv_endpoint", "node1:29501"])]
    assert met[0] == met[1] != keys


def test_a_program_step_imports_this_package_from_the_run_folder(tmp_path):
    """Another environment's Python imports this package, and none of this environment's libraries, from a folder
    that holds only a link to it (-S: no site-packages, as a Python that never installed SICOG; -P: nor the working
    folder, which is this checkout here)."""
    code = "import sys, sicog; open(sys.argv[1], 'w').write(sicog.__file__)"
    plan = Plan([Step("where", (Out("where.txt"),), program=(sys.executable, "-S", "-P", "-c", code))])
    Engine(tmp_path / "run", progress=False).run(plan)
    where = Path((tmp_path / "run" / "where" / "where.txt").read_text())
    assert where == tmp_path / "run" / ".sicog_path" / "sicog" / "__init__.py"
    assert where.resolve() == Path(sicog.__file__).resolve()
    assert os.listdir(tmp_path / "run" / ".sicog_path") == ["sicog"]
    log = (tmp_path / "run" / "where" / "log.txt").read_text()
    assert log.startswith(f"$ {sys.executable} -S -P -c ")


def test_a_program_step_expands_its_variables_keeps_the_users_pythonpath_and_replaces_a_stale_link(tmp_path,
                                                                                                  monkeypatch):
    """The paper preset's program is "${SICOG_EMBED_PYTHON}"; a run folder made by another checkout links to that
    checkout's package, which the program must not import; the user's own PYTHONPATH still reaches the program."""
    monkeypatch.setenv("SICOG_TEST_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", "/opt/user-modules")
    other = tmp_path / "other_checkout" / "sicog"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    (tmp_path / "run" / ".sicog_path").mkdir(parents=True)
    (tmp_path / "run" / ".sicog_path" / "sicog").symlink_to(other, target_is_directory=True)
    code = "import os, sys, sicog; open(sys.argv[1], 'w').write(sicog.__file__ + '\\n' + os.environ['PYTHONPATH'])"
    plan = Plan([Step("where", (Out("where.txt"),), program=("${SICOG_TEST_PYTHON}", "-S", "-P", "-c", code))])
    Engine(tmp_path / "run", progress=False).run(plan)
    imported, pythonpath = (tmp_path / "run" / "where" / "where.txt").read_text().split("\n")
    assert Path(imported).resolve() == Path(sicog.__file__).resolve()
    assert pythonpath.split(os.pathsep) == [str(tmp_path / "run" / ".sicog_path"), "/opt/user-modules"]


def test_an_encoder_run_apart_curates_as_one_process_does(quick_keys, tmp_path):
    """The planned steps run for real: embed_command's Python (this one, standing in for another environment's)
    embeds the texts, and curation keeps and scores what `sicog curate` with the encoder in it does."""
    from test_curate_pipeline import caption_record

    from sicog.cli import main
    from sicog.curate.embed import packaged_minilm_path
    from sicog.data.jsonl import load_records, write_jsonl

    out, config, _, _ = quick_keys
    encoder = packaged_minilm_path()
    apart = dataclasses.replace(config, encoder=encoder, embed_command=[sys.executable], curate={"device": "cpu"})
    _, full = keys_of(apart, out)
    captions = ["A red circle sits left of a blue square.", "A red circle is to the left of a blue square.",
                "Two green birds fly over a dark lake.", "A blue square lies right of a red circle."]
    write_jsonl(tmp_path / "candidates.jsonl", [caption_record(f"r{i}", captions[i:] + captions[:i]) for i in range(4)])
    plan = Plan([Step("generate_captions", ("data", "head", "--input", Input(str(tmp_path / "candidates.jsonl")),
                                            "--output", Out("generated.jsonl"), "--limit", "4"))])
    for name in ("curate_captions_texts", "curate_captions_embed", "curate_captions"):
        plan.add(full.steps[name])
    engine = Engine(tmp_path / "run", progress=False)
    engine.run(plan)
    argv = engine.command(full.steps["curate_captions"])
    at = argv.index("--embeddings")
    argv[at:at + 2] = ["--encoder", encoder, "--device", "cpu"]
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "one")
    assert main(argv) == 0
    apart_scored = load_records(tmp_path / "run" / "curate_captions" / "scored.jsonl")
    assert [r["scores"] for r in apart_scored] == [r["scores"] for r in load_records(tmp_path / "one" / "scored.jsonl")]
    assert len(apart_scored) == 4
    for name in ("curated.jsonl", "pairs.jsonl"):
        assert (tmp_path / "run" / "curate_captions" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_where_launched_processes_meet_is_no_part_of_a_key(quick_keys, monkeypatch):
    """A new rendezvous port reran (and removed) every launched step; the process count is what changes results."""
    out, config, _, _ = quick_keys
    launcher = ["torchrun", "--nproc_per_node=2", "--rdzv_endpoint=node0:29500"]
    keys, plan = keys_of(dataclasses.replace(config, launcher=launcher), out)
    moved, _ = keys_of(dataclasses.replace(config, launcher=[*launcher[:2], "--rdzv_endpoint=n1:29501", "--rdzv_id=x"]),
                       out)
    assert moved == keys
    launched = plan.downstream([name for name, step in plan.steps.items() if step.launched])
    more, _ = keys_of(dataclasses.replace(config, launcher=["torchrun", "--nproc_per_node=4"]), out)
    assert {name for name in keys if more[name] != keys[name]} == launched
    # Any launcher's counts, also those read from the environment when a step starts.
    srun = [keys_of(dataclasses.replace(config, launcher=["srun", f"--ntasks={n}", "python"]), out)[0] for n in (4, 8)]
    assert {name for name in srun[0] if srun[0][name] != srun[1][name]} == launched
    from_env = dataclasses.replace(config, launcher=["torchrun", "--nproc_per_node=$SICOG_TEST_PROCESSES"])
    monkeypatch.setenv("SICOG_TEST_PROCESSES", "4")
    four, _ = keys_of(from_env, out)
    monkeypatch.setenv("SICOG_TEST_PROCESSES", "8")
    assert {name for name in four if keys_of(from_env, out)[0][name] != four[name]} == launched


def test_settings_become_flags_in_name_order_and_switches_by_their_own_flags(quick_keys):
    out, config, base, _ = quick_keys
    settings = {"max_grad_norm": 0.5, "adam_beta2": 0.99}
    keys, _ = keys_of(dataclasses.replace(config, train=settings), out)
    assert keys_of(dataclasses.replace(config, train=dict(reversed(settings.items()))), out)[0] == keys
    _, plan = keys_of(dataclasses.replace(config, generate={**config.generate, "shared_prefill": False}), out)
    assert "--no-shared-prefill" in plan.steps["generate_captions"].argv


def test_open_answers_read_the_toy_synonyms(quick_keys):
    _, _, _, plan = quick_keys
    argv = plan.steps["open_D"].argv
    assert argv[argv.index("--mc-scoring") + 1] == "open"
    assert argv[argv.index("--synonyms") + 1] == Ref("open_synonyms", "synonyms.json")
    assert plan.steps["open_synonyms"].argv[:2] == ("toy", "synonyms")


# toy_size builds the demo world (seconds): marked slow.
@pytest.mark.parametrize("setting", [pytest.param(s, marks=pytest.mark.slow) if s == "toy_size" else s
                                     for s in sorted(CHANGES)])
def test_a_setting_reruns_exactly_the_steps_that_depend_on_it(setting, quick_keys):
    out, config, base, plan = quick_keys
    value, direct = CHANGES[setting]
    changed_config = dataclasses.replace(config, **{setting: value})
    keys, changed_plan = keys_of(changed_config, out / "changed" if setting in ("world_seed", "toy_size") else out)
    assert list(changed_plan.steps) == list(plan.steps)
    if direct.startswith("ALL"):
        expected = set(plan.steps) - set(direct.split("-")[1:])
    else:
        expected = plan.downstream(direct.split())
    assert {name for name in plan.steps if keys[name] != base[name]} == expected
    if direct and not direct.startswith("ALL"):
        assert expected != set(plan.steps) and expected >= set(direct.split())


def test_arms_add_and_remove_steps_without_touching_the_others(quick_keys):
    out, config, base, plan = quick_keys
    keys, _ = keys_of(dataclasses.replace(config, arms=("A", "B", "D")), out)
    assert set(base) - set(keys) == {n for n in base if n.startswith(("C_", "E_")) or n[-2:] in ("_C", "_E")}
    assert all(keys[name] == base[name] for name in keys)


def test_dpo_settings_change_arm_f_only(quick_keys):
    out, config, _, _ = quick_keys
    base, plan = keys_of(config, out, dpo=True)
    for setting, value in (("dpo_steps", 5), ("dpo_lr", 1e-4)):
        keys, _ = keys_of(dataclasses.replace(config, **{setting: value}), out, dpo=True)
        assert {n for n in base if keys[n] != base[n]} == plan.downstream(["F_stage2"]) == {
            "F_stage2", "eval_F", "blind_F", "letters_F", "open_F", "perception_F", "captions_F", "image_use_F"}
    argv = plan.steps["F_stage2"].argv  # DPO's schedule, as the DPO script's (the fine-tuning one was used)
    assert [argv[argv.index(f"--{name}") + 1] for name in DPO_SCHEDULE] == list(DPO_SCHEDULE.values())


def test_augmentation_reaches_every_training_step_but_dpo(quick_keys):
    """`train: {augment: release}` went to arm F too, whose `sicog train --stage dpo` refuses it: its step failed."""
    out, config, _, _ = quick_keys
    _, plan = keys_of(dataclasses.replace(config, train={**config.train, "augment": "release"}), out, dpo=True)
    training = {name: step.argv for name, step in plan.steps.items() if step.argv[0] == "train"}
    assert [name for name, argv in training.items() if "--augment" not in argv] == ["F_stage2"]


def real_config(world: Path, vision_tower: str, language_model: str) -> CycleConfig:
    """A real-data config on the toy world's files."""
    data = {k: str(world / f) for k, f in (("align", "align.jsonl"), ("cod", "cod.jsonl"), ("cot", "cot.jsonl"),
                                           ("sft", "sft.jsonl"), ("unlabeled_images", "unlabeled_images.jsonl"),
                                           ("unlabeled_questions", "unlabeled_questions.jsonl"),
                                           ("unlabeled_web", "unlabeled_web.jsonl"), ("bench_mc", "bench_mc.tsv"))}
    data["image_folder"] = str(world / "images")
    return CycleConfig(name="real", toy_size=None, data=data, vision_tower=vision_tower,
                       language_model=language_model, arms=("A", "B", "C", "D"), **SCHEDULE)


def test_real_world_inputs_are_hashed_by_content(quick_keys, tmp_path):
    out, _, _, _ = quick_keys
    for name in ("vision", "llm"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(f'{{"part": "{name}"}}')
    real = real_config(out / "world", str(tmp_path / "vision"), str(tmp_path / "llm"))
    data = real.data
    base, plan = keys_of(real, tmp_path / "run")
    moved = tmp_path / "moved_sft.jsonl"
    shutil.copy(data["sft"], moved)  # same content elsewhere: nothing reruns
    keys, _ = keys_of(dataclasses.replace(real, data={**data, "sft": str(moved)}), tmp_path / "run")
    assert keys == base
    with moved.open("a") as handle:
        turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
        handle.write(json.dumps({"id": "extra", "conversations": turns}) + "\n")
    keys, _ = keys_of(dataclasses.replace(real, data={**data, "sft": str(moved)}), tmp_path / "run")
    sft_steps = ["A_stage2", "B_stage2", "C_stage2", "D_stage2"]
    assert {n for n in base if keys[n] != base[n]} == plan.downstream(sft_steps)
    (tmp_path / "vision" / "config.json").write_text('{"part": "another vision tower"}')
    keys, _ = keys_of(real, tmp_path / "run")
    changed = {n for n in base if keys[n] != base[n]}
    assert changed == plan.downstream(["stage1"]) and "eval_D" in changed and "B_mixture" not in changed
    assert "open_synonyms" not in plan.steps and "--synonyms" not in plan.steps["open_D"].argv
    # A dataset named by a YAML mixture or a comma list is hashed by every file it reads: an edited entry reruns.
    (tmp_path / "vision" / "config.json").write_text('{"part": "vision"}')
    part = tmp_path / "sft_part.jsonl"
    shutil.copy(data["sft"], part)
    mixture = tmp_path / "sft.yaml"
    mixture.write_text(f"datasets:\n  - json_path: {part.name}\n")
    # A Hub dataset id among them enters the key by its name; a mixture not there yet is listed as missing.
    hub = dataclasses.replace(real, data={**data, "sft": f"{part},owner/set:train"})
    hub_keys, hub_plan = keys_of(hub, tmp_path / "run")
    other = keys_of(dataclasses.replace(real, data={**data, "sft": f"{part},owner/other:train"}), tmp_path / "run")[0]
    assert {n for n in hub_keys if other[n] != hub_keys[n]} == plan.downstream(sft_steps)
    later = dataclasses.replace(real, data={**data, "sft": f"{part},{tmp_path / 'later.yaml'}"})
    engine = Engine(tmp_path / "run" / "seed0", anchor=tmp_path / "run")
    assert engine.missing_inputs(plan_seed(later, make_world(later, tmp_path / "run"), 0).plan) == [
        str(tmp_path / "later.yaml")]
    for value in (str(mixture), f"{part},{data['cod']}"):
        with_parts = dataclasses.replace(real, data={**data, "sft": value})
        before, _ = keys_of(with_parts, tmp_path / "run")
        with part.open("a") as handle:
            handle.write(json.dumps({"id": f"more{len(value)}", "conversations": turns}) + "\n")
        after, _ = keys_of(with_parts, tmp_path / "run")
        assert {n for n in before if after[n] != before[n]} == plan.downstream(sft_steps), value


def test_hub_ids_of_the_starting_models_and_a_lone_hub_dataset_enter_keys_by_name(quick_keys, tmp_path):
    """They were taken for files: the run stopped on them as inputs not there (exit 2)."""
    out, _, _, _ = quick_keys
    real = real_config(out / "world", "openai/clip-vit-large-patch14-336", "Qwen/Qwen2-7B-Instruct")
    real = dataclasses.replace(real, data={**real.data, "sft": "lmms-lab/LLaVA-NeXT-Data"})
    base, plan = keys_of(real, tmp_path / "run")
    engine = Engine(tmp_path / "run" / "seed0", anchor=tmp_path / "run")
    assert engine.missing_inputs(plan) == []
    other_model, _ = keys_of(dataclasses.replace(real, language_model="Qwen/Qwen2-1.5B-Instruct"), tmp_path / "run")
    assert {n for n in base if other_model[n] != base[n]} == plan.downstream(["stage1"])
    other_data, _ = keys_of(dataclasses.replace(real, data={**real.data, "sft": "owner/other"}), tmp_path / "run")
    assert {n for n in base if other_data[n] != base[n]} == plan.downstream(
        ["A_stage2", "B_stage2", "C_stage2", "D_stage2"])


def test_an_edited_toy_world_file_reruns_only_the_steps_that_read_it(tmp_path):
    """The toy parts hashed the whole world folder: a benchmark edited by one line reran the parts and every step
    trained from them (61 of the quick cycle's 69 steps instead of its 20 multiple-choice evaluations)."""
    config = load_config("quick")
    base, plan = keys_of(config, tmp_path)
    bench = tmp_path / "world" / "bench_mc.tsv"
    header, first, *rest = bench.read_text().splitlines(keepends=True)
    index, image, question, *others = first.split("\t")
    bench.write_text(header + "\t".join([index, image, f"(edited) {question}", *others]) + "".join(rest))
    keys, _ = keys_of(config, tmp_path)
    assert {n for n in base if keys[n] != base[n]} == {f"{kind}_{arm}" for kind in ("eval", "blind", "letters", "open")
                                                       for arm in "ABCDE"}
    # What the parts and the image-use references do read still reruns them.
    for name, step in (("bench_caption.jsonl", "image_use_references"), ("ground_truth.jsonl", "image_use_references"),
                       ("tokenizer", "parts")):
        path = tmp_path / "world" / name
        edited = next(p for p in sorted(path.iterdir()) if p.is_file()) if path.is_dir() else path
        edited.write_bytes(edited.read_bytes() + b"\n")
        keys, _ = keys_of(config, tmp_path)
        assert step in {n for n in base if keys[n] != base[n]}, name


def _head(name: str, source) -> Step:
    return Step(name, ("data", "head", "--input", source, "--output", Out("out.jsonl"), "--limit", "1"))


def test_a_failed_step_stops_its_dependants_and_the_rest_runs(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": 1}\n{"id": 2}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    plan = Plan([_head("first", Input(str(good))), _head("broken", Input(str(bad))),
                 _head("after_broken", Ref("broken", "out.jsonl")), _head("after_first", Ref("first", "out.jsonl"))])
    engine = Engine(tmp_path / "run", jobs=2, progress=False)
    with pytest.raises(CycleFailed) as failed:
        engine.run(plan)
    assert set(failed.value.failures) == {"broken", "after_broken"}
    assert "needs broken" in failed.value.failures["after_broken"]
    assert (tmp_path / "run" / "after_first" / "out.jsonl").read_text() == '{"id": 1}\n'
    assert "bad.jsonl:1" in (tmp_path / "run" / "broken" / "log.txt").read_text()
    steps = Engine(tmp_path / "run").manifest["steps"]
    assert steps["first"]["status"] == steps["after_first"]["status"] == "done"
    assert steps["broken"]["status"] == "failed"


# A launcher that notes each launched step's start and end in a shared file, holding the step a while so that two
# launched at once overlap, then runs the step as torchrun would.
LAUNCHER = """
import os, subprocess, sys, time
log = sys.argv[1]
with open(log, "a") as f:
    f.write("start\\n")
time.sleep(2)
code = subprocess.run([sys.executable, *sys.argv[2:]]).returncode
with open(log, "a") as f:
    f.write("end\\n")
sys.exit(code)
"""


def test_launched_steps_run_one_at_a_time_beside_the_others(tmp_path):
    """Two at once met at one fixed rendezvous endpoint (or shared the GPUs) and failed. A step run as a program
    (the curation encoder's own environment, on a GPU) takes the devices as a launched one does."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n')
    (tmp_path / "launcher.py").write_text(LAUNCHER)
    log = tmp_path / "launches.txt"
    launcher = [sys.executable, str(tmp_path / "launcher.py"), str(log)]
    launched = [dataclasses.replace(_head(name, Input(str(source))), launched=True) for name in ("a", "b", "c")]
    program = Step("embed", ("-c", "import sys; open(sys.argv[1], 'w').write('done')", Out("out.txt")),
                   program=tuple(launcher))
    engine = Engine(tmp_path / "run", jobs=3, progress=False, launcher=launcher)
    engine.run(Plan([*launched, program, _head("plain", Input(str(source)))]))
    assert log.read_text() == "start\nend\n" * 4
    assert all((tmp_path / "run" / name / "out.jsonl").is_file() for name in ("a", "b", "c", "plain"))
    assert (tmp_path / "run" / "embed" / "out.txt").read_text() == "done"
    # Without a launcher, programs still take the devices one at a time (the two embedding steps ran at once).
    log.unlink()
    programs = [dataclasses.replace(program, name=name) for name in ("embed_captions", "embed_reasoning")]
    Engine(tmp_path / "alone", jobs=2, progress=False).run(Plan(programs))
    assert log.read_text() == "start\nend\n" * 2


def test_a_missing_input_is_named_before_anything_runs(tmp_path):
    engine = Engine(tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="missing.jsonl does not exist"):
        engine.run(Plan([_head("first", Input(str(tmp_path / "missing.jsonl")))]))
    assert not (tmp_path / "run" / "first").exists()


def test_one_run_per_seed_folder_and_a_killed_runs_step_locks_are_cleared(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n')
    plan = Plan([_head("first", Input(str(source)))])
    engine = Engine(tmp_path / "run", progress=False)
    with output_lock(tmp_path / "run", folder=True):
        with pytest.raises(OutputLocked, match="in use by another run"):
            engine.run(plan)
    assert not (tmp_path / "run" / "first").exists()
    # A run killed inside the step leaves the step's output lock; the next run of the seed holds the seed
    # folder, so that lock cannot belong to a live step.
    (tmp_path / "run" / "first").mkdir()
    lock_path(tmp_path / "run" / "first" / "out.jsonl").write_text(f"{os.getpid()}\nthis-host\n")
    engine.run(plan)
    assert sorted(p.name for p in (tmp_path / "run" / "first").iterdir()) == ["log.txt", "out.jsonl"]
    assert not lock_path(tmp_path / "run", folder=True).exists()


def test_a_step_lock_a_live_process_here_holds_stops_the_run_and_a_dead_ones_is_taken_over(tmp_path):
    """A cycle whose main process alone was killed leaves its workers running their steps: the rerun must not
    start the same step beside one (both appended to one shard, and every later merge failed)."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n')
    plan = Plan([_head("first", Input(str(source)))])
    engine = Engine(tmp_path / "run", progress=False)
    step = tmp_path / "run" / "first"
    step.mkdir(parents=True)
    with output_lock(step / "out.jsonl"):  # held by a live process on this host
        with pytest.raises(OutputLocked, match=f"^{step} is still being written by pid {os.getpid()} on host "):
            engine.run(plan)
    assert sorted(p.name for p in step.iterdir()) == []
    killed = subprocess.run([sys.executable, "-c", "import os, signal\nfrom sicog.data.lock import output_lock\n"
                             f"held = output_lock({str(step / 'out.jsonl')!r})\nheld.__enter__()\n"
                             "os.kill(os.getpid(), signal.SIGKILL)"])
    assert killed.returncode == -9 and lock_path(step / "out.jsonl").exists()
    engine.run(plan)
    assert sorted(p.name for p in step.iterdir()) == ["log.txt", "out.jsonl"]


def test_a_step_lock_of_a_killed_process_that_nothing_reaped_is_taken_over(tmp_path):
    """A killed cycle's workers, orphaned, stay zombies where the machine's first process does not reap them (a
    container without an init): filelock counts a zombie as alive, and every rerun stopped on its step lock."""
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": 1}\n')
    plan = Plan([_head("first", Input(str(source)))])
    step = tmp_path / "run" / "first"
    step.mkdir(parents=True)
    with zombie(holding_lock_of=step / "out.jsonl") as pid:
        assert lock_path(step / "out.jsonl").read_text().split()[0] == str(pid)
        Engine(tmp_path / "run", progress=False).run(plan)
        assert sorted(p.name for p in step.iterdir()) == ["log.txt", "out.jsonl"]


@pytest.mark.parametrize(("content", "says"), [("{\"steps\": {", "not valid JSON (Expecting"),
                                              ("[1]", "not a JSON object (list)")])
def test_a_damaged_manifest_is_named(tmp_path, content, says):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text(content)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'run' / 'manifest.json'}: {re.escape(says)}"):
        Engine(tmp_path / "run", progress=False)


def test_plan_refuses_unknown_references():
    plan = Plan([_head("a", "x.jsonl")])
    with pytest.raises(ValueError, match="not an earlier step"):
        plan.add(_head("b", Ref("later", "out.jsonl")))
    with pytest.raises(ValueError, match="does not write"):
        plan.add(_head("b", Ref("a", "other.jsonl")))
    with pytest.raises(ValueError, match="defined twice"):
        plan.add(_head("a", "y.jsonl"))


def test_paper_config_dry_run_prints_the_paper_global_batches(tmp_path, capsys, monkeypatch):
    from sicog.cli import main

    monkeypatch.delenv("SICOG_MASTER_ADDR", raising=False)
    monkeypatch.delenv("SICOG_EMBED_PYTHON", raising=False)
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    batches = {line.split(":")[0].split("] ")[1]: line.split("# global batch ")[1].split(" ")[0]
               for line in lines if "# global batch" in line}
    assert batches.pop("stage1") == "256" and set(batches.values()) == {"128"}
    assert set(batches) == {"A_stage2", "stage0_perception", "stage0_reasoning"} | {
        f"{arm}_{stage}" for arm in "BCD" for stage in ("stage15", "stage2")}
    stage1 = next(line for line in lines if line.startswith("[run] stage1:"))
    assert "2180 steps = 558080 samples" in stage1
    # As the published scripts: random batches in stage 1 only, flash-attention and 4 loader workers in every stage.
    training = [line for line in lines if " train --stage " in line]
    assert [("--group_by_modality_length" in line) for line in training] == [line != stage1 for line in training]
    assert all("--attn_implementation flash_attention_2" in line and "--dataloader_num_workers 4" in line
               for line in training)
    *steps, missing, launcher, embedding = lines[1:]
    assert all(line.startswith("[run] ") for line in steps) and not (tmp_path / "seed0").exists()
    assert missing.startswith("# inputs not there (a run stops on them): ") and "/data/MMStar.tsv" in missing
    assert launcher == ("# the launcher reads environment variable(s) that are not set: SICOG_MASTER_ADDR "
                        "(a run stops on it)")
    assert embedding == ("# embed_command reads environment variable(s) that are not set: SICOG_EMBED_PYTHON, "
                         "SICOG_MASTER_ADDR (a run stops on it)")
    # NV-Embed-v2 embeds in its own environment, with the paper's encoder settings; curation reads its embeddings.
    for task in ("captions", "reasoning"):
        embed = next(line for line in steps if line.startswith(f"[run] curate_{task}_embed: "))
        assert embed.split(": ", 1)[1].startswith(
            "srun --nodes=4 --ntasks-per-node=1 '${SICOG_EMBED_PYTHON}' -m torch.distributed.run --nnodes=4 "
            "--nproc_per_node=8 --rdzv_backend=c10d '--rdzv_endpoint=${SICOG_MASTER_ADDR}:29500' "
            "--rdzv_id=sicog-embed -m sicog.curate.embed_file --texts ")
        assert embed.endswith("--encoder /models/NV-Embed-v2 --append-eos --dtype float32 --max-length 1024 "
                              "--padding-side right --trust-remote-code")
        curate = next(line for line in steps if line.startswith(f"[run] curate_{task}: "))
        assert f"--embeddings {tmp_path}/seed0/curate_{task}_embed/embeddings.npy" in curate
        assert "--encoder" not in curate and "--trust-remote-code" not in curate


def test_a_paper_run_names_every_missing_input_and_unset_launcher_variable_at_once(tmp_path, capsys, monkeypatch):
    """It named the first missing input only, or started every launched step with the variable's name as text."""
    from sicog.cli import main

    monkeypatch.delenv("SICOG_MASTER_ADDR", raising=False)
    monkeypatch.delenv("SICOG_EMBED_PYTHON", raising=False)
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("error: the launcher reads environment variable(s) that are not set: "
                                       "SICOG_MASTER_ADDR; embed_command reads environment variable(s) that are not "
                                       "set: SICOG_EMBED_PYTHON, SICOG_MASTER_ADDR\n")
    monkeypatch.setenv("SICOG_MASTER_ADDR", "node0")
    monkeypatch.setenv("SICOG_EMBED_PYTHON", sys.executable)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "error: embed_command starts srun, which is not a program here\n"
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    # The Python it starts, the last word, is checked too: found wrong hours later, after generation, otherwise.
    monkeypatch.setenv("SICOG_EMBED_PYTHON", str(tmp_path / "nvembed" / "bin" / "python"))
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"error: embed_command names {tmp_path}/nvembed/bin/python, which is not there\n"
    monkeypatch.setenv("SICOG_EMBED_PYTHON", sys.executable)
    assert main(["cycle", "--config", "paper", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cycle input(s) not there: ") and err.count("/data/") >= 8 and "MMStar" in err
    assert not (tmp_path / "run" / "seed0").exists()


@pytest.mark.parametrize(("command", "problem"), [
    (["env", "HF_HOME=/scratch/hf_cache", sys.executable], None),
    (["srun", "--container-image", "nvcr.io/nvidia/pytorch:24.01-py3", sys.executable], None),
    ([sys.executable, "-X", "pycache_prefix=/no/such/folder"], None),
    (["bash", "-c", 'source ~/nvembed/bin/activate && exec python "$@"', "embed"], None),
    (["srun", "/no/such/env/bin/python", "-m", "torch.distributed.run", "--rdzv_endpoint=node0:29500"],
     "embed_command names /no/such/env/bin/python, which is not there"),
    (["/no/such/env/bin/python"], "embed_command starts /no/such/env/bin/python, which is not a program here"),
])
def test_embed_commands_are_checked_for_their_program_and_python_alone(quick_keys, tmp_path, monkeypatch, command,
                                                                       problem):
    """Every word holding "/" was taken for a path that must exist: env settings, container images, bind mounts."""
    from sicog.cycle.cli import _command_problems

    (tmp_path / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _, config, _, _ = quick_keys
    apart = dataclasses.replace(config, encoder="/some/encoder", embed_command=command)
    assert _command_problems(apart) == ([problem] if problem else [])


def test_stage1_tunable_parts_win_over_the_train_settings_of_every_stage(quick_keys):
    out, config, _, _ = quick_keys
    changed = dataclasses.replace(config, stage1_tunable_parts="resampler",
                                  train={**config.train, "tunable_parts": "resampler,language_model"})
    _, plan = keys_of(changed, out)

    def parts(step: str) -> list[str]:
        argv = plan.steps[step].argv
        return [argv[i + 1] for i, flag in enumerate(argv) if flag == "--tunable_parts"]

    assert parts("stage1") == ["resampler"]
    assert parts("A_stage2") == parts("D_stage15") == ["resampler,language_model"]


def test_generate_settings_become_flags_and_the_cycles_own_are_refused():
    from sicog.cycle.flags import generate_flags

    flags = generate_flags(CycleConfig(generate={"cache": "static", "compile": True, "dtype": "bfloat16"}))
    assert flags == ["--cache", "static", "--compile", "--dtype", "bfloat16"]
    assert generate_flags(CycleConfig(generate={"compile": False})) == []
    with pytest.raises(ValueError, match=r"key 'generate': setting\(s\) \['temperature'\] are set by the cycle "
                                         r"itself \(temperature: use caption_temperature and reasoning_temperature\)"):
        generate_flags(CycleConfig(generate={"temperature": 1.0}))
    with pytest.raises(ValueError, match=r"key 'generate': unknown setting\(s\) \['kv_cache'\]"):
        generate_flags(CycleConfig(generate={"kv_cache": "static"}))


def _chain(tmp_path: Path, limit: str = "1") -> Plan:
    source = tmp_path / "in.jsonl"
    if not source.exists():
        source.write_text('{"id": 1}\n{"id": 2}\n')
    second = Step("second", ("data", "head", "--input", Ref("first", "out.jsonl"), "--output", Out("out.jsonl"),
                             "--limit", limit))
    return Plan([_head("first", Input(str(source))), second, _head("third", Ref("second", "out.jsonl"))])


def test_which_file_of_a_step_is_read_and_how_files_are_joined_enter_the_key(tmp_path):
    """The plan code is outside the code fingerprint: a step switched to another output of the same step, or to
    another separator, must not reuse what it made before."""
    engine = Engine(tmp_path / "run", progress=False)
    keys = {"first": "k1"}

    def key(*argv) -> str:
        return engine.key(Step("reader", ("data", "head", *argv)), keys=keys)

    assert key("--input", Ref("first", "a.jsonl")) != key("--input", Ref("first", "b.jsonl"))
    parts = (Ref("first", "a.jsonl"), Ref("first", "b.jsonl"))
    assert key("--input", Joined(parts, ",")) != key("--input", Joined(parts, ":"))
    assert key("--input", Joined(parts, ",")) == key("--input", Joined(parts, ","))


def test_the_code_fingerprint_covers_the_package_and_libraries_but_not_the_cycle_or_byte_code(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    for name, text in (("train/run.py", "x = 1\n"), ("configs/zero2.json", "{}"), ("configs/cycle_toy.yaml", "a: 1"),
                       ("cycle/report.py", "y = 1\n"), ("data/prompts.py", "P = 'describe'\n")):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    fingerprint = code_fingerprint.__wrapped__
    base = fingerprint(str(package))
    (package / "cycle" / "report.py").write_text("y = 2\n")  # the report and the cycle's presets make no output
    (package / "configs" / "cycle_toy.yaml").write_text("a: 2")
    (package / "train" / "__pycache__").mkdir()
    (package / "train" / "__pycache__" / "run.cpython-311.pyc").write_bytes(b"\0")
    assert fingerprint(str(package)) == base
    for name, text in (("data/prompts.py", "P = 'describe step by step'\n"), ("configs/zero2.json", '{"a": 1}'),
                       ("train/run.py", "x = 1  # a comment\n")):
        (package / name).write_text(text)
        assert fingerprint(str(package)) != base, name
        base = fingerprint(str(package))
    assert fingerprint() == fingerprint(os.path.dirname(sicog.__file__))  # by default, the installed package
    # An upgraded library or another Python can change what a step computes: it is part of the fingerprint too.
    versions = library_versions()
    assert (versions["python"], versions["torch"]) == (platform.python_version(), torch.__version__)
    for name in ("python", "torch", "transformers"):
        monkeypatch.setattr("sicog.cycle.engine.library_versions", lambda n=name: {**versions, n: "0.0.1"})
        assert fingerprint(str(package)) != base, name


def test_changed_code_reruns_every_step(tmp_path):
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", code="v1", progress=False).run(plan)
    entries = Engine(tmp_path / "run").manifest["steps"]
    assert {entry["code"] for entry in entries.values()} == {"v1"}
    assert Engine(tmp_path / "run", code="v2").pending(plan) == ["first", "second", "third"]
    assert Engine(tmp_path / "run", code="v1").pending(plan) == []


def test_a_code_change_can_be_ignored_on_purpose_and_the_manifest_says_so(tmp_path):
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", code="v1", progress=False).run(plan)
    before = Engine(tmp_path / "run").manifest["steps"]
    # A setting changed as well: that step and what reads it rerun, the rest is kept.
    changed = _chain(tmp_path, limit="2")
    engine = Engine(tmp_path / "run", code="v2", keep_code_changes=True, progress=False)
    assert engine.pending(changed) == ["second", "third"] and set(engine.kept) == {"first"}
    engine.run(changed)
    after = Engine(tmp_path / "run").manifest["steps"]
    assert after["first"]["finished_at"] == before["first"]["finished_at"] and after["first"]["code"] == "v2"
    assert [(k["made_by"], k["kept_for"]) for k in after["first"]["kept_across_code_changes"]] == [("v1", "v2")]
    assert after["second"]["finished_at"] > before["second"]["finished_at"]
    assert "kept_across_code_changes" not in after["second"]
    # Kept once, kept from then on: a plain run of the same code reruns nothing.
    assert Engine(tmp_path / "run", code="v2").pending(changed) == []


def test_a_step_whose_folder_is_gone_is_not_kept_across_a_code_change(tmp_path, monkeypatch):
    """A run of new code killed while it removed the old steps' folders left them "done" in the manifest, and
    --ignore-code-changes then kept them: the run reported success without their outputs."""
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", code="v1", progress=False).run(plan)
    removed, real_rmtree = [], shutil.rmtree

    def killed_after_one(path, **kwargs):
        if removed:
            raise KeyboardInterrupt  # Ctrl-C while the second folder goes
        removed.append(path)
        real_rmtree(path, **kwargs)

    (tmp_path / "run" / "second" / "stale").write_text("")  # what the old second step left
    monkeypatch.setattr(shutil, "rmtree", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        Engine(tmp_path / "run", code="v2", progress=False).run(plan)
    monkeypatch.undo()
    assert not (tmp_path / "run" / "first").exists() and (tmp_path / "run" / "second").exists()
    # Marked before their folders went: none is "done", and the rest of each folder is removed, not resumed.
    assert {e["status"] for e in Engine(tmp_path / "run").manifest["steps"].values()} == {"removing"}
    kept = Engine(tmp_path / "run", code="v2", keep_code_changes=True)
    assert kept.pending(plan) == ["first", "second", "third"] and kept.kept == {}
    Engine(tmp_path / "run", code="v2", progress=False).run(plan)
    assert not (tmp_path / "run" / "second" / "stale").exists()
    assert {e["status"] for e in Engine(tmp_path / "run").manifest["steps"].values()} == {"done"}
    # A folder deleted by hand runs again too, with what reads it.
    shutil.rmtree(tmp_path / "run" / "second")
    assert Engine(tmp_path / "run", code="v3", keep_code_changes=True).pending(plan) == ["second", "third"]


def test_outputs_from_before_keys_had_a_code_fingerprint_can_be_kept(tmp_path):
    plan = _chain(tmp_path)
    old = Engine(tmp_path / "run", code="", progress=False)  # keys as they were made without a fingerprint
    old.run(plan)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    for entry in manifest["steps"].values():
        entry.pop("code")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    assert Engine(tmp_path / "run", code="v2").pending(plan) == ["first", "second", "third"]
    kept = Engine(tmp_path / "run", code="v2", keep_code_changes=True)
    assert kept.pending(plan) == [] and kept.kept == {"first": None, "second": None, "third": None}


def test_a_requested_rerun_survives_until_its_run_starts(tmp_path):
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    before = Engine(tmp_path / "run").manifest["steps"]
    Engine(tmp_path / "run").request_rerun(["second"])  # --from second, then killed before this seed started
    resumed = Engine(tmp_path / "run", progress=False)
    assert resumed.pending(plan) == ["second", "third"]
    resumed.run(plan)
    after = Engine(tmp_path / "run").manifest
    assert after["rerun"] == [] and after["steps"]["first"] == before["first"]
    assert after["steps"]["second"]["finished_at"] > before["second"]["finished_at"]
    assert Engine(tmp_path / "run").pending(plan) == []


def test_a_path_enters_a_key_relative_to_the_run_only_when_it_is_under_the_run(tmp_path):
    """A moved run keeps the keys of its own paths; a folder whose name only begins like the run's is another
    folder, named as it is."""
    keys = {}
    for name in ("run", "moved"):
        engine = Engine(tmp_path / name, progress=False)
        keys[name] = [engine._key_part(arg, {}) for arg in (
            str(tmp_path / name / "images"), f"a.jsonl,{tmp_path / name / 'b.jsonl'}", str(tmp_path / name),
            str(tmp_path / f"{name}_images"), f"/elsewhere{tmp_path / name}/x")]
    assert keys["run"][:3] == keys["moved"][:3] == ["$RUN/images", "a.jsonl,$RUN/b.jsonl", "$RUN"]
    assert keys["run"][3:] == [str(tmp_path / "run_images"), f"/elsewhere{tmp_path / 'run'}/x"]


def test_a_rerun_from_a_step_starts_its_unfinished_dependants_clean(tmp_path):
    """--from X replaces X's output: a dependant that failed part-way must not resume what the old X made."""
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    engine = Engine(tmp_path / "run", progress=False)
    engine._record("third", {**engine.manifest["steps"]["third"], "status": "failed"})
    stale = tmp_path / "run" / "third" / "stale.txt"
    stale.write_text("made from the old second step")
    engine.run(plan, force=["second"])
    assert not stale.exists() and Engine(tmp_path / "run").manifest["steps"]["third"]["status"] == "done"


def test_a_step_whose_output_was_deleted_runs_again(tmp_path):
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    shutil.rmtree(tmp_path / "run" / "third")
    assert Engine(tmp_path / "run").pending(plan) == ["third"]
    (tmp_path / "run" / "second" / "out.jsonl").unlink()
    assert Engine(tmp_path / "run").pending(plan) == ["second", "third"]


def test_a_moved_run_starts_its_unfinished_steps_clean(tmp_path):
    """Their commands would refuse to resume outputs that name the old paths (checkpoints, predictions)."""
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    engine = Engine(tmp_path / "run", progress=False)
    engine._record("third", {**engine.manifest["steps"]["third"], "status": "running"})
    (tmp_path / "run" / "third" / "checkpoint.txt").write_text("names " + str(tmp_path / "run"))
    shutil.move(tmp_path / "run", tmp_path / "moved")
    moved = Engine(tmp_path / "moved", progress=False)
    assert moved.pending(plan) == ["third"]
    moved.run(plan)
    assert not (tmp_path / "moved" / "third" / "checkpoint.txt").exists()
    assert Engine(tmp_path / "moved").manifest["root"] == str((tmp_path / "moved").resolve())


def test_an_input_edited_in_place_with_its_time_put_back_is_hashed_again(tmp_path):
    """cp -p, rsync -a and tar restore a file's modification time: its change time still tells."""
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    source = tmp_path / "in.jsonl"
    times = source.stat()
    source.write_text('{"id": 3}\n{"id": 4}\n')  # the same size
    os.utime(source, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert Engine(tmp_path / "run").pending(plan) == ["first", "second", "third"]


def test_a_folder_input_is_hashed_through_its_linked_folders(tmp_path):
    """A checkpoint whose weights folder is a link: swapping what it points at changes the hash."""
    engine = Engine(tmp_path / "run", progress=False)
    for name in ("weights_a", "weights_b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_text(name)
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "weights").symlink_to(tmp_path / "weights_a")
    (checkpoint / "loop").symlink_to(checkpoint)  # a link back is not walked again
    first = engine.input_hash(str(checkpoint))
    (checkpoint / "weights").unlink()
    (checkpoint / "weights").symlink_to(tmp_path / "weights_b")
    assert engine.input_hash(str(checkpoint)) != first


def test_a_setting_that_names_a_file_or_folder_enters_keys_by_content(quick_keys, tmp_path):
    """An encoder checkpoint or a DeepSpeed config replaced in place reruns what reads it."""
    out, config, base, plan = quick_keys
    encoder, deepspeed = tmp_path / "encoder", tmp_path / "zero2.json"
    encoder.mkdir()
    (encoder / "model.bin").write_text("weights")
    deepspeed.write_text('{"zero_optimization": {"stage": 2}}')
    named = dataclasses.replace(config, encoder=str(encoder), train={"deepspeed": str(deepspeed)})
    before, named_plan = keys_of(named, out)
    (encoder / "model.bin").write_text("other weights")
    after, _ = keys_of(named, out)
    curation = named_plan.downstream(["curate_captions", "curate_reasoning"])
    assert {n for n in before if after[n] != before[n]} == curation
    deepspeed.write_text('{"zero_optimization": {"stage": 3}}')
    changed, _ = keys_of(named, out)
    assert {"stage1", "A_stage2", "D_stage15"} <= {n for n in after if changed[n] != after[n]}
    # A path a step writes is named, not hashed: its keys would change each time training writes it.
    log = tmp_path / "samples.jsonl"
    logged = dataclasses.replace(config, train={"sample_log": str(log)})
    first, _ = keys_of(logged, out)
    log.write_text('{"step": 1}\n')
    assert keys_of(logged, out)[0] == first


def test_an_unfinished_step_whose_key_changed_starts_clean(tmp_path):
    """An interrupted step whose key has changed since must not resume what the old settings left."""
    plan = _chain(tmp_path)
    Engine(tmp_path / "run", progress=False).run(plan)
    engine = Engine(tmp_path / "run", progress=False)
    engine._record("third", {"key": "the key of other settings", "status": "running"})
    stale = tmp_path / "run" / "third" / "checkpoint.txt"
    stale.write_text("made with other settings")
    engine.run(plan)
    assert not stale.exists()
