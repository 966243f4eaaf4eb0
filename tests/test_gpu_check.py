"""benchmarks/gpu_check.sh in its tiny CPU mode, its FLOP count, its failure handling, its time budget and its
wheel install."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
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
    assert not [name for name, section in sections.items() if {"error", "skipped", "incomplete"} & set(section)]
    agreement = sections["agreement"]
    assert agreement["ok"] and agreement["mean_cosine"] > 0.99
    assert 0 < agreement["logits_relative_l2"] < 0.05  # bf16 really ran: not fp32 against itself
    training = sections["training"]
    assert training["tokens_per_s"] > 0 and training["views_per_step"] == 2 * 5  # 2 samples x (2x2 slices + global)
    assert training["mfu"] is None  # no known peak for a CPU
    paths = {row["path"]: row for row in training["rows"]}
    assert list(paths) == ["plain", "plain, eager attention", "fused_loss", "compiled", "fused_loss+compiled"]
    # the control computes the same function through other kernels: a small gap, but a measured one
    assert training["noise_floor"] == paths["plain, eager attention"]["max_loss_difference"] < 1e-3
    assert paths["fused_loss"]["error"].startswith("unavailable: --fused_loss liger needs a CUDA device")
    assert paths["compiled"]["tokens_per_s"] > 0 and not paths["compiled"]["error"]
    assert paths["compiled"]["max_loss_difference"] < 1e-3  # the traced layers compute what the eager ones do
    assert paths["plain"]["loss_last"] < paths["plain"]["loss_first"]  # the curve moves: a comparison that can fail
    profile = training["kernel_profile"]  # the paths that ran (liger is GPU-only): time, then the top operators
    profile_line = r"[\d.]+ ms wall, [\d.]+ ms in operators: .+ \d+%"
    assert set(profile) == {"plain", "plain, eager attention", "compiled"}
    assert re.fullmatch(profile_line, profile["plain"])
    assert {row["implementation"] for row in sections["attention"]["rows"]} >= {"sdpa", "eager"}
    rows = sections["generation"]["rows"]
    assert [(row["path"], row["batch"], row["N"], row["sequences_per_call"]) for row in rows] == [
        (path, batch, 6, 6 * batch) for batch in (2, 8) for path in ("plain", "shared", "static", "static+compiled")]
    for row in rows:  # one batch of each size: every record got its N candidates
        assert row["candidates_per_s"] * row["seconds"] == pytest.approx(row["sequences_per_call"])
        assert row["new_tokens_per_s"] == pytest.approx(row["candidates_per_s"] * row["new_tokens"])
        # one batch of the first size decoded again under the profiler, on each path
        assert re.fullmatch(profile_line, row["profile"]) if row["batch"] == 2 else row["profile"] is None
        assert row["graphs_compiled_while_timed"] == row["cudagraph_skips_while_timed"] == 0
    assert set(sections["generation"]["speedup_over_plain"]) == {
        f"{path} batch {batch}" for path in ("shared", "static", "static+compiled") for batch in (2, 8)}
    greedy = sections["greedy"]
    assert greedy["ok"] and [(row["identical_greedy"], row["identical_sampled"]) for row in greedy["rows"]] == [
        (8, 8)] * 4
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


def fake_model():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower, self.resampler, self.language_model = (torch.nn.Linear(1, 1) for _ in range(3))

    return Model()


def fake_sections(gpu_check, monkeypatch, generation_row=None, generation=None):
    """main() with a fake model and instant sections: only generation (row by row) or what is given runs."""
    monkeypatch.setattr(gpu_check, "build", lambda tiny, device: (fake_model(), None))
    monkeypatch.setattr(gpu_check, "agreement", lambda *args: {"ok": True})
    monkeypatch.setattr(gpu_check, "training", lambda *args: {"value": 1})
    monkeypatch.setattr(gpu_check, "attention", lambda *args: {"value": 1})
    monkeypatch.setattr(gpu_check, "greedy", lambda *args: {"ok": True, "rows": []})
    monkeypatch.setattr(gpu_check, "prepare_generation", lambda *args: None)
    if generation_row is not None:
        monkeypatch.setattr(gpu_check, "generation_row", generation_row)
    if generation is not None:
        monkeypatch.setattr(gpu_check, "generation", generation)


def test_generation_checks_the_budget_before_and_saves_after_every_configuration(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    saved = []
    sections = gpu_check.Sections(budget_s=1000, on_result=lambda: saved.append(
        json.loads(json.dumps(sections.results.get("generation", {})))))
    calls = []

    def row(model, processor, device, args, root, path, batch_size, settings):
        calls.append((path, batch_size, settings.compile))
        if len(calls) == 4:
            sections.budget_s = 0  # the budget runs out during the fourth configuration
        return {"path": path, "batch": batch_size, "new_tokens_per_s": 10.0 * len(calls), "error": ""}

    monkeypatch.setattr(gpu_check, "generation_row", row)
    monkeypatch.setattr(gpu_check, "prepare_generation", lambda *args: None)
    args = argparse.Namespace(num_candidates=6, max_new_tokens=8, gen_batch_sizes=[8, 32, 128])
    sections.run("generation", lambda: gpu_check.generation(None, None, {}, torch.device("cpu"), args, tmp_path,
                                                             sections))
    # batch-major: the first size is measured on every path before the next size starts
    assert [(path, batch) for path, batch, _ in calls] == [("plain", 8), ("shared", 8), ("static", 8),
                                                           ("static+compiled", 8)]
    result = sections.results["generation"]
    assert result["skipped"] == ("time budget of 0 s spent before: plain batch 32, shared batch 32, static batch 32, "
                                 "static+compiled batch 32, plain batch 128, shared batch 128, static batch 128, "
                                 "static+compiled batch 128")
    assert result["speedup_over_plain"] == {"shared batch 8": 2.0, "static batch 8": 3.0,
                                            "static+compiled batch 8": 4.0}
    # saved when the section starts, after each configuration (marked incomplete), and at its end
    assert [len(snapshot.get("rows", [])) for snapshot in saved] == [0, 1, 2, 3, 4, 4]
    assert all("incomplete" in snapshot for snapshot in saved[:-1]) and "incomplete" not in saved[-1]


def test_a_section_lists_what_the_budget_left_out_and_its_baseline_always_runs():
    """Training and attention always measure their first (plain) path, the baseline of the others' numbers."""
    gpu_check = load_gpu_check()
    paths = ["plain", "eager", "compiled"]
    for progress, first_always, ran in ((gpu_check.NO_BUDGET, False, paths),
                                        (gpu_check.Sections(budget_s=-1), True, ["plain"]),
                                        (gpu_check.Sections(budget_s=-1), False, [])):
        skipped = []
        assert list(gpu_check.within_budget(paths, progress, skipped, str.upper, first_always)) == ran
        assert skipped == [path.upper() for path in paths if path not in ran]


