"""`sicog eval-suite`: the paper's Figure-1 benchmarks named for VLMEvalKit and lmms-eval, as one command."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sicog.cli import main
from sicog.data.checkpoint_files import checkpoint_signature
from sicog.eval import suite as suite_module
from sicog.eval.suite import framework_command, load_suite, select
from sicog.model.configuration import SicogConfig

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
    # lmms-eval's mathvista_testmini is a group of three variants: the suite names the direct one.
    assert by_name["MathVista"].lmms_eval == "mathvista_testmini_format"
    # Every benchmark says where its headline number lies in both frameworks, beside the paper's numbers.
    assert all(set(b.headline) == {"vlmevalkit", "lmms_eval"} and set(b.paper) == {"base", "sicog"} for b in suite)
    assert (by_name["MME"].headline["vlmevalkit"].metric, by_name["MME"].paper["base"]) == ("perception", 1554.8)
    assert "perception" in by_name["MME"].note


def test_commands_for_each_framework(tmp_path) -> None:
    suite = load_suite("figure1")
    vlm = framework_command("vlmevalkit", suite, tmp_path / "ckpt", "out", extra=["--sicog-prompt", "cot"])
    assert vlm[:3] == [sys.executable, "-m", "sicog.eval.vlmevalkit"]
    data = vlm[vlm.index("--data") + 1 : vlm.index("--work-dir")]
    assert data == [b.vlmevalkit for b in suite] and vlm[-2:] == ["--sicog-prompt", "cot"]
    assert "--reuse" in vlm  # a rerun keeps what earlier runs in the folder finished
    assert vlm[vlm.index("--sicog-model") + 1] == str((tmp_path / "ckpt").resolve())
    lmms = framework_command("lmms-eval", suite[:2], "ckpt", "out", processes=8)
    assert lmms[:7] == [sys.executable, "-m", "sicog.launch", "--standalone", "--nproc-per-node", "8", "-m"]
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
        ({"benchmarks": [{"name": "A", "vlmevalkit": "A", "lmms_eval": "a", "headline": {"vlmevalkit": "Overall"}}]},
         "benchmark 1: field 'headline.vlmevalkit': a mapping {metric, scale}"),
        ({"benchmarks": [{"name": "A", "vlmevalkit": "A", "lmms_eval": "a",
                          "headline": {"lmms_eval": {"metric": "acc,none", "scale": 0}}}]},
         "field 'headline.lmms_eval.scale': a number above 0"),
        ({"benchmarks": [{"name": "A", "vlmevalkit": "A", "lmms_eval": "a", "paper": {"base": "48.9"}}]},
         "field 'paper': a mapping {base, sicog} of numbers"),
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
    (tmp_path / "config.json").write_text('{"model_type": "llava_qwen"}')  # a published checkpoint, not converted
    assert main(["eval-suite", "--model", str(tmp_path), "--output-dir", "o"]) == 2
    assert "but a published one: convert it with `sicog convert from-release`" in capsys.readouterr().err
    SicogConfig().save_pretrained(tmp_path)
    monkeypatch.setattr(suite_module.importlib.util, "find_spec", lambda name: None)
    assert main(["eval-suite", "--model", str(tmp_path), "--output-dir", "o", "--framework", "lmms-eval"]) == 2
    assert "lmms-eval is not installed in this environment" in capsys.readouterr().err


def test_the_packaged_suite_is_found_beside_a_folder_of_its_name(tmp_path, monkeypatch) -> None:
    """`--output-dir figure1` makes a folder "figure1": the rerun after a crash must still find the suite."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "figure1").mkdir()
    packaged = Path(__file__).resolve().parents[1] / "sicog" / "configs" / "eval_figure1.yaml"
    assert [b.name for b in load_suite("figure1")] == [b.name for b in load_suite(str(packaged))]


def test_an_invalid_suite_yaml_is_one_line_naming_file_line_and_column(tmp_path, capsys) -> None:
    """PyYAML's own message spans five lines."""
    bad = tmp_path / "suite.yaml"
    bad.write_text("benchmarks:\n  - name: A\n    lmms_eval: a: b\n")
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--suite", str(bad), "--dry-run"]) == 2
    says = f"sicog eval-suite: error: {bad}:3:17: not valid YAML: mapping values are not allowed here\n"
    assert capsys.readouterr().err == says
    bad.write_bytes(b"benchmarks:\n  - name: Caf\xe9\n")  # named no line before
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--suite", str(bad), "--dry-run"]) == 2
    says = f"sicog eval-suite: error: {bad}:2: not UTF-8 text (byte b'\\xe9' at column 14); save the file as UTF-8\n"
    assert capsys.readouterr().err == says


