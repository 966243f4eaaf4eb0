"""`sicog eval-suite`: the paper's Figure-1 benchmarks named for VLMEvalKit and lmms-eval, as one command."""

from __future__ import annotations

import json
import sys

import pytest

from sicog.cli import main
from sicog.eval import suite as suite_module
from sicog.eval.suite import framework_command, load_suite, select

# Figure 1 of the paper (arXiv 2503.12303), in its order.
FIGURE_1 = ["MMStar", "AI2D", "ScienceQA", "MathVista", "RealWorldQA", "ChartQA", "POPE", "MMVet", "MMBench", "MME",
            "OCRBench", "DocVQA"]


def test_figure1_suite_names_every_benchmark_in_both_frameworks() -> None:
    suite = load_suite("figure1")
    assert [b.name for b in suite] == FIGURE_1
    assert len({b.vlmevalkit for b in suite}) == len({b.lmms_eval for b in suite}) == 12
    by_name = {b.name: b for b in suite}
    assert (by_name["MMBench"].vlmevalkit, by_name["MMBench"].lmms_eval) == ("MMBench_DEV_EN", "mmbench_en_dev")
    assert [b.name for b in select(suite, ["mme", "MMStar"])] == ["MMStar", "MME"]  # suite order, any case


def test_commands_for_each_framework(tmp_path) -> None:
    suite = load_suite("figure1")
    vlm = framework_command("vlmevalkit", suite, tmp_path / "ckpt", "out", extra=["--sicog-prompt", "cot"])
    assert vlm[:3] == [sys.executable, "-m", "sicog.eval.vlmevalkit"]
    data = vlm[vlm.index("--data") + 1 : vlm.index("--work-dir")]
    assert data == [b.vlmevalkit for b in suite] and vlm[-2:] == ["--sicog-prompt", "cot"]
    assert vlm[vlm.index("--sicog-model") + 1] == str((tmp_path / "ckpt").resolve())
    lmms = framework_command("lmms-eval", suite[:2], "ckpt", "out", processes=8)
    assert lmms[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "8", "-m"]
    assert lmms[7] == "lmms_eval" and lmms[lmms.index("--tasks") + 1] == "mmstar,ai2d"
    assert lmms[lmms.index("--batch_size") + 1] == "auto" and "--log_samples" in lmms


def test_dry_run_prints_the_one_command(capsys) -> None:
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "out", "--framework", "lmms-eval", "--dry-run",
                 "--", "--limit", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"12 benchmark(s) through lmms-eval: {', '.join(FIGURE_1)}"
    assert lines[1].endswith("--log_samples --limit 8") and "--tasks mmstar,ai2d,scienceqa_img," in lines[1]


def test_bad_input_is_one_line_with_exit_2(tmp_path, capsys, monkeypatch) -> None:
    bad = tmp_path / "suite.yaml"
    cases = [
        ({"benchmarks": [{"name": "A", "vlmevalkit": "A"}]}, "benchmark 1: field 'lmms_eval': a non-empty string"),
        ({"benchmarks": [{"name": "A", "vlmevalkit": "A", "lmms_eval": "a", "split": "x"}]}, "unknown field(s) split"),
        ({"tasks": []}, "field 'benchmarks'"),
    ]
    for content, message in cases:
        bad.write_text(json.dumps(content))
        assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--suite", str(bad), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert f"sicog eval-suite: error: {bad}: " in err and message in err and "Traceback" not in err
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--suite", "figure2", "--dry-run"]) == 2
    assert "no benchmark suite 'figure2'" in capsys.readouterr().err
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--benchmarks", "MMStar,Foo", "--dry-run"]) == 2
    assert "unknown benchmark(s) Foo" in capsys.readouterr().err
    assert main(["eval-suite", "--model", str(tmp_path), "--output-dir", "o"]) == 2
    assert f"no SICOG checkpoint at {tmp_path}" in capsys.readouterr().err
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setattr(suite_module.importlib.util, "find_spec", lambda name: None)
    assert main(["eval-suite", "--model", str(tmp_path), "--output-dir", "o", "--framework", "lmms-eval"]) == 2
    assert "lmms-eval is not installed in this environment" in capsys.readouterr().err


@pytest.mark.parametrize("framework", ["vlmevalkit", "lmms-eval"])
def test_the_command_runs_and_its_status_is_returned(tmp_path, monkeypatch, framework) -> None:
    (tmp_path / "config.json").write_text("{}")
    ran = []
    monkeypatch.setattr(suite_module.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(suite_module.subprocess, "run", lambda command: ran.append(command) or
                        type("Done", (), {"returncode": 3})())
    assert main(["eval-suite", "--model", str(tmp_path), "--output-dir", "o", "--framework", framework,
                 "--benchmarks", "POPE"]) == 3
    assert ran == [framework_command(framework, select(load_suite("figure1"), ["POPE"]), tmp_path, "o")]
