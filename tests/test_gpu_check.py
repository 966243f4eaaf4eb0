"""benchmarks/gpu_check.sh in its tiny CPU mode, its FLOP count, its failure handling, its time budget and its
wheel install."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
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
    # the correctness checks first, generation (the longest, cut first by the budget) last
    assert list(sections) == ["build", "agreement", "training", "attention", "greedy", "decoding_agreement",
                              "generation"]
    assert not [name for name, section in sections.items() if {"error", "skipped", "incomplete"} & set(section)]
    agreement = sections["agreement"]
    assert agreement["ok"] and agreement["mean_cosine"] > 0.99
    assert 0 < agreement["logits_relative_l2"] < 0.05  # bf16 really ran: not fp32 against itself
    training = sections["training"]
    assert training["tokens_per_s"] > 0 and training["views_per_step"] == 2 * 5  # 2 samples x (2x2 slices + global)
    assert 0 < training["image_tokens_per_sample"] < training["sequence_length"]
    assert training["mfu"] is None  # no known peak for a CPU
    paths = {row["path"]: row for row in training["rows"]}
    assert list(paths) == ["plain", "plain, eager attention", "fused_loss", "compiled", "fused_loss+compiled"]
    # the control computes the same function through other kernels: a small gap, but a measured one
    assert training["noise_floor"] == paths["plain, eager attention"]["max_loss_difference"] < 1e-3
    assert training["loss_gap_tolerance"] == pytest.approx(4 * training["noise_floor"] + 0.05)
    assert paths["fused_loss"]["error"].startswith("unavailable: --fused_loss liger needs a CUDA device")
    assert paths["compiled"]["tokens_per_s"] > 0 and not paths["compiled"]["error"]
    assert paths["compiled"]["max_loss_difference"] < 1e-3  # the traced layers compute what the eager ones do
    assert paths["plain"]["loss_last"] < paths["plain"]["loss_first"]  # the curve moves: a comparison that can fail
    for name in ("plain", "plain, eager attention", "compiled"):  # each path's bf16 forward against plain fp32
        row = paths[name]
        assert 0 < row["fp32_loss_difference"] < 0.05 and 0.99 < row["fp32_mean_cosine"] <= 1
        assert row["graphs_compiled_while_timed"] == 0
    assert paths["compiled"]["graphs_compiled"] > 0 and paths["plain"]["graphs_compiled"] == 0
    # an unavailable fast path is no failure, but a warning
    assert results["warnings"] == [f"training {path}: {paths[path]['error']}" for path in ("fused_loss",
                                                                                          "fused_loss+compiled")]
    assert "warning: training fused_loss: unavailable" in result.stdout
    profile = training["kernel_profile"]  # the paths that ran (liger is GPU-only): time, then the top operators
    profile_line = r"[\d.]+ ms wall, [\d.]+ ms in operators: .+ \d+%"
    assert set(profile) == {"plain", "plain, eager attention", "compiled"}
    assert re.fullmatch(profile_line, profile["plain"])
    assert {row["implementation"] for row in sections["attention"]["rows"]} >= {"sdpa", "eager"}
    rows = sections["generation"]["rows"]
    assert [(row["path"], row["batch"], row["N"], row["sequences_per_call"]) for row in rows] == [
        (path, batch, 6, 6 * batch) for batch in (2, 8) for path in ("plain", "shared", "static", "static+compiled")]
    assert len({row["prompt_tokens"] for row in rows}) == 1  # one prompt length: the warm-up has the timed shapes
    for row in rows:  # one batch of each size: every record got its N candidates
        assert row["candidates_per_s"] * row["seconds"] == pytest.approx(row["sequences_per_call"])
        assert row["new_tokens_per_s"] == pytest.approx(row["candidates_per_s"] * row["new_tokens"])
        # one batch of the first size decoded again under the profiler, on each path
        assert re.fullmatch(profile_line, row["profile"]) if row["batch"] == 2 else row["profile"] is None
        assert row["graphs_compiled_while_timed"] == row["cudagraph_skips_while_timed"] == 0
    assert set(sections["generation"]["speedup_over_plain"]) == {
        f"{path} batch {batch}" for path in ("shared", "static", "static+compiled") for batch in (2, 8)}
    greedy = sections["greedy"]
    assert greedy["ok"] and [(row["identical_greedy"], row["identical_greedy_n"], row["identical_sampled"])
                             for row in greedy["rows"]] == [(8, 8, 8)] * 4
    decoding = sections["decoding_agreement"]
    assert decoding["ok"] and [row["path"] for row in decoding["rows"]] == ["plain", "shared", "static",
                                                                              "static+compiled"]
    for row in decoding["rows"]:  # 8 records x N = 6 sequences, each forced onto the fp32 greedy tokens
        assert row["ok"] and row["sequences"] == 48 and row["mean_cosine"] > 0.99
        assert 0 < row["logits_relative_l2"] < 0.05  # bf16 against fp32, not a path against itself
    assert results["model"]["total_parameters"] > 0 and results["environment"]["commit"]
    markdown = (tmp_path / "results" / "gpu_check.md").read_text()
    assert "## training" in markdown and "| static+compiled | 8 | 6 | 48 |" in markdown


def tiny_model(gpu_check):
    """The tiny model and processor on the CPU (one thread), and its float32 weights as main() keeps them."""
    torch.set_num_threads(1)
    model, processor = gpu_check.build(True, torch.device("cpu"))
    return model, processor, gpu_check.cpu_copy(model)


def only_paths(gpu_check, monkeypatch, *names):
    """Training measures the named paths alone (the rest would only cost time)."""
    monkeypatch.setattr(gpu_check, "TRAINING_PATHS", tuple(p for p in gpu_check.TRAINING_PATHS if p[0] in names))


def run_training(gpu_check, model, processor, weights):
    args = gpu_check.parse_args(["--tiny"])
    return gpu_check.training(model.to(torch.bfloat16), processor, gpu_check.SHAPES["tiny"], torch.device("cpu"),
                              args, None, weights)


def test_agreement_compares_with_fp32_also_after_a_section_cast_the_model(tmp_path, monkeypatch):
    """attention (bf16; it trains, too) before agreement: the reference is still the float32 model as built."""
    gpu_check = load_gpu_check()
    monkeypatch.delenv("OUT", raising=False)
    found = {}
    for name, sections in (("alone", ["agreement"]), ("late", ["attention", "agreement"])):
        assert gpu_check.main(["--tiny", "--out", str(tmp_path / name), "--sections", *sections]) == 0
        found[name] = json.loads((tmp_path / name / "gpu_check.json").read_text())["sections"]["agreement"]
    assert found["late"]["logits_relative_l2"] > 0  # not bf16 against bf16
    assert found["late"]["loss_fp32"] == found["alone"]["loss_fp32"]
    assert found["late"]["loss_bf16"] == pytest.approx(found["alone"]["loss_bf16"])


def test_a_fast_path_whose_loss_curve_departs_fails(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    compile_layers = gpu_check.compile_layers

    def diverging(model, backend="inductor"):
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(3.0)  # another function from the first step on
        return compile_layers(model, backend=backend)

    monkeypatch.setattr(gpu_check, "compile_layers", diverging)
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--sections", "training"]) == 1
    training = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["training"]
    rows = {row["path"]: row for row in training["rows"]}
    assert rows["compiled"]["max_loss_difference"] > training["loss_gap_tolerance"]
    assert rows["compiled"]["error"].startswith("loss curve departs from the plain one by ")
    assert training["error"] == f"compiled: {rows['compiled']['error']}"
    assert not rows["plain"]["error"] and not rows["plain, eager attention"]["error"]


def test_the_loss_gap_tolerance_is_a_multiple_of_the_noise_floor_plus_a_bf16_bound():
    gpu_check = load_gpu_check()
    assert gpu_check.loss_gap_tolerance(0.01) == pytest.approx(4 * 0.01 + 0.05)
    assert gpu_check.loss_gap_tolerance(None) == 0.05  # no control measured: the absolute bound alone
    rows = [{"path": path, "max_loss_difference": gap, "error": ""}
            for path, gap in (("plain", 0.0), (gpu_check.NOISE_CONTROL, 0.2), ("compiled", 0.09), ("fused_loss", 0.11),
                              ("fused_loss+compiled", None))]
    gpu_check.check_loss_gaps(rows, 0.1)
    assert [bool(row["error"]) for row in rows] == [False, False, False, True, False]


def test_a_training_path_that_disagrees_with_fp32_fails(monkeypatch):
    """Each path's first forward (bf16, starting weights) is compared with the plain float32 forward."""
    gpu_check = load_gpu_check()
    model, processor, weights = tiny_model(gpu_check)
    compile_layers = gpu_check.compile_layers

    def negated_logits(model, backend="inductor"):
        model.get_output_embeddings().register_forward_hook(lambda module, inputs, output: -output)
        return compile_layers(model, backend=backend)

    monkeypatch.setattr(gpu_check, "compile_layers", negated_logits)
    only_paths(gpu_check, monkeypatch, "plain", "compiled")
    plain, compiled = run_training(gpu_check, model, processor, weights)["rows"]
    assert not plain["error"] and plain["fp32_mean_cosine"] > 0.99 and 0 < plain["fp32_loss_difference"] < 0.05
    assert compiled["fp32_mean_cosine"] < 0
    assert "bf16 disagrees with the plain fp32 forward beyond the tolerance" in compiled["error"]