def test_lmms_eval_batch_size_is_n_auto_or_auto_n(capsys) -> None:
    """What lmms-eval's CLI documents and the SICOG model reads; anything else stops before the framework starts."""
    dry_run = ["eval-suite", "--model", "ckpt", "--output-dir", "o", "--framework", "lmms-eval", "--dry-run"]
    for size in ("0", "-2", "two", "auto:x"):
        with pytest.raises(SystemExit) as stop:
            main([*dry_run, f"--batch-size={size}"])
        assert stop.value.code == 2
        assert f"argument --batch-size: must be N (at least 1), auto or auto:N, got {size!r}" in capsys.readouterr().err
    for size in ("1", "16", "auto", "auto:4"):
        assert main([*dry_run, "--batch-size", size]) == 0
        assert f" --batch_size {size} " in capsys.readouterr().out
    assert main(dry_run) == 0 and " --batch_size auto " in capsys.readouterr().out


@pytest.mark.parametrize("framework, flag, says", [
    ("vlmevalkit", ["--batch-size", "4"],
     "--batch-size is lmms-eval's; VLMEvalKit batches nothing (leave it out, or use --framework lmms-eval)"),
    ("lmms-eval", ["--vlmevalkit", "/VLMEvalKit"],
     "--vlmevalkit names VLMEvalKit's checkout; lmms-eval reads none (leave it out)"),
])
def test_a_flag_of_the_other_framework_is_refused(capsys, framework, flag, says) -> None:
    """Both were dropped from the command without a word."""
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--framework", framework, *flag,
                 "--dry-run"]) == 2
    assert capsys.readouterr().err == f"sicog eval-suite: error: {says}\n"


@pytest.mark.parametrize("empty", [",", "", " , "])
def test_an_empty_benchmark_list_is_refused(capsys, empty) -> None:
    """--benchmarks "$BENCH" with BENCH unset names no benchmark: not a request for the whole suite."""
    assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--benchmarks", empty, "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "sicog eval-suite: error: --benchmarks names no benchmark\n" and captured.out == ""


# What the frameworks write, in the layouts of the commits docs/evaluation.md names (see
# sicog/eval/framework_results.py): VLMEvalKit's status.json of one run, lmms-eval's aggregated results file.
# The metric keys are those VLMEvalKit's evaluate() tables flatten to, and lmms-eval's "<metric>,<filter>".
VLMEVALKIT_DATASETS = {
    "MMStar": {"status": "done", "prediction_file": "sicog_MMStar.xlsx", "primary_metric": "Overall Acc",
               "metrics": {"split=none|Overall": 0.5012, "split=none|coarse perception": 0.6}},
    "MathVista_MINI": {"status": "done", "error_message": "MathVista evaluation requires a working OPENAI API\n..."},
    "POPE": {"status": "done", "metrics": {"split=Overall|Overall": 87.31, "split=Overall|acc": 88.0,
                                           "split=random|Overall": 89.0}},
    "MME": {"status": "done", "metrics": {"perception": 1500.5, "reasoning": 300.25, "OCR": 100.0}},
    "MMBench_DEV_EN": {"status": "infer"},  # the run was killed during its inference
    "AI2D_TEST": {"status": "done", "error_message": ""},  # e.g. NotImplementedError(): an exception without text
    "ChartQA_TEST": {"status": "done", "skip_reason": "evaluate_returned_none"},
    "OCRBench": {"status": "done", "skip_reason": "mode_infer"},  # -- --mode infer: predicted, as asked
}
LMMS_RESULTS = {
    "mmstar": {"alias": "mmstar", "average,none": 0.489, "average_stderr,none": "N/A", "math,none": 0.3},
    "pope": {"alias": "pope", "pope_f1_score,none": 0.873, "pope_accuracy,none": 0.88},
    "mme": {"alias": "mme", "mme_perception_score,none": 1554.8, "mme_cognition_score,none": 301.1},
    "mathvista_testmini_format": {"alias": "mathvista_testmini_format", "llm_as_judge_eval,none": None},
}


