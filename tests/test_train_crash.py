"""A training run killed while saving a checkpoint finishes on one rerun, with the uninterrupted run's weights."""

import json
import os
import subprocess
import sys

import pytest
import torch
from train_helpers import make_checkpoint, make_dataset, weights

from sicog.train.checkpoints import COMPLETE_MARKER, ForeignCheckpointError, last_complete_checkpoint


@pytest.fixture(scope="module")
def world(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("train_crash")
    return {"root": root, "base": make_checkpoint(root, tokenizer), "data": make_dataset(root, n=4, text_only=0)}


def train(world, out, crash_at=None):
    """`sicog train` in its own process (SIGKILL must not take the test with it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SICOG_CRASH_AT", None)
    if crash_at:
        env["SICOG_CRASH_AT"] = crash_at
    args = ["train", "--stage", "2", "--model_name_or_path", str(world["base"]), "--data_path", str(world["data"]),
            "--image_folder", str(world["root"] / "images"), "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "2", "--learning_rate", "2e-3", "--save_steps", "1", "--use_cpu",
            "--seed", "0", "--report_to", "none", "--dataloader_num_workers", "0"]
    return subprocess.run([sys.executable, "-m", "sicog.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(world):
    out = world["root"] / "uninterrupted"
    result = train(world, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(out)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint-weights", "checkpoint-optimizer", "checkpoint-trainer-state"])
def test_kill_during_checkpoint_save_then_one_rerun_finishes_identically(world, uninterrupted, point, tmp_path):
    out = tmp_path / "run"
    killed = train(world, out, crash_at=f"{point}:2")  # the second save: checkpoint-1 is complete
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "checkpoint-2").is_dir() and not (out / "checkpoint-2" / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(out, "2") == str(out / "checkpoint-1")

    rerun = train(world, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "skipping incomplete checkpoint" in rerun.stderr and "checkpoint-2" in rerun.stderr
    final = weights(out)
    assert final.keys() == uninterrupted.keys()
    assert all(torch.equal(final[k], uninterrupted[k]) for k in final)
    assert all((out / f"checkpoint-{n}" / COMPLETE_MARKER).is_file() for n in (1, 2, 3))
    assert train_loss(out) == pytest.approx(train_loss(world["root"] / "uninterrupted"), rel=1e-5)


def train_loss(out):
    return json.loads((out / "train_results.json").read_text())["train_loss"]


@pytest.mark.slow
def test_a_run_killed_after_its_last_checkpoint_reports_the_whole_runs_loss(world, uninterrupted, tmp_path):
    """The rerun resumes the last step and trains none (the Trainer alone trained a fourth): the run's weights, and
    its train loss is still the mean over the run's 3 steps (the Trainer alone reported the fourth step's)."""
    out = tmp_path / "run"
    killed = train(world, out, crash_at="train-results")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and not (out / "train_results.json").exists()
    rerun = train(world, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    reference = train_loss(world["root"] / "uninterrupted")
    assert reference > 0 and train_loss(out) == pytest.approx(reference, rel=1e-5)
    assert not (out / "checkpoint-4").exists()
    assert all(torch.equal(value, uninterrupted[name]) for name, value in weights(out).items())


def test_resume_picks_the_newest_complete_checkpoint(tmp_path, caplog):
    for step, complete in ((1, True), (2, True), (3, False), (10, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / COMPLETE_MARKER).write_text(json.dumps({"global_step": step, "stage": "2"}))
    with caplog.at_level("WARNING"):
        assert last_complete_checkpoint(tmp_path, "2") == str(tmp_path / "checkpoint-2")
    skipped = [r.getMessage() for r in caplog.records if "skipping incomplete" in r.getMessage()]
    assert len(skipped) == 2 and "checkpoint-3" in skipped[0] and "checkpoint-10" in skipped[1]
    assert last_complete_checkpoint(tmp_path / "missing", "2") is None


@pytest.mark.parametrize(("marker", "says"), [
    ('{"global_step": 4, "stage": "1.5"}', "is stage 1.5's, not stage 2's"),
    ('{"global_step": 4}', "does not name the stage that wrote it"),  # written before markers named their stage
    ("", "does not name the stage that wrote it"),  # made by hand
])
def test_resume_refuses_a_checkpoint_of_another_stage(tmp_path, marker, says):
    for step in (4, 9):
        (tmp_path / f"checkpoint-{step}").mkdir()
    folder = tmp_path / "checkpoint-4"  # older than this stage's own checkpoint-9: still refused
    (folder / COMPLETE_MARKER).write_text(marker)
    (tmp_path / "checkpoint-9" / COMPLETE_MARKER).write_text('{"global_step": 9, "stage": "2"}')
    with pytest.raises(ForeignCheckpointError, match=f"{folder} {says}"):
        last_complete_checkpoint(tmp_path, "2")


def test_a_stage_never_resumes_the_checkpoint_another_stage_left_in_its_output_folder(world, tmp_path, capsys):
    """One output folder for two stages (one EXPERIMENT_NAME and OUTPUT_DIR for the chain): the second stage stops
    before loading anything, instead of continuing the first stage's run (its weights, optimizer, schedule and
    step) as its own."""
    from sicog.cli import main

    def run(stage):
        return main(["train", "--stage", stage, "--model_name_or_path", str(world["base"]), "--data_path",
                     str(world["data"]), "--image_folder", str(world["root"] / "images"), "--output_dir",
                     str(tmp_path), "--max_steps", "1", "--per_device_train_batch_size", "2", "--save_steps", "1",
                     "--use_cpu", "--report_to", "none", "--dataloader_num_workers", "0"])

    assert run("2") == 0
    marker = json.loads((tmp_path / "checkpoint-1" / COMPLETE_MARKER).read_text())
    assert (marker["global_step"], marker["stage"], marker["run"]["data_path"]) == (1, "2", str(world["data"]))
    saved = (tmp_path / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run("0") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"sicog train: error: {tmp_path / 'checkpoint-1'} is stage 2's, not stage 0's")
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == saved


def train_in_process(world, out, data, *extra):
    from sicog.cli import main

    return main(["train", "--stage", "0", "--model_name_or_path", str(world["base"]), "--data_path", str(data),
                 "--image_folder", str(world["root"] / "images"), "--output_dir", str(out), "--max_steps", "1",
                 "--per_device_train_batch_size", "2", "--save_steps", "1", "--use_cpu", "--report_to", "none",
                 "--dataloader_num_workers", "0", *extra])


def test_a_run_never_resumes_the_checkpoint_of_a_run_with_other_settings(world, tmp_path, capsys):
    """Two stage-0 runs (perception, then reasoning) into one output folder: the second stops before loading
    anything, instead of taking the first one's finished checkpoint as its own and training no step."""
    other = make_dataset(tmp_path / "reasoning", n=2, text_only=2)
    assert train_in_process(world, tmp_path / "out", world["data"]) == 0
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("model.safetensors", "train_results.json")}
    capsys.readouterr()
    assert train_in_process(world, tmp_path / "out", other, "--learning_rate", "1e-3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"sicog train: error: {tmp_path / 'out' / 'checkpoint-1'} was written by a run with other settings "
        f"(data_path: {str(world['data'])!r} -> {str(other)!r}; learning_rate: 5e-05 -> 0.001): resuming it would "
        "continue that run; give this run another --output_dir (each stage-0 run its own EXPERIMENT_NAME), remove "
        f"that run's checkpoints to train again, or resume it anyway with --resume_from_checkpoint "
        f"{tmp_path / 'out' / 'checkpoint-1'}")
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before


