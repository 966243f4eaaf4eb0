"""The five timing benchmarks (generation, processor, CLI --help, curation, curation threshold) report CPU
seconds beside wall seconds for every variant, in their tables and their JSON; bench_curation compares
several thread counts in one run. benchmarks/cpu_time.py, which they share, counts what its scope names.
Tiny settings; no duration or speed is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def load(name: str):
    # A script run as `python benchmarks/bench_x.py` finds its sibling `cpu_time` on sys.path; so must this.
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    if name == "cpu_time":  # their shared module: the very one they import, not a second copy
        return importlib.import_module(name)
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def keep_threads():
    """The benchmarks set torch's thread count; later tests in this process get it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def assert_times(row: dict) -> None:
    for key in ("seconds", "cpu_s"):
        value = row[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, row)
        assert math.isfinite(value) and value >= 0, (key, row)


def table_header(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("| ") and "CPU s" in line)


def test_bench_cli_help_reports_child_cpu_seconds(tmp_path, capsys) -> None:
    out = tmp_path / "help.json"
    assert load("bench_cli_help").main(["--commands", "data", "--repeats", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["command"] for row in rows] == ["data"]
    for row in rows:
        assert_times(row)
        assert row["cpu_s"] > 0, "a Python interpreter that ran cannot have used no CPU time"
    assert "wall s" in table_header(capsys.readouterr().out)


@pytest.mark.slow
def test_bench_generation_reports_cpu_seconds(tmp_path, capsys) -> None:
    out = tmp_path / "gen.json"
    argv = ["--records", "2", "--num-candidates", "2", "--batch-size", "2", "--max-new-tokens", "2",
            "--candidate-counts", "1", "--batch-sizes", "2", "--repeats", "1", "--device", "cpu", "--json", str(out)]
    assert load("bench_generation").main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert {run["method"] for run in runs} == {"published loop", "sicog generate"}
    for run in runs:
        assert_times(run)
        for key in ("candidates_per_cpu_s", "speedup_cpu"):
            assert math.isfinite(run[key]) and run[key] >= 0
    assert "wall s" in table_header(capsys.readouterr().out)


@pytest.mark.slow
def test_bench_processor_reports_cpu_seconds_with_workers(tmp_path, capsys) -> None:
    out = tmp_path / "proc.json"
    argv = ["--images", "2", "--workers", "0", "1", "--batch-size", "2", "--repeats", "1", "--json", str(out)]
    assert load("bench_processor").main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert {(run["measurement"], run["workers"]) for run in runs} == {
        ("image", 0), ("image", 1), ("sample", 0), ("sample", 1)}
    for run in runs:
        assert_times(run)
        assert math.isfinite(run["images_per_cpu_s"]) and run["images_per_cpu_s"] >= 0
    assert "wall s" in table_header(capsys.readouterr().out)


def test_processor_cpu_seconds_count_finished_workers() -> None:
    """A finished child's CPU time is part of the measure (DataLoader workers are such children)."""
    bench, cpu_time = load("bench_processor"), load("cpu_time")
    before = cpu_time.cpu_seconds(bench.CPU_SCOPE)
    subprocess.run([sys.executable, "-c", "sum(range(10**6))"], check=True)
    assert cpu_time.cpu_seconds(bench.CPU_SCOPE) - before > 0


def test_cpu_time_scopes_count_this_process_its_children_or_both() -> None:
    cpu_time = load("cpu_time")
    assert set(cpu_time.SCOPES) == {"process", "children", "process+children"}
    before = {scope: cpu_time.cpu_seconds(scope) for scope in cpu_time.SCOPES}
    subprocess.run([sys.executable, "-c", "sum(range(3 * 10**6))"], check=True)
    used = {scope: cpu_time.cpu_seconds(scope) - before[scope] for scope in cpu_time.SCOPES}
    assert used["children"] > 0, "a Python interpreter that ran cannot have used no CPU time"
    assert used["process"] >= 0
    assert used["process+children"] == pytest.approx(used["process"] + used["children"], abs=0.05)


def test_stopwatch_times_its_block_in_the_scope_it_names() -> None:
    cpu_time = load("cpu_time")
    with cpu_time.stopwatch(scope="process") as clock:
        assert math.isnan(clock.wall_s) and math.isnan(clock.cpu_s)
        start = time.process_time()
        while time.process_time() - start < 0.05:  # busy: CPU time of this process
            pass
    assert clock.cpu_s >= 0.05 and clock.wall_s > 0
    with cpu_time.stopwatch(scope="children") as clock:
        start = time.process_time()
        while time.process_time() - start < 0.05:
            pass
    assert clock.cpu_s == 0, "no child ended during the block"
    with pytest.raises(ValueError, match="scope must be one of"), cpu_time.stopwatch(scope="self"):
        pass


@pytest.mark.slow
def test_bench_curation_compares_thread_counts_in_one_run(tmp_path, capsys) -> None:
    out = tmp_path / "cur.json"
    argv = ["--texts", "4", "--words", "10", "--batch-sizes", "2", "4", "--repeats", "2", "--records", "5",
            "--threads", "1", "2", "--json", str(out)]
    load("bench_curation").main(argv)
    results = json.loads(out.read_text())
    assert results["threads"] == [1, 2]
    assert {(row["threads"], row["batch_size"]) for row in results["rows"]} == {(1, 2), (1, 4), (2, 2), (2, 4)}
    for row in [*results["rows"], results["mbr"]]:
        assert_times(row)
    assert "threads" in table_header(capsys.readouterr().out)


@pytest.mark.slow
def test_bench_curation_threshold_reports_cpu_seconds(tmp_path, capsys) -> None:
    out = tmp_path / "thr.json"
    load("bench_curation_threshold").main(["--scenes", "2", "--json", str(out)])
    timing = json.loads(out.read_text())["timing"]
    assert [row["measurement"] for row in timing] == ["pair similarities", "records' best scores"]
    for row in timing:
        assert_times(row)
    assert "wall s" in table_header(capsys.readouterr().out)


def test_the_cache_benchmark_generates_with_the_runs_own_settings(tmp_path):
    """It generated with the demo preset's N, temperature and token limit whatever run it was given, and said so."""
    log = tmp_path / "seed0" / "generate_captions" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("$ sicog generate captions --model m --data d --output o --prompt cod-default --num-candidates 3 "
                   "--top-p 0.9 --max-new-tokens 24 --batch-size 8 --seed 0 --no-progress\nLoading weights\n")
    assert load("bench_generation_cache").step_settings(tmp_path / "seed0") == {
        "--prompt": "cod-default", "--num-candidates": "3", "--top-p": "0.9", "--max-new-tokens": "24", "--seed": "0"}