def test_a_training_path_that_compiles_while_timed_fails(monkeypatch):
    gpu_check = load_gpu_check()
    model, processor, weights = tiny_model(gpu_check)
    compiled = itertools.count()  # every look at the counters finds one more graph
    monkeypatch.setattr(gpu_check, "compile_counts", lambda: {"graphs_compiled": next(compiled), "cudagraph_skips": 0})
    only_paths(gpu_check, monkeypatch, "plain")
    plain = run_training(gpu_check, model, processor, weights)["rows"][0]
    assert plain["graphs_compiled_while_timed"] > 0 and plain["tokens_per_s"] > 0  # the numbers stay
    assert "graphs compiled during the timed steps" in plain["error"]


def test_a_failed_plain_training_path_keeps_the_other_paths_rows(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    train_steps = gpu_check.train_steps
    calls = []

    def plain_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (simulated, plain path only)")
        return train_steps(*args, **kwargs)

    monkeypatch.setattr(gpu_check, "train_steps", plain_fails)
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--sections", "training"]) == 1
    training = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]["training"]
    rows = {row["path"]: row for row in training["rows"]}
    assert training["error"] == "plain: RuntimeError: CUDA out of memory (simulated, plain path only)"
    assert rows["plain, eager attention"]["tokens_per_s"] > 0 and rows["compiled"]["tokens_per_s"] > 0
    assert "tokens_per_s" not in training  # the section's own values are the plain path's