def _vlmevalkit_run(out, eval_id: str, datasets: dict) -> None:
    run = out / "sicog" / eval_id
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"schema_version": "1.0", "eval_id": eval_id, "model_name": "sicog",
                                                 "datasets": datasets}))


def _lmms_run(out, date: str, results: dict) -> None:
    (out / "tmp__ckpt").mkdir(parents=True, exist_ok=True)
    (out / "tmp__ckpt" / f"{date}_results.json").write_text(json.dumps({"results": results, "configs": {}}))


def _fake_framework(monkeypatch, write, returncode: int = 0) -> list:
    """subprocess.run stands in for the framework: it records the command and calls ``write()``."""
    ran = []
    monkeypatch.setattr(suite_module.importlib.util, "find_spec", lambda name: object())

    def run(command):
        ran.append(command)
        write()
        return type("Done", (), {"returncode": returncode})()

    monkeypatch.setattr(suite_module.subprocess, "run", run)
    return ran


def _checkpoint(tmp_path):
    SicogConfig().save_pretrained(tmp_path / "ckpt")  # its config.json is all the command reads
    return tmp_path / "ckpt"


def test_vlmevalkit_failures_are_found_in_its_status_file(tmp_path, monkeypatch, capsys) -> None:
    """run.py logs a failed dataset and goes on (exit 0): the suite reads the run's status.json."""
    out = tmp_path / "out"
    _vlmevalkit_run(out, "T20250101-000000", {"DocVQA_VAL": {"status": "done", "metrics": {"Overall": 70.0}}})
    ran = _fake_framework(monkeypatch, lambda: _vlmevalkit_run(out, "T20260101-120000", VLMEVALKIT_DATASETS))
    names = "MMStar,MathVista,POPE,MME,MMBench,DocVQA,AI2D,ChartQA,OCRBench"
    assert main(["eval-suite", "--model", str(_checkpoint(tmp_path)), "--output-dir", str(out),
                 "--benchmarks", names]) == 1
    assert len(ran) == 1 and "--reuse" in ran[0]
    captured = capsys.readouterr()
    assert "| MMStar | MMStar | done | split=none\\|Overall x100 | 50.1 | 48.9 | 52.5 |" in captured.out
    assert "| MME | MME | done | perception | 1500.5 | 1554.8 | 1596.6 |" in captured.out
    assert "- MathVista: failed: VLMEvalKit: MathVista evaluation requires a working OPENAI API ..." in captured.out
    assert "- MMBench: failed: the run ended during its 'infer' stage" in captured.out
    assert "- AI2D: failed: VLMEvalKit: an error without a message" in captured.out
    assert "- ChartQA: failed: not scored: evaluate_returned_none" in captured.out
    assert "- OCRBench: done: predictions only (--mode infer)" in captured.out
    assert "- MME: the perception score alone" in captured.out
    assert ("5 of 9 benchmark(s) failed or missing; once the cause is fixed, run them again with --benchmarks "
            "AI2D,MathVista,ChartQA,MMBench,DocVQA (their finished predictions are reused)") in captured.err
    summary = json.loads((out / "headline.json").read_text())
    rows = {row["benchmark"]: row for row in summary["benchmarks"]}
    assert {name: row["state"] for name, row in rows.items()} == {
        "MMStar": "done", "AI2D": "failed", "MathVista": "failed", "ChartQA": "failed", "POPE": "done",
        "MMBench": "failed", "MME": "done", "OCRBench": "done",
        "DocVQA": "missing"}  # the earlier run's DocVQA result is not this run's
    assert rows["OCRBench"]["value"] is None
    assert (rows["MMStar"]["value"], rows["POPE"]["value"], rows["POPE"]["metric"]) == (
        50.12, 87.31, "split=Overall|Overall")
    assert rows["MME"]["metrics"]["reasoning"] == 300.25  # the cognition score stays beside the headline
    assert rows["DocVQA"]["reason"].startswith("not in ") and "T20260101-120000" in rows["DocVQA"]["reason"]
    assert (out / "headline.md").read_text() in captured.out