def test_a_finished_run_started_again_trains_nothing_and_keeps_its_results(world, tmp_path, monkeypatch, caplog):
    """Resuming the last step would train nothing and write a train loss of 0 over the run's results. The same
    data named by a relative path from another working folder is the same run."""
    assert train_in_process(world, tmp_path / "out", world["data"]) == 0
    before = {name: (tmp_path / "out" / name).read_bytes() for name in ("model.safetensors", "train_results.json")}
    assert json.loads(before["train_results.json"])["train_loss"] > 0
    monkeypatch.chdir(world["root"])
    with caplog.at_level("INFO", logger="sicog.train.run"):
        assert train_in_process(world, tmp_path / "out", world["data"].relative_to(world["root"])) == 0
    assert "holds this run's last step and train_results.json: nothing to train" in caplog.text
    assert {name: (tmp_path / "out" / name).read_bytes() for name in before} == before


def test_several_data_sources_are_the_same_run_from_another_working_folder(tmp_path, monkeypatch):
    """Each source of a comma list or a brace pattern is compared resolved, as a single source is."""
    from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments
    from sicog.train.run import run_settings

    (tmp_path / "mix").mkdir()
    for name in ("a.jsonl", "b.json"):
        (tmp_path / "mix" / name).write_text("")
    args = SicogTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    monkeypatch.chdir(tmp_path)
    here = run_settings(ModelArguments(), DataArguments(data_path="mix/a.jsonl,mix/b.json"), args)
    monkeypatch.chdir(tmp_path / "mix")
    there = run_settings(ModelArguments(), DataArguments(data_path="a.jsonl, ../mix/b.json"), args)
    pattern = run_settings(ModelArguments(), DataArguments(data_path="{a.jsonl,b.json}"), args)
    both = f"{tmp_path / 'mix' / 'a.jsonl'},{tmp_path / 'mix' / 'b.json'}"
    assert here["data_path"] == there["data_path"] == pattern["data_path"] == both