def test_a_section_that_raises_keeps_the_rows_it_reported():
    gpu_check = load_gpu_check()
    sections = gpu_check.Sections(budget_s=60)

    def section():
        sections.partial({"rows": [{"path": "plain"}]})
        raise RuntimeError("after the first row")

    sections.run("rows", section)
    result = sections.results["rows"]
    assert result["rows"] == [{"path": "plain"}] and result["error"] == "RuntimeError: after the first row"
    assert "incomplete" not in result


def test_training_restarts_each_path_from_a_copy_on_the_cpu(monkeypatch):
    """On a GPU a copy of the weights on the device would count in every path's peak memory (the CPU cannot show
    that: this checks that the copy comes from cpu_copy, unpinned here, and that cpu_copy copies)."""
    gpu_check = load_gpu_check()
    model, processor, weights = tiny_model(gpu_check)
    cpu_copy, pins = gpu_check.cpu_copy, []
    monkeypatch.setattr(gpu_check, "cpu_copy", lambda model, pin=False: pins.append(pin) or cpu_copy(model, pin))
    only_paths(gpu_check, monkeypatch, "plain")
    run_training(gpu_check, model, processor, weights)
    assert pins == [False]  # pinned only for a CUDA device
    copy = cpu_copy(model)
    name, value = next(iter(model.state_dict().items()))
    assert copy[name].device.type == "cpu" and torch.equal(copy[name], value)
    with torch.no_grad():
        value.add_(1.0)
    assert not torch.equal(copy[name], value)