def test_lmms_eval_results_file_is_read(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"

    def write() -> None:
        _lmms_run(out, "20260101_120000", LMMS_RESULTS)
        # A task's submission file is not the run's results file, whatever it holds.
        (out / "submissions").mkdir()
        (out / "submissions" / "mmbench_en_dev_results.json").write_text(json.dumps(
            {"results": {"mmbench_en_dev": {"gpt_eval_score,none": 77.0}}}))

    _fake_framework(monkeypatch, write)
    assert main(["eval-suite", "--model", str(_checkpoint(tmp_path)), "--output-dir", str(out), "--framework",
                 "lmms-eval", "--benchmarks", "MMStar,POPE,MME,MathVista,MMBench"]) == 1
    rows = {row["benchmark"]: row for row in json.loads((out / "headline.json").read_text())["benchmarks"]}
    assert {name: (row["state"], row["value"]) for name, row in rows.items()} == {
        "MMStar": ("done", 48.9), "POPE": ("done", 87.3), "MME": ("done", 1554.8), "MathVista": ("failed", None),
        "MMBench": ("missing", None)}
    assert rows["MME"]["metric"] == "mme_perception_score,none"
    assert "'llm_as_judge_eval,none' is None, not a number" in rows["MathVista"]["reason"]
    assert "--benchmarks MathVista,MMBench\n" in capsys.readouterr().err


def test_a_run_that_wrote_nothing_has_every_benchmark_missing(tmp_path, monkeypatch, capsys) -> None:
    """lmms-eval catches an evaluation error (a dataset it cannot download), logs it and exits 0, writing nothing."""
    out = tmp_path / "out"
    _fake_framework(monkeypatch, lambda: None)
    assert main(["eval-suite", "--model", str(_checkpoint(tmp_path)), "--output-dir", str(out), "--framework",
                 "lmms-eval", "--benchmarks", "MMStar,POPE"]) == 1
    captured = capsys.readouterr()
    assert "| MMStar | mmstar | missing | - | - | 48.9 | 52.5 |" in captured.out
    assert "- POPE: missing: the run wrote no <output dir>/<model>/<date>_results.json" in captured.out
    assert "2 of 2 benchmark(s) failed or missing" in captured.err


@pytest.mark.parametrize("framework", ["vlmevalkit", "lmms-eval"])
def test_the_command_runs_and_its_status_is_returned(tmp_path, monkeypatch, framework) -> None:
    """With every benchmark done, the framework's own exit status is the command's."""
    out, model = tmp_path / "out", _checkpoint(tmp_path)
    write = (lambda: _vlmevalkit_run(out, "T20260101-120000", {"POPE": VLMEVALKIT_DATASETS["POPE"]})) \
        if framework == "vlmevalkit" else (lambda: _lmms_run(out, "20260101_120000", {"pope": LMMS_RESULTS["pope"]}))
    ran = _fake_framework(monkeypatch, write, returncode=3)
    assert main(["eval-suite", "--model", str(model), "--output-dir", str(out), "--framework", framework,
                 "--benchmarks", "POPE"]) == 3
    assert ran == [framework_command(framework, select(load_suite("figure1"), ["POPE"]), model, out)]
    owner = json.loads((out / "sicog_suite.json").read_text())
    assert owner == {"model": str(model.resolve()), "weights": checkpoint_signature(model), "framework": framework,
                     "extra": []}


def test_an_output_folder_holds_one_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    """VLMEvalKit's --reuse takes any earlier run's predictions in the folder: another checkpoint's are refused."""
    out, first = tmp_path / "out", _checkpoint(tmp_path)
    ran = _fake_framework(monkeypatch, lambda: None)
    assert main(["eval-suite", "--model", str(first), "--output-dir", str(out), "--benchmarks", "POPE"]) == 1
    other = tmp_path / "other"
    SicogConfig().save_pretrained(other)
    for model, framework, differ in ((other, "vlmevalkit", "model and weights"), (first, "lmms-eval", "framework")):
        assert main(["eval-suite", "--model", str(model), "--output-dir", str(out), "--framework", framework]) == 2
        assert f"--output-dir {out} holds runs of another {differ} (" in capsys.readouterr().err
    # The same folder retrained (its weights rewritten), or other framework arguments: other predictions.
    assert main(["eval-suite", "--model", str(first), "--output-dir", str(out), "--benchmarks", "POPE", "--",
                 "--sicog-prompt", "cot"]) == 2
    assert "holds runs of another extra (" in capsys.readouterr().err
    weights = next(p for p in first.iterdir() if p.is_file())
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert main(["eval-suite", "--model", str(first), "--output-dir", str(out), "--benchmarks", "POPE"]) == 2
    assert "holds runs of another weights (" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["eval-suite", "--model", str(first), "--output-dir", str(tmp_path / "file" / "o")]) == 2
    assert f"cannot be made a folder ({tmp_path / 'file'} is a file)" in capsys.readouterr().err
    assert len(ran) == 1