def test_sections_run_only_those_asked_for_in_the_order_given(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    order = []
    fake_sections(gpu_check, monkeypatch)
    for name in gpu_check.SECTIONS:
        monkeypatch.setattr(gpu_check, name, lambda *args, name=name: order.append(name) or {"ok": True, "rows": []})
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--sections", "greedy", "training", "greedy"]) == 0
    assert order == ["greedy", "training"]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(results["sections"]) == ["build", "greedy", "training"]


def test_compiled_configurations_run_last_in_their_section():
    gpu_check = load_gpu_check()
    for paths, compiled_at in ((gpu_check.DECODING_PATHS, 2), (gpu_check.TRAINING_PATHS, 2)):
        flags = [path[compiled_at] for path in paths]
        assert flags == sorted(flags)  # False (eager) before True (compiled)


def test_a_run_killed_mid_section_keeps_its_finished_rows(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    calls = []

    def row(model, processor, device, args, root, path, batch_size, settings):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what the machine's time limit does: nothing in the script sees it coming
        return {"path": path, "batch": batch_size, "new_tokens_per_s": 1.0, "error": ""}

    fake_sections(gpu_check, monkeypatch, generation_row=row)
    monkeypatch.delenv("OUT", raising=False)
    with pytest.raises(KeyboardInterrupt):
        gpu_check.main(["--tiny", "--out", str(tmp_path), "--gen-batch-sizes", "8", "32"])
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    generation = results["sections"]["generation"]
    assert [(r["path"], r["batch"]) for r in generation["rows"]] == [("plain", 8), ("shared", 8)]
    assert "incomplete" in generation and "greedy" not in results["sections"]
    assert "| shared | 8 |" in (tmp_path / "gpu_check.md").read_text()


def test_a_skipped_greedy_section_is_not_reported_as_differing_outputs(tmp_path, monkeypatch, capsys):
    gpu_check = load_gpu_check()

    def generation(model, processor, shape, device, args, root, progress):
        progress.budget_s = 0  # spent by the end of generation: greedy does not start
        return {"rows": []}

    fake_sections(gpu_check, monkeypatch, generation=generation)
    monkeypatch.setattr(gpu_check, "greedy", lambda *args: pytest.fail("greedy ran after the budget was spent"))
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "time budget" in results["sections"]["greedy"]["skipped"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("failed: greedy")  # skipped, and nothing else: no claim about outputs that were not made


def test_greedy_compares_only_the_paths_that_ran(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()

    def generate(model, processor, root, name, records, batch_size, settings):
        if settings.compile:
            raise RuntimeError("no compiler here")
        return 0.0, [["same text"]] * records, 10

    monkeypatch.setattr(gpu_check, "generate_records", generate)
    monkeypatch.setattr(gpu_check, "prepare_generation", lambda *args: None)
    args = argparse.Namespace(max_new_tokens=8, greedy_records=4, num_candidates=3)
    result = gpu_check.greedy(None, None, {}, torch.device("cpu"), args, tmp_path)
    assert result["ok"] is True  # the other paths agree; the failed path is an error, not a difference
    assert result["error"] == "static+compiled: RuntimeError: no compiler here"
    assert [(row["identical_greedy"], row["identical_sampled"]) for row in result["rows"]] == [(4, 4)] * 3 + [
        (None, None)]

    def different(model, processor, root, name, records, batch_size, settings):
        if settings.sampling and settings.shared_prefill:  # greedy agrees; the second sampled candidate does not
            return 0.0, [["same", "shared text"]] * records, 10
        return 0.0, [["same", "plain text"][:settings.num_candidates]] * records, 10

    monkeypatch.setattr(gpu_check, "generate_records", different)
    result = gpu_check.greedy(None, None, {}, torch.device("cpu"), args, tmp_path)
    assert result["ok"] is False
    shared = result["rows"][1]
    assert (shared["identical_greedy"], shared["identical_sampled"]) == (4, 0)
    assert shared["first_difference"] == "sampled, record 0, candidate 1, character 0: 'shared text' vs 'plain text'"


def test_an_import_failure_still_writes_the_results(tmp_path):
    """The lent machine lacked braceexpand once: the check crashed at import and wrote nothing."""
    blocker = tmp_path / "blocker" / "braceexpand"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('braceexpand blocked for the test')\n")
    environment = {k: v for k, v in os.environ.items() if k != "OUT"}
    environment["PYTHONPATH"] = f"{blocker.parent}:{ROOT}"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--out",
                             str(tmp_path / "results")], env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    assert list(results["sections"]) == ["imports"]
    assert results["sections"]["imports"]["error"] == "ImportError: braceexpand blocked for the test"
    assert "sicog/data/sources.py" in results["sections"]["imports"]["traceback"]
    assert results["environment"]["packages"]["torch"] == importlib.metadata.version("torch")
    assert "## imports" in (tmp_path / "results" / "gpu_check.md").read_text()


def make_wheel(folder: Path, version: str = "1.0") -> Path:
    """A minimal valid wheel of a one-module package (pip installs it offline)."""
    folder.mkdir(exist_ok=True)
    path = folder / f"gpu_check_probe-{version}-py3-none-any.whl"
    info = f"gpu_check_probe-{version}.dist-info"
    files = {
        "gpu_check_probe.py": f"VERSION = {version!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: gpu-check-probe\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
        archive.writestr(f"{info}/RECORD", record)
    return path


def test_wheels_are_installed_into_a_fresh_environment_over_the_interpreters_packages(tmp_path):
    """The environment sees this interpreter's packages (torch, sicog: the check imports), takes from the wheels
    only what they lack (the probe, not pytest), and starts empty on every run (a rerun gets the new probe)."""
    venv = tmp_path / "venv"
    for version in ("1.0", "2.0"):
        wheels = tmp_path / f"wheels-{version}"
        make_wheel(wheels, version)
        (wheels / "requirements.txt").write_text("gpu-check-probe\npytest>=7\n")
        result = run_script(tmp_path, "--tiny", "--budget-s", "0", "--out", str(tmp_path / "results"),
                            WHEEL_DIR=str(wheels), GPU_CHECK_VENV=str(venv))
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # every section skipped
        assert f"{venv}/bin/python {ROOT}/benchmarks/gpu_check.py" in result.stdout
        results = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
        setup = results["sections"]["setup"]
        assert "error" not in setup and setup["installed_from_wheels"] == f"gpu-check-probe-{version}"
        assert "imports" not in results["sections"]  # torch, transformers and sicog came from the interpreter
        assert results["environment"]["executable"] == f"{venv}/bin/python"
        assert all("skipped" in results["sections"][name] for name in ("build", "generation", "greedy"))
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import gpu_check_probe as p; print(p.VERSION)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert probe.stdout.strip() == "2.0", probe.stderr
    assert [p.name for p in venv.glob("lib/python*/site-packages/gpu_check_probe-*")] == [
        "gpu_check_probe-2.0.dist-info"]


def test_a_failed_install_is_recorded_and_the_check_still_runs(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    (wheels / "requirements.txt").write_text("gpu-check-probe\nno-such-distribution-for-gpu-check\n")
    result = run_script(tmp_path, "--tiny", "--budget-s", "0", "--out", str(tmp_path / "results"),
                        WHEEL_DIR=str(wheels), GPU_CHECK_VENV=str(tmp_path / "venv"))
    assert result.returncode == 1
    assert f"{sys.executable} {ROOT}/benchmarks/gpu_check.py" in result.stdout  # the interpreter as it is
    setup = json.loads((tmp_path / "results" / "gpu_check.json").read_text())["sections"]["setup"]
    assert setup["error"].startswith(f"installing {wheels}/requirements.txt into {tmp_path / 'venv'} failed (exit 1)")
    assert "no-such-distribution-for-gpu-check" in setup["log"]


def test_wheels_without_requirements_are_reported(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    result = run_script(tmp_path, "--tiny", "--budget-s", "0", "--out", str(tmp_path / "results"),
                        WHEEL_DIR=str(wheels), GPU_CHECK_VENV=str(tmp_path / "venv"))
    assert result.returncode == 1
    setup = json.loads((tmp_path / "results" / "gpu_check.json").read_text())["sections"]["setup"]
    assert "no requirements.txt" in setup["error"] and not (tmp_path / "venv").exists()


def test_dry_run_prints_the_commands_and_installs_nothing(tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels)
    (wheels / "requirements.txt").write_text("gpu-check-probe\n")
    result = run_script(tmp_path, "--tiny", "--dry-run", WHEEL_DIR=str(wheels), GPU_CHECK_VENV=str(tmp_path / "venv"))
    assert result.returncode == 0, result.stderr
    assert f"--find-links {wheels}" in result.stdout and f"-r {wheels}/requirements.txt" in result.stdout
    assert "benchmarks/gpu_check.py --tiny" in result.stdout
    assert not (tmp_path / "venv").exists()


def test_without_sicog_python_the_checkout_environment_is_used(tmp_path):
    """python3 on PATH that cannot import sicog (e.g. a system Python): the checkout's .venv, as the other scripts."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("no .venv in this checkout")
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "python3").write_text("#!/bin/sh\nexit 1\n")
    (shim / "python3").chmod(0o755)
    environment = {k: v for k, v in os.environ.items() if k not in ("OUT", "SICOG_PYTHON")}
    environment.update(PATH=f"{shim}:{environment['PATH']}", WHEEL_DIR=str(tmp_path / "no-wheels"))
    result = subprocess.run(["bash", str(SCRIPT), "--tiny", "--dry-run"], cwd=tmp_path, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{ROOT}/.venv/bin/python {ROOT}/benchmarks/gpu_check.py --tiny")


def test_wheel_pins_walk_the_dependency_closure_for_the_device():
    gpu_check = load_gpu_check()
    here = {
        "app": ("1.0", ["lib>=1", "torch>=2", "tomli; python_version < '3.11'", "pywin; sys_platform == 'win32'",
                        "docs-tool; extra == 'docs'", "helper[fast]>=2"]),
        "lib": ("1.5", ["nvidia-cublas-cu12", "numpy"]),
        "helper": ("2.0", ["speedup; extra == 'fast'", "slow; extra == 'other'"]),
        "speedup": ("0.3", []),
        "tomli": ("2.0", []),
    }
    pins = gpu_check.wheel_pins(["app>=1", "new-thing>=0.8"], "3.12", {}, here.get)
    assert pins == {"app": "app==1.0", "lib": "lib==1.5", "helper": "helper==2.0", "speedup": "speedup==0.3",
                    "new-thing": "new-thing>=0.8"}  # not installed here: the newest its requirement allows
    # on Python 3.10, tomli too; a downloaded wheel is pinned to its own version and its requirements are walked
    wheels = {"new-thing": ("0.9", ["speedup", "triton>=3; platform_machine == 'x86_64'"])}
    pins = gpu_check.wheel_pins(["app>=1", "new-thing>=0.8"], "3.10", wheels, here.get)
    assert pins["tomli"] == "tomli==2.0" and pins["new-thing"] == "new-thing==0.9" and "triton" not in pins


def test_top_requirements_are_sicogs_own_with_this_transformers():
    import transformers

    gpu_check = load_gpu_check()
    requirements = gpu_check.top_requirements(ROOT)
    assert f"transformers=={transformers.__version__}" in requirements
    names = {r.split(">")[0].split("=")[0].split("<")[0] for r in requirements}
    assert {"braceexpand", "liger-kernel", "torch"} <= names
    assert not [r for r in requirements if r.startswith("flash")]