def test_a_generation_row_times_only_the_shapes_its_warm_up_ran(tmp_path, monkeypatch):
    """On the static cache: the timed batches reuse the cache the warm-up batch made (a longer prompt would grow
    it, and a compiled step would compile again while timed), and a row starts without the previous row's cache
    (which would count in its peak memory)."""
    gpu_check = load_gpu_check()
    model, processor, _ = tiny_model(gpu_check)
    model.to(torch.bfloat16)
    gpu_check.prepare_generation(model, gpu_check.SHAPES["tiny"], tmp_path)
    generate_records, seen = gpu_check.generate_records, []

    def spy(model, processor, root, name, *args, **kwargs):
        kept = getattr(model, "_static_cache", None)
        result = generate_records(model, processor, root, name, *args, **kwargs)
        seen.append((name, kept, model._static_cache))
        return result

    monkeypatch.setattr(gpu_check, "generate_records", spy)
    args = gpu_check.parse_args(["--tiny", "--gen-batches", "2"])
    settings = gpu_check.SamplingSettings(num_candidates=6, max_new_tokens=args.max_new_tokens, cache="static")
    for batch in (2, 8):
        row = gpu_check.generation_row(model, processor, torch.device("cpu"), args, tmp_path, "static", batch, settings)
        assert not row["error"]
    assert [name for name, _, _ in seen] == ["static-w2", "static-b2", "static-p2", "static-w8", "static-b8"]
    assert seen[1][2] is seen[0][2] and seen[4][2] is seen[3][2]  # timed on the warm-up's cache
    assert seen[0][1] is None and seen[3][1] is None  # each row made its own


