"""The whole cycle on the quick preset: every step, the report, resume after a kill, determinism."""

import json
from collections import Counter
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sicog.cli import main
from sicog.cycle.analysis import auroc
from sicog.cycle.config import CycleConfig, load_config
from sicog.toy.datasets import read_bench_tsv

pytestmark = pytest.mark.slow


def run_quick(out: Path) -> dict:
    assert main(["cycle", "--quick", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text())


def test_quick_cycle_reports_every_arm_and_repeats_exactly(tmp_path):
    first = run_quick(tmp_path / "a")
    report = (tmp_path / "a" / "report.md").read_text()
    for arm in "ABCDE":
        assert f"| {arm} |" in report
    for plot in ("accuracy_by_category.png", "captions.png", "curation_scores.png", "wall_time.png"):
        assert (tmp_path / "a" / plot).stat().st_size > 1000
    manifest = json.loads((tmp_path / "a" / "seed0" / "manifest.json").read_text())
    assert all(step["status"] == "done" for step in manifest["steps"].values())
    for arm, scores in first["per_seed"][0]["arms"].items():
        check = json.loads((tmp_path / "a" / "seed0" / f"image_use_{arm}" / "image_use.json").read_text())
        assert check["compared"] > 0 and check["errors"] == [] and scores["image_use_gap"] == check["gap"]
        assert 0 < scores["top_reply_share"] <= 1
    answers = Counter(row["answer"] for row in read_bench_tsv(tmp_path / "a" / "world" / "bench_mc.tsv"))
    assert first["summary"]["constant_answer_accuracy"] == max(answers.values()) / sum(answers.values())
    assert "| same reply |" in report
    second = run_quick(tmp_path / "b")
    assert first["per_seed"] == second["per_seed"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted quick cycle's results."""
    return run_quick(tmp_path_factory.mktemp("cycle") / "reference")


def test_killed_cycle_resumes_at_the_step_and_finishes_the_same(reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "sicog", "cycle", "--quick", "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    manifest = out / "seed0" / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill while a training step of the next generation is running
        if manifest.is_file() and "B_stage15" in json.loads(manifest.read_text())["steps"]:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    steps = json.loads(manifest.read_text())["steps"]
    assert steps["stage1"]["status"] == "done" and "eval_D" not in steps
    resumed = run_quick(out)
    assert resumed["per_seed"] == reference["per_seed"]


def test_cycle_killed_inside_a_checkpoint_save_finishes_the_same(reference, tmp_path):
    out = tmp_path / "killed"
    # The 6th optimizer save: stage0_perception's second checkpoint (stage1 and A_stage2 save twice each).
    env = {**os.environ, "SICOG_CRASH_AT": "checkpoint-optimizer:6"}
    killed = subprocess.run([sys.executable, "-m", "sicog", "cycle", "--quick", "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert killed.returncode == -signal.SIGKILL
    steps = json.loads((out / "seed0" / "manifest.json").read_text())["steps"]
    assert steps["stage0_perception"]["status"] == "running" and steps["A_stage2"]["status"] == "done"
    assert sorted(p.name for p in (out / "seed0" / "stage0_perception").glob("checkpoint-*")) == ["checkpoint-2",
                                                                                                   "checkpoint-4"]
    resumed = run_quick(out)
    assert resumed["per_seed"] == reference["per_seed"]


def test_from_reruns_that_step_and_everything_after(tmp_path):
    run_quick(tmp_path)
    seed = tmp_path / "seed0"
    stamp = {name: (seed / name / "config.json").stat().st_mtime_ns for name in ("stage1", "C_stage2", "D_stage15", "E_stage2")}
    assert main(["cycle", "--quick", "--out", str(tmp_path), "--from", "D_stage15"]) == 0
    now = {name: (seed / name / "config.json").stat().st_mtime_ns for name in stamp}
    assert now["stage1"] == stamp["stage1"] and now["C_stage2"] == stamp["C_stage2"]
    assert now["D_stage15"] > stamp["D_stage15"] and now["E_stage2"] > stamp["E_stage2"]


def test_dpo_arm_learns_its_pairs_and_is_reported(tmp_path):
    assert main(["cycle", "--quick", "--dpo", "--out", str(tmp_path)]) == 0
    assert "| F | SICOG + DPO" in (tmp_path / "report.md").read_text()
    state = json.loads(next((tmp_path / "seed0" / "F_stage2").glob("checkpoint-*/trainer_state.json")).read_text())
    accuracies = [e["rewards/accuracies"] for e in state["log_history"] if "rewards/accuracies" in e]
    assert accuracies and accuracies[-1] > 0.5


def test_auroc():
    assert auroc([0.9, 0.8, 0.2, 0.1], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.9], [True, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert auroc([0.5], [True]) is None


def test_configs_are_checked(tmp_path):
    assert load_config("toy").toy_size == "demo"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstage1_step: 3\n")
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(str(bad))
    with pytest.raises(ValueError, match="arm D"):
        CycleConfig(arms=("A", "B"))
    with pytest.raises(ValueError, match="needs vision_tower"):
        CycleConfig(toy_size=None)
