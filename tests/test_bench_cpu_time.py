"""The five timing benchmarks (generation, processor, CLI --help, curation, curation threshold) report CPU
seconds beside wall seconds for every variant, in their tables and their JSON; bench_curation compares
several thread counts in one run. Tiny settings; no duration or speed is asserted."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
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
    import subprocess

    bench = load("bench_processor")
    before = bench.cpu_s()
    subprocess.run([sys.executable, "-c", "sum(range(10**6))"], check=True)
    assert bench.cpu_s() - before > 0


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
