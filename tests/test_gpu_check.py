"""benchmarks/gpu_check.sh in its tiny CPU mode, its FLOP count, its failure handling and its wheel install."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """gpu_check sets one CPU thread; give the rest of the session back what it had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """gpu_check.sh from another directory, with this interpreter and no $OUT of the caller."""
    environment = {k: v for k, v in os.environ.items() if k != "OUT"}
    environment.update({"SICOG_PYTHON": sys.executable, "WHEEL_DIR": str(tmp_path / "no-wheels"), **env})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=600)


def test_tiny_mode_runs_every_section(tmp_path):
    result = run_script(tmp_path, "--tiny", "--out", str(tmp_path / "results"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    sections = results["sections"]
    assert list(sections) == ["build", "agreement", "training", "attention", "generation", "greedy"]
    assert not [name for name, section in sections.items() if "error" in section or "skipped" in section]
    agreement = sections["agreement"]
    assert agreement["ok"] and agreement["mean_cosine"] > 0.99
    assert 0 < agreement["logits_relative_l2"] < 0.05  # bf16 really ran: not fp32 against itself
    training = sections["training"]
    assert training["tokens_per_s"] > 0 and training["views_per_step"] == 2 * 5  # 2 samples x (2x2 slices + global)
    assert training["mfu"] is None  # no known peak for a CPU
    paths = {row["path"]: row for row in training["rows"]}
    assert list(paths) == ["plain", "fused_loss", "compiled", "fused_loss+compiled"]
    assert paths["fused_loss"]["error"].startswith("unavailable: --fused_loss liger needs a CUDA device")
    assert paths["compiled"]["tokens_per_s"] > 0 and not paths["compiled"]["error"]
    assert paths["compiled"]["max_loss_difference"] < 1e-3  # the traced layers compute what the eager ones do
    assert paths["plain"]["loss_last"] < paths["plain"]["loss_first"]  # the curve moves: a comparison that can fail
    assert {row["implementation"] for row in sections["attention"]["rows"]} >= {"sdpa", "eager"}
    rows = sections["generation"]["rows"]
    assert [(row["path"], row["batch"], row["N"], row["sequences_per_call"]) for row in rows] == [
        (path, batch, 6, 6 * batch) for path in ("dynamic", "static", "static+compiled") for batch in (2, 8)]
    for row in rows:  # one batch of each size: every record got its N candidates
        assert row["candidates_per_s"] * row["seconds"] == pytest.approx(row["sequences_per_call"])
        assert row["new_tokens_per_s"] == pytest.approx(row["candidates_per_s"] * row["new_tokens"])
    assert set(sections["generation"]["speedup_over_dynamic"]) == {
        f"{path} batch {batch}" for path in ("static", "static+compiled") for batch in (2, 8)}
    greedy = sections["greedy"]
    assert greedy["ok"] and [row["identical_records"] for row in greedy["rows"]] == [8, 8, 8]
    assert results["model"]["total_parameters"] > 0 and results["environment"]["commit"]
    markdown = (tmp_path / "results" / "gpu_check.md").read_text()
    assert "## training" in markdown and "| static+compiled | 8 | 6 | 48 |" in markdown


def test_out_environment_variable_wins_and_a_failed_build_is_reported(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()

    def no_model(tiny, device):
        raise RuntimeError("no model here")

    monkeypatch.setenv("OUT", str(tmp_path / "from-env"))
    monkeypatch.setattr(gpu_check, "build", no_model)
    code = gpu_check.main(["--tiny", "--out", str(tmp_path / "flag")])
    assert code == 1
    assert not (tmp_path / "flag").exists()
    results = json.loads((tmp_path / "from-env" / "gpu_check.json").read_text())
    assert results["sections"]["build"]["error"] == "RuntimeError: no model here"
    for name in ("agreement", "training", "attention", "generation", "greedy"):  # each says why, none crashes the run
        assert "could not be built" in results["sections"][name]["error"]
    assert "## generation" in (tmp_path / "from-env" / "gpu_check.md").read_text()


def test_a_failing_section_is_recorded_and_later_ones_still_run():
    gpu_check = load_gpu_check()
    sections = gpu_check.Sections(budget_s=60)
    sections.run("first", lambda: 1 / 0)
    sections.run("second", lambda: {"value": 2})
    assert sections.results["first"]["error"].startswith("ZeroDivisionError")
    assert "1 / 0" in sections.results["first"]["traceback"]
    assert sections.results["second"]["value"] == 2
    spent = gpu_check.Sections(budget_s=0)
    spent.run("late", lambda: {"value": 3})
    assert "time budget" in spent.results["late"]["skipped"]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_training_flops_agree_with_torch_flop_counter(attention):
    """Matmul FLOPs must match PyTorch's count; with eager attention (whose matmuls it also counts, in full)
    the causal LLM attention term appears twice."""
    gpu_check = load_gpu_check()
    torch.set_num_threads(1)
    model, processor = gpu_check.build(True, torch.device("cpu"))
    model.set_attn_implementation(attention)
    model.train()
    batch = gpu_check.training_batch(processor, gpu_check.SHAPES["tiny"], 2, torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with counter:
        model(**batch).loss.backward()
    flops = gpu_check.training_flops(model, batch)
    matmul = flops["vision_matmul"] + flops["resampler"] + flops["llm_matmul"]
    # the SDPA kernel of the CPU is not counted by FlopCounterMode; eager attention is
    expected = matmul if attention == "sdpa" else flops["total"] + flops["llm_attention"]
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)


def test_peak_flops_by_device_name(monkeypatch):
    gpu_check = load_gpu_check()
    cuda = torch.device("cuda")
    for name, tflops in (("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H200", 989.0), ("NVIDIA H100 PCIe", 756.0)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert gpu_check.peak_flops(cuda, None)[0] == tflops * 1e12
    assert gpu_check.peak_flops(torch.device("cpu"), None)[0] is None
    assert gpu_check.peak_flops(torch.device("cpu"), 100.0) == (100e12, "--peak-tflops")



def test_environment_records_each_optional_backend_version(monkeypatch):
    gpu_check = load_gpu_check()
    monkeypatch.setattr(gpu_check, "OPTIONAL_BACKENDS", ("pytest", "no-such-distribution"))
    info = gpu_check.environment(torch.device("cpu"), (None, "unknown"))
    assert info["pytest_version"] == pytest.__version__
    assert info["no_such_distribution_version"] is None

def make_wheel(folder: Path) -> Path:
    """A minimal valid wheel of a one-module package (pip installs it offline)."""
    folder.mkdir()
    path = folder / "gpu_check_probe-1.0-py3-none-any.whl"
    files = {
        "gpu_check_probe.py": "VALUE = 42\n",
        "gpu_check_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: 1.0\n",
        "gpu_check_probe-1.0.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in files) + "gpu_check_probe-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr("gpu_check_probe-1.0.dist-info/RECORD", record)
    return path


def fake_python(tmp_path: Path) -> Path:
    """Runs pip with this interpreter; anything else only reports the PYTHONPATH it was given."""
    path = tmp_path / "python"
    path.write_text(f'#!/usr/bin/env bash\nif [[ "$1" == "-m" ]]; then exec "{sys.executable}" "$@"; fi\n'
                    'echo "PYTHONPATH=$PYTHONPATH"\n')
    path.chmod(0o755)
    return path


def test_wheels_are_installed_first_and_come_first_on_the_path(tmp_path):
    make_wheel(tmp_path / "wheels")
    target = tmp_path / "site"
    result = run_script(tmp_path, "--tiny", WHEEL_DIR=str(tmp_path / "wheels"), WHEEL_TARGET=str(target),
                        SICOG_PYTHON=str(fake_python(tmp_path)))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (target / "gpu_check_probe.py").read_text() == "VALUE = 42\n"
    assert "installing 1 wheel(s)" in result.stdout
    assert f"PYTHONPATH={target}:{ROOT}\n" in result.stdout


def test_dry_run_prints_the_command_and_installs_nothing(tmp_path):
    make_wheel(tmp_path / "wheels")
    result = run_script(tmp_path, "--tiny", "--dry-run", WHEEL_DIR=str(tmp_path / "wheels"),
                        WHEEL_TARGET=str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr
    assert "benchmarks/gpu_check.py --tiny" in result.stdout
    assert not (tmp_path / "site").exists()