def test_a_generation_row_that_compiles_while_timed_fails(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    compiled = itertools.count()  # every look at the counters finds one more graph
    monkeypatch.setattr(gpu_check, "compile_counts", lambda: {"graphs_compiled": next(compiled), "cudagraph_skips": 0})
    monkeypatch.setattr(gpu_check, "generate_records", lambda *args, **kwargs: (1.0, [], 10))
    args = argparse.Namespace(num_candidates=6, max_new_tokens=8, gen_batches=2, gen_batch_sizes=[4, 8])
    row = gpu_check.generation_row(fake_model(), None, torch.device("cpu"), args, tmp_path, "static+compiled", 8,
                                   None)
    assert row["graphs_compiled_while_timed"] == 1 and row["new_tokens_per_s"] > 0  # the numbers stay
    assert row["error"] == "1 graphs compiled during the timed batches"


def test_repeated_batch_sizes_run_once_and_no_run_resumes_another(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()
    assert gpu_check.parse_args(["--gen-batch-sizes", "8", "32", "8"]).gen_batch_sizes == [8, 32]
    model, processor, _ = tiny_model(gpu_check)
    gpu_check.prepare_generation(model, gpu_check.SHAPES["tiny"], tmp_path)
    generate, calls = type(model).generate, []
    monkeypatch.setattr(type(model), "generate", lambda self, *args, **kwargs: calls.append(1) or generate(
        self, *args, **kwargs))
    settings = gpu_check.SamplingSettings(num_candidates=2, max_new_tokens=2)
    for _ in range(2):  # the same name twice: the second run generates again, it does not read the first's outputs
        candidates = gpu_check.generate_records(model, processor, tmp_path, "same", 2, 2, settings)[1]
        assert [len(texts) for texts in candidates] == [2, 2]
    assert len(calls) == 2


def test_greedy_copies_go_through_the_shared_prefill(tmp_path, monkeypatch):
    """At temperature 0 there is one sequence per record, so no path shares a prefill: greedy_n (top-k 1, N copies)
    is greedy through it."""
    gpu_check = load_gpu_check()
    model, processor, _ = tiny_model(gpu_check)
    prefill, shared = type(model)._prefill_once, []

    def spy(self, inputs_embeds, *args, **kwargs):
        embeds, mask = prefill(self, inputs_embeds, *args, **kwargs)
        shared.append(embeds is not inputs_embeds)  # prefilled once, then copied
        return embeds, mask

    monkeypatch.setattr(type(model), "_prefill_once", spy)
    generate_records, runs = gpu_check.generate_records, {}

    def named(model, processor, root, name, *args, **kwargs):
        shared.clear()
        result = generate_records(model, processor, root, name, *args, **kwargs)
        runs[name] = any(shared)
        return result

    monkeypatch.setattr(gpu_check, "generate_records", named)
    args = argparse.Namespace(max_new_tokens=2, greedy_records=2, num_candidates=2)
    result = gpu_check.greedy(model, processor, gpu_check.SHAPES["tiny"], torch.device("cpu"), args, tmp_path)
    assert result["ok"] and [row["identical_greedy_n"] for row in result["rows"]] == [2] * 4
    assert {name: ran for name, ran in runs.items() if name.startswith("greedy_n")} == {
        "greedy_n-plain": False, "greedy_n-shared": True, "greedy_n-static": True, "greedy_n-static+compiled": True}


def test_every_decoding_path_decodes_the_forced_tokens(tmp_path):
    gpu_check = load_gpu_check()
    model, processor, _ = tiny_model(gpu_check)
    gpu_check.prepare_generation(model, gpu_check.SHAPES["tiny"], tmp_path)
    inputs = gpu_check.generation_inputs(processor, tmp_path, 3, torch.device("cpu"))
    words = processor.tokenizer("a blue square near the top", add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([words[:4], words[1:5], words[2:6]])  # not what the random model picks
    for path, cache, compiled, shared in gpu_check.DECODING_PATHS:
        settings = gpu_check.SamplingSettings(num_candidates=2, max_new_tokens=4, cache=cache, compile=compiled,
                                              shared_prefill=shared)
        decoded, logits = gpu_check.decoded_logits(model, inputs, settings, gpu_check.ForcedTokens(tokens, 2))
        assert torch.equal(decoded, tokens.repeat_interleave(2, dim=0)), path
        assert logits.shape[:2] == (6, 4) and logits.dtype == torch.float32


def test_a_decoding_path_whose_logits_depart_from_fp32_fails(tmp_path, monkeypatch, capsys):
    gpu_check = load_gpu_check()
    model, processor, weights = tiny_model(gpu_check)
    decoded_logits = gpu_check.decoded_logits

    def broken_static(model, inputs, settings, forced=None):
        tokens, logits = decoded_logits(model, inputs, settings, forced)
        return tokens, -logits if forced is not None and settings.cache == "static" else logits

    monkeypatch.setattr(gpu_check, "decoded_logits", broken_static)
    args = gpu_check.parse_args(["--tiny", "--greedy-records", "2", "--max-new-tokens", "3", "--num-candidates", "2"])
    result = gpu_check.decoding_agreement(model.to(torch.bfloat16), processor, gpu_check.SHAPES["tiny"],
                                          torch.device("cpu"), args, tmp_path, weights)
    assert [row["ok"] for row in result["rows"]] == [True, True, False, False] and result["ok"] is False
    assert model.dtype == torch.bfloat16
    fake_sections(gpu_check, monkeypatch, decoding_agreement=lambda *args: {"ok": False, "rows": []})
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path / "main"), "--sections", "decoding_agreement"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith("failed: bf16 decoding disagrees with fp32")


def test_the_docs_state_the_sample_length_the_script_builds():
    gpu_check = load_gpu_check()
    model, processor = gpu_check.build(False, torch.device("meta"))
    ids = gpu_check.training_batch(processor, gpu_check.SHAPES["full"], 1, torch.device("cpu"))["input_ids"][0]
    image_tokens = int((ids == model.config.image_token_id).sum())
    assert f"{image_tokens} image tokens of its {len(ids):,} tokens" in " ".join(gpu_check.__doc__.split())
    assert f"one 672x672 image (5 views) in {len(ids):,} tokens" in (ROOT / "benchmarks" / "README.md").read_text()


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


def fake_sections(gpu_check, monkeypatch, generation_row=None, **sections):
    """main() with a fake model and instant sections: only generation (row by row) or what is given runs."""
    monkeypatch.setattr(gpu_check, "build", lambda tiny, device: (fake_model(), None))
    monkeypatch.setattr(gpu_check, "agreement", lambda *args: {"ok": True})
    monkeypatch.setattr(gpu_check, "training", lambda *args: {"value": 1})
    monkeypatch.setattr(gpu_check, "attention", lambda *args: {"value": 1})
    monkeypatch.setattr(gpu_check, "greedy", lambda *args: {"ok": True, "rows": []})
    monkeypatch.setattr(gpu_check, "decoding_agreement", lambda *args: {"ok": True, "rows": []})
    monkeypatch.setattr(gpu_check, "prepare_generation", lambda *args: None)
    if generation_row is not None:
        monkeypatch.setattr(gpu_check, "generation_row", generation_row)
    for name, section in sections.items():
        monkeypatch.setattr(gpu_check, name, section)


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
    sections.run("generation", lambda: gpu_check.generation(fake_model(), None, {}, torch.device("cpu"), args,
                                                             tmp_path, sections))
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
    assert "incomplete" in generation and list(results["sections"])[-1] == "generation"
    assert "| shared | 8 |" in (tmp_path / "gpu_check.md").read_text()


def test_a_skipped_greedy_section_is_not_reported_as_differing_outputs(tmp_path, monkeypatch, capsys):
    gpu_check = load_gpu_check()

    def attention(model, processor, shape, device, args, progress):
        progress.budget_s = 0  # spent by the end of attention: greedy and what follows do not start
        return {"rows": []}

    fake_sections(gpu_check, monkeypatch, attention=attention)
    monkeypatch.setattr(gpu_check, "greedy", lambda *args: pytest.fail("greedy ran after the budget was spent"))
    monkeypatch.delenv("OUT", raising=False)
    assert gpu_check.main(["--tiny", "--out", str(tmp_path), "--sections", "attention", "greedy"]) == 1
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert "time budget" in results["sections"]["greedy"]["skipped"]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith("failed: greedy")  # skipped, and nothing else: no claim about outputs that were not made


def test_greedy_compares_only_the_paths_that_ran(tmp_path, monkeypatch):
    gpu_check = load_gpu_check()

    def generate(model, processor, root, name, records, batch_size, settings, varied=False):
        if settings.compile:
            raise RuntimeError("no compiler here")
        return 0.0, [["same text"]] * records, 10

    monkeypatch.setattr(gpu_check, "generate_records", generate)
    monkeypatch.setattr(gpu_check, "prepare_generation", lambda *args: None)
    args = argparse.Namespace(max_new_tokens=8, greedy_records=4, num_candidates=3)
    result = gpu_check.greedy(fake_model(), None, {}, torch.device("cpu"), args, tmp_path)
    assert result["ok"] is True  # the other paths agree; the failed path is an error, not a difference
    assert result["error"] == "static+compiled: RuntimeError: no compiler here"
    assert [(row["identical_greedy"], row["identical_greedy_n"], row["identical_sampled"])
            for row in result["rows"]] == [(4, 4, 4)] * 3 + [(None, None, None)]

    def different(model, processor, root, name, records, batch_size, settings, varied=False):
        if settings.sampling and settings.top_k > 1 and settings.shared_prefill:  # only seeded sampling differs
            return 0.0, [["same", "shared text"]] * records, 10
        return 0.0, [["same", "plain text"][:settings.num_candidates]] * records, 10

    monkeypatch.setattr(gpu_check, "generate_records", different)
    result = gpu_check.greedy(fake_model(), None, {}, torch.device("cpu"), args, tmp_path)
    assert result["ok"] is False
    shared = result["rows"][1]
    assert (shared["identical_greedy"], shared["identical_greedy_n"], shared["identical_sampled"]) == (4, 4, 0)
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
