"""`sicog cycle` as a whole run, on cheap stand-in plans: one run per run folder (the shared world included), a
dry run that builds nothing, seeds that go on past another seed's failure, and a --from that every seed
finishes after a kill."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from sicog.cli import main
from sicog.cycle.engine import CycleFailed, Input, Out, Plan, Ref, Step
from sicog.cycle.plan import SeedPlan
from sicog.data.lock import output_lock
from sicog.toy.build import WORLD_VERSION, build_world


def world_state(world: Path) -> tuple[int, str]:
    """The world's seed and a hash of its images."""
    digest = hashlib.sha256()
    for path in sorted((world / "images").rglob("*.png")):
        digest.update(path.read_bytes())
    return json.loads((world / "manifest.json").read_text())["seed"], digest.hexdigest()


def quick_config(tmp_path: Path, **changes) -> str:
    values = yaml.safe_load((resources.files("sicog.configs") / "cycle_quick.yaml").read_text())
    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump({**values, **changes}))
    return str(path)


def test_a_second_run_on_a_folder_in_use_stops_before_touching_its_world(tmp_path, capsys):
    out = tmp_path / "run"
    build_world(out / "world", seed=0, size="tiny")
    before = world_state(out / "world")
    other_world = quick_config(tmp_path, world_seed=1)
    # A running cycle holds the run folder's lock and its seed's.
    with output_lock(out, folder=True), output_lock(out / "seed0", folder=True):
        assert main(["cycle", "--config", other_world, "--out", str(out), "--no-progress"]) == 2
        assert "in use by another run" in capsys.readouterr().err
        assert world_state(out / "world") == before
        # A dry run meanwhile plans against the world there and says it would be rebuilt, replacing nothing.
        assert main(["cycle", "--config", other_world, "--out", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"# the toy world in {out / 'world'} would be built first: the one there is world "
                                 f"version {WORLD_VERSION}, seed 0, size tiny; the config's is world version "
                                 f"{WORLD_VERSION}, seed 1, size tiny")
    assert world_state(out / "world") == before and not (out / "seed0" / "manifest.json").exists()
    steps = [line for line in printed if line.startswith("[")]
    assert all(line.startswith("[run] ") for line in steps) and len(steps) == 69


def test_a_dry_run_on_an_empty_folder_builds_nothing(tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(["cycle", "--quick", "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith(f"# the toy world in {out / 'world'} would be built first: there is "
                                              "none yet")
    assert not out.exists()


@pytest.fixture
def cheap_cycle(monkeypatch):
    """The quick preset's world with a two-step plan per seed: ``b`` fails in the seeds listed in ``failing``;
    the report gets what the run passes it."""
    failing: set[int] = set()
    reports: list[dict] = []

    def plan_seed(config, world, seed, rounds=1, dpo=False):
        first = Step("a", ("data", "head", "--input", Input(world.files["align"]), "--output", Out("p.jsonl"),
                           "--limit", "2"))
        second = Step("b", ("data", "head", "--input", Ref("a", "p.jsonl"), "--output", Out("p.jsonl"),
                            "--limit", "0" if seed in failing else "1"))
        return SeedPlan(Plan([first, second]))

    monkeypatch.setattr("sicog.cycle.plan.plan_seed", plan_seed)
    monkeypatch.setattr("sicog.cycle.report.seed_results", lambda engine, seed_plan, world, seed: {"seed": seed})
    monkeypatch.setattr("sicog.cycle.report.write_report",
                        lambda out, config, per_seed, incomplete=None: reports.append(
                            {"seeds": [s["seed"] for s in per_seed], "incomplete": incomplete}))
    return failing, reports


def manifest(out: Path, seed: int) -> dict:
    return json.loads((out / f"seed{seed}" / "manifest.json").read_text())


@pytest.mark.slow
def test_a_failed_step_in_one_seed_does_not_stop_the_others(tmp_path, capsys, cheap_cycle):
    failing, reports = cheap_cycle
    failing.add(1)
    out = tmp_path / "run"
    assert main(["cycle", "--quick", "--out", str(out), "--seeds", "3", "--no-progress", "--jobs", "1"]) == 1
    assert [{k: v["status"] for k, v in manifest(out, s)["steps"].items()} for s in range(3)] == [
        {"a": "done", "b": "done"}, {"a": "done", "b": "failed"}, {"a": "done", "b": "done"}]
    err = capsys.readouterr().err
    assert "error: 1 step(s) failed or could not run:" in err
    assert f"  seed1/b: exit 2; log: {out / 'seed1' / 'b' / 'log.txt'}" in err
    assert reports == [{"seeds": [0, 2], "incomplete": {1: ["b"]}}]


@pytest.mark.slow
def test_a_run_in_which_no_seed_finishes_leaves_no_earlier_report(tmp_path, capsys, cheap_cycle, monkeypatch):
    """The earlier run's report.md and results.json stayed, naming no incomplete seed: they passed for this run's."""
    _, reports = cheap_cycle
    out = tmp_path / "run"
    assert main(["cycle", "--quick", "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    (out / "report.md").write_text("# an earlier run's report\n")  # as write_report wrote them
    (out / "results.json").write_text("{}\n")

    def failed(self, plan):
        raise CycleFailed({"b": "exit 1; log: b/log.txt"})

    monkeypatch.setattr("sicog.cycle.engine.Engine.run", failed)
    assert main(["cycle", "--quick", "--out", str(out), "--no-progress", "--jobs", "1", "--seeds", "2"]) == 1
    assert not (out / "report.md").exists() and not (out / "results.json").exists() and len(reports) == 1
    assert f"no report: no seed finished; the report of an earlier run in {out} is removed" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_run_leaves_no_earlier_report(tmp_path, cheap_cycle, monkeypatch):
    """The report was cleared only when a run ended without a finished seed: after Ctrl-C or a kill the earlier
    run's report described outputs the interrupted run had already removed."""
    out = tmp_path / "run"
    assert main(["cycle", "--quick", "--out", str(out), "--no-progress", "--jobs", "1"]) == 0
    (out / "report.md").write_text("# an earlier run's report\n")
    (out / "results.json").write_text("{}\n")

    def interrupted(self, plan):
        raise KeyboardInterrupt

    monkeypatch.setattr("sicog.cycle.engine.Engine.run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["cycle", "--quick", "--out", str(out), "--no-progress", "--jobs", "1"])
    assert not (out / "report.md").exists() and not (out / "results.json").exists()


@pytest.mark.slow
def test_a_killed_from_run_is_finished_in_every_seed_by_a_plain_rerun(tmp_path, cheap_cycle, monkeypatch):
    out = tmp_path / "run"
    assert main(["cycle", "--quick", "--out", str(out), "--seeds", "2", "--no-progress"]) == 0
    before = [manifest(out, seed)["steps"] for seed in range(2)]

    def killed(self, plan, todo):
        raise KeyboardInterrupt  # the run dies while seed 0's steps run

    with monkeypatch.context() as patch:
        patch.setattr("sicog.cycle.engine.Engine._schedule", killed)
        with pytest.raises(KeyboardInterrupt):
            main(["cycle", "--quick", "--out", str(out), "--seeds", "2", "--no-progress", "--from", "b"])
    assert manifest(out, 1)["rerun"] == ["b"]  # seed 1 never started: its rerun waits in its manifest
    assert main(["cycle", "--quick", "--out", str(out), "--seeds", "2", "--no-progress"]) == 0
    for seed in range(2):
        after = manifest(out, seed)
        assert after["rerun"] == [] and after["steps"]["a"] == before[seed]["a"]
        assert after["steps"]["b"]["finished_at"] > before[seed]["b"]["finished_at"], seed


@pytest.mark.slow
def test_a_dry_run_read_by_head_stops_quietly(tmp_path):
    """`sicog cycle --dry-run | head`: the reader closing the pipe early is no error and no traceback."""
    command = [sys.executable, "-m", "sicog", "cycle", "--quick", "--out", str(tmp_path / "run"), "--dry-run"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        process.stdout.close()  # as head does once it has its lines: here before the first, so every write fails
        errors = process.stderr.read().decode()
        assert process.wait() == 0, errors
    assert "Traceback" not in errors and not (tmp_path / "run").exists()