def test_a_folder_another_run_holds_is_refused_before_the_framework_starts(tmp_path, monkeypatch, capsys) -> None:
    """Two runs into one folder both ran: VLMEvalKit's predictions written twice at once, one headline table lost."""
    from sicog.data.lock import output_lock

    out, model = tmp_path / "out", _checkpoint(tmp_path)
    ran = _fake_framework(monkeypatch, lambda: None)
    with output_lock(out, folder=True):  # the first run, under way
        assert main(["eval-suite", "--model", str(model), "--output-dir", str(out), "--benchmarks", "POPE"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sicog eval-suite: error: {out} is in use by another run (") and err.count("\n") == 1
    assert ran == [] and not (out / "sicog_suite.json").exists()
    assert main(["eval-suite", "--model", str(model), "--output-dir", str(out), "--benchmarks", "POPE"]) == 1
    assert len(ran) == 1


def test_a_headline_metric_is_found_once() -> None:
    from sicog.eval.framework_results import Headline

    metrics = {"split=dev|Overall": 0.5, "split=dev|math": 0.25, "Overall": "N/A"}
    assert Headline("split=*|Overall", 100).find(metrics) == ("split=dev|Overall", 50.0)
    with pytest.raises(ValueError, match="2 metrics match 'split=\\*\\|\\*'"):
        Headline("split=*|*").find(metrics)
    with pytest.raises(ValueError, match="0 metrics match 'acc,none'"):
        Headline("acc,none").find(metrics)
    with pytest.raises(ValueError, match="metric 'Overall' is 'N/A', not a number"):
        Headline("Overall").find(metrics)


def test_vlmevalkit_runs_are_found_where_run_py_writes_them(tmp_path, monkeypatch) -> None:
    from sicog.eval.framework_results import result_files

    _vlmevalkit_run(tmp_path / "out", "T20260101-120000", {})
    _vlmevalkit_run(tmp_path / "root", "T20260102-120000", {})
    (tmp_path / "out" / "sicog" / "logs").mkdir()  # not a run folder
    assert result_files("vlmevalkit", tmp_path / "out", "sicog") == {
        tmp_path / "out" / "sicog" / "T20260101-120000" / "status.json"}
    monkeypatch.setenv("MMEVAL_ROOT", str(tmp_path / "root"))  # run.py then ignores --work-dir
    assert result_files("vlmevalkit", tmp_path / "out", "sicog") == {
        tmp_path / "root" / "sicog" / "T20260102-120000" / "status.json"}


def test_an_unknown_suite_field_or_a_repeated_name_is_refused(tmp_path, capsys) -> None:
    """A mistyped `benchmark:` beside `benchmarks:` was dropped without a word; two benchmarks of one name (in any
    case, as --benchmarks matches them) made the headline rows and --benchmarks ambiguous."""
    bad = tmp_path / "suite.yaml"
    x, y = "{name: X, vlmevalkit: X, lmms_eval: x}", "{name: Y, vlmevalkit: Y, lmms_eval: y}"
    cases = [
        (f"benchmark:\n  - {y}\nbenchmarks:\n  - {x}\n",
         "unknown field(s) benchmark (a suite file has only 'benchmarks')"),
        (f"benchmarks:\n  - {x}\n  - {y}\n  - {{name: x, vlmevalkit: X2, lmms_eval: x2}}\n",
         "benchmark 3: field 'name': 'x' repeats benchmark 1"),
    ]
    for content, message in cases:
        bad.write_text(content)
        assert main(["eval-suite", "--model", "ckpt", "--output-dir", "o", "--suite", str(bad), "--dry-run"]) == 2
        assert capsys.readouterr().err == f"sicog eval-suite: error: {bad}: {message}\n"
