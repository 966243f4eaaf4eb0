"""The whole cycle on the quick preset: every step, the report, parallel steps, resume after a kill,
exact reuse of finished steps, determinism."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import yaml

from sicog.cli import main
from sicog.cycle.analysis import auroc, caption_right
from sicog.cycle.config import CycleConfig, load_config
from sicog.toy.datasets import read_bench_tsv

pytestmark = pytest.mark.slow


def run_quick(out: Path, *extra: str) -> dict:
    assert main(["cycle", "--quick", "--out", str(out), "--no-progress", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def steps(out: Path) -> dict:
    return json.loads((out / "seed0" / "manifest.json").read_text())["steps"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    """One finished quick cycle, two steps at a time; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("quick")
    run_quick(out, "--jobs", "2")
    return out


def rerun_steps(before: dict, after: dict) -> set[str]:
    """The steps of manifest ``after`` that finished again since manifest ``before``."""
    return {name for name in after if after[name]["finished_at"] != before[name]["finished_at"]}


def copy_of(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_quick_cycle_reports_every_arm(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    report = (quick_run / "report.md").read_text()
    for arm in "ABCDE":
        assert f"| {arm} |" in report
    for plot in ("accuracy_by_category.png", "captions.png", "curation_scores.png", "wall_time.png"):
        assert (quick_run / plot).stat().st_size > 1000
    assert all(step["status"] == "done" and step["cpu_seconds"] >= 0 for step in steps(quick_run).values())
    for arm, scores in results["per_seed"][0]["arms"].items():
        check = json.loads((quick_run / "seed0" / f"image_use_{arm}" / "image_use.json").read_text())
        assert check["compared"] > 0 and check["errors"] == [] and scores["image_use_gap"] == check["gap"]
        assert 0 < scores["top_reply_share"] <= 1
    answers = Counter(row["answer"] for row in read_bench_tsv(quick_run / "world" / "bench_mc.tsv"))
    assert results["summary"]["constant_answer_accuracy"] == max(answers.values()) / sum(answers.values())
    assert "| above blind |" in report and "| step | wall s | CPU s |" in report
    row = results["per_seed"][0]["arms"]["D"]
    assert {"accuracy", "blind", "letters", "blind_by_category", "top_reply_share", "perception"} <= set(row)
    perception = json.loads((quick_run / "seed0" / "perception_D" / "mc" / "results.json").read_text())
    assert row["perception"] == perception["accuracy"] and set(row["perception_by_fact"]) <= {
        "color", "shape", "size", "position", "background"}
    assert "| perception |" in report and "### Perception check by changed fact" in report
    opened = json.loads((quick_run / "seed0" / "open_D" / "mc" / "results.json").read_text())
    assert row["open"] == opened["accuracy"] and set(row["open_by_category"]) == set(row["by_category"])
    assert opened["settings"]["mc_scoring"] == "open" and opened["scored"] == opened["total"]
    assert 0 <= results["summary"]["table"]["D"]["open"][0] <= 1 and "| open answers |" in report
    captions = results["per_seed"][0]["curation"]["captions"]
    facts = captions["candidate_facts"]
    assert 0 <= facts["object_precision"] <= 1 and 0 <= facts["object_recall"] <= 1
    assert set(captions["candidate_facts_by_pick"]) == {"random", "curated"}
    assert "| random pick (C) |" in report and "| curated (D) |" in report
    assert 0 < results["summary"]["chance_accuracy"] <= 0.5
    assert set(results["summary"]["verdict"]) == {"D vs A", "D vs B", "D vs C"}
    parts = json.loads((quick_run / "seed0" / "parts" / "parts.json").read_text())
    assert results["per_seed"][0]["lm_reading"] == parts["lm"]["reading"]
    assert f"answers {parts['lm']['reading']['accuracy']:.3f} of" in report
    assert f"whatever object is asked about: {parts['lm']['reading']['commonest']:.3f})" in report


def test_rerun_reuses_every_finished_step(quick_run, tmp_path):
    out = copy_of(quick_run, tmp_path)  # a moved run folder keeps its keys
    before = steps(out)
    run_quick(out)
    assert steps(out) == before


def test_a_changed_setting_reruns_only_the_steps_that_depend_on_it(quick_run, tmp_path):
    out = copy_of(quick_run, tmp_path)
    before = steps(out)
    config = yaml.safe_load((resources.files("sicog.configs") / "cycle_quick.yaml").read_text())
    config_path = tmp_path / "changed.yaml"
    config_path.write_text(yaml.safe_dump({**config, "caption_threshold": -0.5}))
    assert main(["cycle", "--config", str(config_path), "--out", str(out), "--no-progress"]) == 0
    after = steps(out)
    rerun = rerun_steps(before, after)
    changed = {name for name in after if after[name]["key"] != before[name]["key"]}
    assert rerun == changed and {"curate_captions", "D_mixture", "D_stage2", "eval_D"} <= rerun
    assert not rerun & {"stage1", "A_stage2", "stage0_perception", "generate_captions", "C_stage15", "B_stage2",
                        "E_stage2", "eval_A", "eval_C", "eval_E"}


def test_cycle_killed_in_a_training_step_resumes_and_finishes_the_same(quick_run, tmp_path):
    """SIGKILL while a rerun (``--from B_stage15``) trains: the next plain run reruns that step and every
    one after it whose output the killed run had already removed, and gives the uninterrupted results."""
    reference = json.loads((quick_run / "results.json").read_text())
    out = copy_of(quick_run, tmp_path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sicog", "cycle", "--quick", "--out", str(out), "--no-progress",
                                "--from", "B_stage15"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = out / "seed0" / "manifest.json"
    deadline = time.time() + 600
    while time.time() < deadline:  # kill while the training step is running
        if json.loads(manifest.read_text())["steps"].get("B_stage15", {}).get("status") == "running":
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed = json.loads(manifest.read_text())["steps"]
    assert killed["B_stage15"]["status"] == "running" and killed.get("eval_B", {}).get("status") != "done"
    resumed = run_quick(out)
    assert resumed["per_seed"] == reference["per_seed"]
    before, after = steps(quick_run), steps(out)
    rerun = rerun_steps(before, after)
    assert rerun == {"B_stage15", "B_stage2", "eval_B", "blind_B", "letters_B", "open_B", "perception_B",
                     "captions_B", "image_use_B"}


def test_one_step_at_a_time_killed_inside_a_checkpoint_save_finishes_the_same(quick_run, tmp_path):
    """One worker, start to end (killed inside a save, then resumed): the results of two workers."""
    reference = json.loads((quick_run / "results.json").read_text())
    out = tmp_path / "killed"
    # One worker runs the steps in order, so its 6th optimizer save is stage0_perception's second checkpoint
    # (stage1 and A_stage2 save twice each). The worker dies by SIGKILL; the cycle reports the step as failed.
    env = {**os.environ, "SICOG_CRASH_AT": "checkpoint-optimizer:6"}
    killed = subprocess.run([sys.executable, "-m", "sicog", "cycle", "--quick", "--out", str(out), "--jobs", "1",
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert killed.returncode == 1 and "stage0_perception: worker died" in killed.stderr
    steps = json.loads((out / "seed0" / "manifest.json").read_text())["steps"]
    assert steps["stage0_perception"]["status"] == "failed" and steps["A_stage2"]["status"] == "done"
    assert sorted(p.name for p in (out / "seed0" / "stage0_perception").glob("checkpoint-*")) == ["checkpoint-2",
                                                                                                   "checkpoint-4"]
    resumed = run_quick(out, "--jobs", "1")
    assert resumed["per_seed"] == reference["per_seed"] and resumed["summary"] == reference["summary"]


def test_from_reruns_that_step_and_its_dependants(quick_run, tmp_path):
    out = copy_of(quick_run, tmp_path)
    before = steps(out)
    assert main(["cycle", "--quick", "--out", str(out), "--from", "D_stage15", "--no-progress"]) == 0
    after = steps(out)
    rerun = rerun_steps(before, after)
    assert rerun == {"D_stage15", "D_stage2", "eval_D", "blind_D", "letters_D", "open_D", "perception_D",
                     "captions_D", "image_use_D"}
    assert main(["cycle", "--quick", "--out", str(out), "--from", "no_such_step", "--no-progress"]) == 2
    # An empty name (an unset variable in a script) is refused too: it ran as a plain run.
    assert main(["cycle", "--quick", "--out", str(out), "--from", "", "--no-progress"]) == 2


def test_dpo_arm_learns_its_pairs_and_is_reported(quick_run, tmp_path):
    out = copy_of(quick_run, tmp_path)
    before = steps(out)
    run_quick(out, "--dpo")
    assert {name for name in steps(out) if name not in before} == {
        "F_stage2", "eval_F", "blind_F", "letters_F", "open_F", "perception_F", "captions_F", "image_use_F"}
    assert "| F | SICOG + DPO" in (out / "report.md").read_text()
    state = json.loads(next((out / "seed0" / "F_stage2").glob("checkpoint-*/trainer_state.json")).read_text())
    accuracies = [e["rewards/accuracies"] for e in state["log_history"] if "rewards/accuracies" in e]
    # One logged batch holds a few pairs: judge the later half of training against the earlier half and chance.
    early, late = accuracies[: len(accuracies) // 2], accuracies[len(accuracies) // 2 :]
    assert early and sum(late) / len(late) > max(0.5, sum(early) / len(early))


def test_auroc():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None


def test_a_caption_is_right_only_when_every_fact_it_states_is_true():
    import random

    from sicog.toy.datasets import one_fact_changed
    from sicog.toy.language import detailed_description
    from sicog.toy.score import score_caption
    from sicog.toy.world import LAYOUTS, sample_scene

    layout, rng = LAYOUTS["grid"], random.Random(0)
    scene = sample_scene(rng, layout)
    truth = scene.ground_truth()
    assert caption_right(score_caption(detailed_description(scene, None), truth))
    for fact in ("size", "position", "background", "color"):
        changed = one_fact_changed(scene, fact, layout, rng)
        assert not caption_right(score_caption(detailed_description(changed, None), truth)), fact
    fewer = scene.objects[0].name  # every object must be named
    assert not caption_right(score_caption(f"A {fewer} on a {scene.background} background.", truth))


def test_curation_analysis_gives_each_fact_for_the_random_and_the_curated_picks(tmp_path):
    import random

    from sicog.curate.random_pick import random_index
    from sicog.cycle.analysis import candidate_facts, curation_quality
    from sicog.data.jsonl import write_jsonl
    from sicog.toy.datasets import one_fact_changed
    from sicog.toy.language import detailed_description
    from sicog.toy.world import LAYOUTS, sample_scene

    layout, rng = LAYOUTS["grid"], random.Random(1)
    records, truth = [], {}
    for i in range(12):
        scene = sample_scene(rng, layout)
        truth[f"{i}.png"] = scene.ground_truth()
        wrong = [detailed_description(one_fact_changed(scene, "color", layout, rng), None) for _ in range(3)]
        # the true caption scores highest; every second record is kept
        records.append({"id": f"r{i}", "image": f"{i}.png", "candidates": [*wrong, detailed_description(scene, None)],
                        "scores": [0.2, 0.3, 0.1, 0.9], "best_index": 3, "kept": i % 2 == 0})
    write_jsonl(tmp_path / "scored.jsonl", records)
    quality = curation_quality(tmp_path / "scored.jsonl", "captions", truth, seed=0)
    picks = quality["candidate_facts_by_pick"]
    assert picks["curated"]["object_precision"] == 1.0 and picks["curated"]["background"] == 1.0
    randomly = [(r["candidates"][random_index(r["candidates"], r["id"], 0)], truth[r["image"]]) for r in records]
    assert picks["random"] == candidate_facts(randomly)
    assert picks["random"]["object_precision"] < 1.0  # some random picks name an object in a wrong colour
    assert quality["right_share_curated"] == 1.0 and quality["kept"] == 6
    # A blank candidate (curation scores it 0.0) states no fact: it was counted in the facts of all candidates.
    for record in records:
        record["candidates"].append("")
        record["scores"].append(0.0)
    write_jsonl(tmp_path / "blank.jsonl", records)
    with_blank = curation_quality(tmp_path / "blank.jsonl", "captions", truth, seed=0)
    assert with_blank["candidate_facts"] == quality["candidate_facts"]
    records = [{**record, "kept": False} for record in records]
    write_jsonl(tmp_path / "none_kept.jsonl", records)
    assert curation_quality(tmp_path / "none_kept.jsonl", "captions", truth, seed=0)[
        "candidate_facts_by_pick"]["curated"] is None


@pytest.mark.parametrize("text, message", [
    ("name: x\nstage1_step: 3\n", "key 'stage1_step': unknown setting"),
    ("batch_size: eight\n", "key 'batch_size': expected an integer, got 'eight'"),
    ("stage2_steps: -5\n", "key 'stage2_steps': must be at least 1, got -5"),
    ("caption_temperature: [1]\n", "key 'caption_temperature': expected a number"),
    ("train: {bf16: [1]}\n", "key 'train': expected a mapping of setting names to single values"),
    ("- a list\n", "expected a mapping of settings \\(key: value\\), got list"),
    ("arms: [A, B]\n", "arm D"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_configs_are_checked(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")) as err:
        load_config(str(bad))
    assert str(bad) in str(err.value)
    assert main(["cycle", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2


def test_config_presets_and_real_data_checks():
    assert load_config("toy").toy_size == "demo"
    with pytest.raises(ValueError, match="arm D"):
        CycleConfig(arms=("A", "B"))
    with pytest.raises(ValueError, match="needs vision_tower"):
        CycleConfig(toy_size=None)
    with pytest.raises(ValueError, match="arm E needs data.oracle_captions"):
        CycleConfig(toy_size=None, vision_tower="v", language_model="l", data={"unlabeled_web": "w"})


def test_dry_run_prints_every_command_and_runs_nothing(quick_run, tmp_path, capsys):
    assert main(["cycle", "--quick", "--out", str(quick_run), "--dry-run"]) == 0
    finished = capsys.readouterr().out.splitlines()
    assert finished[0] == "# seed 0: 69 steps, 0 to run" and all(line.startswith("[reuse] ") for line in finished[1:])
    assert main(["cycle", "--quick", "--out", str(tmp_path), "--dry-run"]) == 0
    fresh = capsys.readouterr().out.splitlines()
    assert fresh[0].startswith("# the toy world in ") and fresh[1] == "# seed 0: 69 steps, 69 to run"
    assert len(fresh) == 71 and all(line.startswith("[run] ") for line in fresh[2:])
    assert any(f"sicog train --stage 1.5 --model_name_or_path {tmp_path}/seed0/stage1" in line for line in fresh)
    assert not (tmp_path / "seed0").exists() and not (tmp_path / "world").exists()
