"""The cycle's wiring, step by step, against the table of docs/pipeline.md: which model and data each step reads.

Keys and reruns are tested from the plan itself (tests/test_cycle_engine.py); here the plan is held against what
the pipeline is meant to be, so that a mis-wired step cannot agree with itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sicog.cycle.config import load_config
from sicog.cycle.engine import Input, Joined, Out, Ref, Step
from sicog.cycle.plan import plan_seed
from sicog.cycle.world import make_world

SEED = 3


def source(arg) -> str:
    """What an argument names: ``step/file`` for another step's output, ``world:name`` for a world file."""
    if isinstance(arg, Ref):
        return f"{arg.step}/{arg.path}" if arg.path else arg.step
    if isinstance(arg, Input):
        return f"world:{Path(arg.path).name}"
    if isinstance(arg, Joined):
        return arg.separator.join(source(part) for part in arg.parts)
    if isinstance(arg, Out):
        return "out"
    return arg


def flag(step: Step, name: str) -> str:
    return source(step.argv[step.argv.index(name) + 1])


def inputs(step: Step) -> list[str]:
    """The files of `curate mix --inputs`, up to the next flag."""
    argv = [source(arg) for arg in step.argv]
    start = argv.index("--inputs") + 1
    return argv[start: next(i for i in range(start, len(argv)) if argv[i].startswith("--"))]


@pytest.fixture(scope="module")
def steps(tmp_path_factory) -> dict[str, Step]:
    config = load_config("quick")
    world = make_world(config, tmp_path_factory.mktemp("plan"))
    return plan_seed(config, world, SEED, rounds=2, dpo=True).plan.steps


def test_the_base_model_and_the_teachers(steps):
    assert (flag(steps["stage1"], "--vision_tower"), flag(steps["stage1"], "--language_model"),
            flag(steps["stage1"], "--data_path")) == ("parts/vision", "parts/llm", "world:align.jsonl")
    assert (flag(steps["A_stage2"], "--model_name_or_path"), flag(steps["A_stage2"], "--data_path")) == (
        "stage1", "world:sft.jsonl")
    for prefix, teacher in (("", "A_stage2"), ("round2_", "D_stage2")):  # a later round learns from D
        for stage0, data in (("stage0_perception", "world:cod.jsonl"), ("stage0_reasoning", "world:cot.jsonl")):
            step = steps[prefix + stage0]
            assert (flag(step, "--stage"), flag(step, "--model_name_or_path"), flag(step, "--data_path")) == (
                "0", teacher, data), prefix + stage0


@pytest.mark.parametrize("prefix", ["", "round2_"])
def test_generation_and_curation_read_their_round_and_this_seed(steps, prefix):
    for task, stage0 in (("captions", "stage0_perception"), ("reasoning", "stage0_reasoning")):
        generate, curate = steps[f"{prefix}generate_{task}"], steps[f"{prefix}curate_{task}"]
        assert flag(generate, "--model") == f"{prefix}{stage0}"
        pool = "unlabeled_images" if task == "captions" else "unlabeled_questions"
        assert flag(generate, "--data") == f"pool_{pool}/pool.jsonl"
        assert flag(curate, "--input") == f"{prefix}generate_{task}/generated.jsonl"
        assert flag(generate, "--seed") == flag(curate, "--seed") == str(SEED)


def test_every_arm_pretrains_from_stage1_on_its_data_and_the_annotated_sets(steps):
    # The quick preset limits the unlabeled pools: each arm reads the first records of its pool, the same records.
    for pool in ("unlabeled_images", "unlabeled_questions", "unlabeled_web", "oracle_captions", "oracle_reasoning"):
        assert flag(steps[f"pool_{pool}"], "--input") == f"world:{pool}.jsonl"
    own = {"B": ["pool_unlabeled_web/pool.jsonl"],
           "C": ["C_random_captions/random.jsonl", "C_random_reasoning/random.jsonl"],
           "D": ["curate_captions/curated.jsonl", "curate_reasoning/curated.jsonl"],
           "E": ["pool_oracle_captions/pool.jsonl", "pool_oracle_reasoning/pool.jsonl"],
           "round2_D": ["round2_curate_captions/curated.jsonl", "round2_curate_reasoning/curated.jsonl"]}
    for arm, data in own.items():
        mixture = steps[f"{arm}_mixture"]
        assert inputs(mixture) == [*data, "world:cod.jsonl", "world:cot.jsonl"], arm
        assert flag(mixture, "--seed") == str(SEED)
        s15, s2 = steps[f"{arm}_stage15"], steps[f"{arm}_stage2"]
        assert (flag(s15, "--model_name_or_path"), flag(s15, "--data_path")) == (
            "stage1", f"{arm}_mixture/mixture.jsonl"), arm
        assert (flag(s2, "--model_name_or_path"), flag(s2, "--data_path")) == (f"{arm}_stage15", "world:sft.jsonl")
    for task in ("captions", "reasoning"):
        assert (flag(steps[f"C_random_{task}"], "--input"), flag(steps[f"C_random_{task}"], "--seed")) == (
            f"generate_{task}/generated.jsonl", str(SEED))


def test_dpo_continues_d_on_the_first_rounds_curation_pairs(steps):
    step = steps["F_stage2"]
    assert (flag(step, "--stage"), flag(step, "--model_name_or_path"), flag(step, "--data_path")) == (
        "dpo", "D_stage2", "curate_captions/pairs.jsonl,curate_reasoning/pairs.jsonl")


def test_each_arm_is_evaluated_as_it_ends(steps):
    for arm in ("A", "B", "C", "D", "E", "F", "round2_D"):
        for kind in ("eval", "blind", "letters", "open", "perception", "image_use"):
            assert flag(steps[f"{kind}_{arm}"], "--model") == f"{arm}_stage2", (kind, arm)
        assert flag(steps[f"blind_{arm}"], "--blind-seed") == str(SEED)
        assert flag(steps[f"captions_{arm}"], "--model") == f"{arm}_stage2"