def test_a_brace_pattern_recorded_as_typed_is_the_same_run(tmp_path, monkeypatch):
    """Checkpoints written before sources were resolved one by one hold the pattern as typed: still this run."""
    from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments
    from sicog.train.checkpoints import settings_differences
    from sicog.train.run import run_settings

    (tmp_path / "mix").mkdir()
    for name in ("a.jsonl", "b.json"):
        (tmp_path / "mix" / name).write_text("")
    monkeypatch.chdir(tmp_path)
    args = SicogTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    now = run_settings(ModelArguments(), DataArguments(data_path="mix/{a.jsonl,b.json}"), args)
    assert settings_differences({**now, "data_path": "mix/{a.jsonl,b.json}"}, now) == []
    assert settings_differences({**now, "data_path": "mix/a.jsonl"}, now) != []


def test_dpo_runs_with_another_objective_are_other_runs(tmp_path):
    from sicog.train.arguments import DataArguments, ModelArguments, SicogTrainingArguments
    from sicog.train.checkpoints import settings_differences
    from sicog.train.run import run_settings

    def settings(stage: str, **objective) -> dict:
        args = SicogTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", stage=stage,
                                      **objective)
        return run_settings(ModelArguments(), DataArguments(data_path="pairs.jsonl"), args)

    first = settings("dpo")
    for name, value in (("dpo_beta", 5.0), ("dpo_alpha", 0.5), ("dpo_gamma", 0.0)):
        assert settings_differences(first, settings("dpo", **{name: value})) == [
            f"{name}: {first[name]!r} -> {value!r}"]
    assert "dpo_beta" not in settings("2")


def test_naming_an_incomplete_checkpoint_is_an_error(world, tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    from sicog.cli import main

    code = main(["train", "--stage", "2", "--model_name_or_path", str(world["base"]), "--data_path",
                 str(world["data"]), "--output_dir", str(tmp_path), "--max_steps", "1", "--use_cpu",
                 "--resume_from_checkpoint", str(tmp_path / "checkpoint-5")])
    assert code == 2


@pytest.mark.slow
def test_old_checkpoints_are_deleted_only_after_the_new_one_is_complete(world, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SICOG_CRASH_AT": "checkpoint-unmarked:3"}
    args = ["train", "--stage", "2", "--model_name_or_path", str(world["base"]), "--data_path", str(world["data"]),
            "--image_folder", str(world["root"] / "images"), "--output_dir", str(out), "--max_steps", "3",
            "--per_device_train_batch_size", "2", "--save_steps", "1", "--save_total_limit", "1", "--use_cpu",
            "--report_to", "none"]
    killed = subprocess.run([sys.executable, "-m", "sicog.cli", *args], env=env, capture_output=True, text=True,
                            timeout=600)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # Killed with checkpoint-3 written but not yet marked: checkpoint-2 must still be there to resume from
    # (checkpoint-1 went once checkpoint-2 was complete).
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert last_complete_checkpoint(out, "2") == str(out / "checkpoint-2")
