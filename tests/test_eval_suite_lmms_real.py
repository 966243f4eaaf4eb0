"""`sicog eval-suite` reading the results real lmms-eval writes (skipped where lmms-eval is not installed; see
tests/frameworks/setup.sh): a local task scored, then a run that fails inside lmms-eval, which exits 0."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from sicog.model.builders import save_pretrained

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (tests/frameworks/setup.sh installs it)")

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 20)}
UTILS = '''\
import base64
import io

from PIL import Image


def doc_to_visual(doc):
    return [Image.open(io.BytesIO(base64.b64decode(doc["image"]))).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def process_results(doc, results):
    return {"accuracy": float(doc["answer"] in results[0])}
'''
TASK = """\
task: sicog_colour
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function colour_utils.doc_to_visual
doc_to_text: !function colour_utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
process_results: !function colour_utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""
SUITE = """\
benchmarks:
  - name: Colour
    vlmevalkit: Colour
    lmms_eval: sicog_colour
    headline: {lmms_eval: {metric: "accuracy,none", scale: 100}}
  - name: Absent
    vlmevalkit: Absent
    lmms_eval: sicog_no_such_task
"""


@pytest.mark.slow
def test_eval_suite_reads_what_lmms_eval_wrote(tmp_path, tiny_model_factory) -> None:
    rows = []
    for index, (name, rgb) in enumerate(COLOURS.items()):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), rgb).save(buffer, "PNG")
        rows.append({"index": index, "image": base64.b64encode(buffer.getvalue()).decode(),
                     "question": "What colour is it?", "answer": name})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "colour_utils.py").write_text(UTILS)
    (tasks / "sicog_colour.yaml").write_text(TASK.format(data=tmp_path / "data.jsonl"))
    (tmp_path / "suite.yaml").write_text(SUITE)
    model, processor = tiny_model_factory(seed=7)
    save_pretrained(model, processor, tmp_path / "model")
    out = tmp_path / "out"

    def suite(*benchmarks: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "sicog", "eval-suite", "--model", str(tmp_path / "model"), "--framework",
                   "lmms-eval", "--suite", str(tmp_path / "suite.yaml"), "--output-dir", str(out), "--batch-size", "2",
                   *(["--benchmarks", ",".join(benchmarks)] if benchmarks else []), "--", "--include_path", str(tasks)]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)

    done = suite("Colour")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results,) = out.glob("*/*_results.json")  # lmms-eval's layout: <output>/<model>/<date>_results.json
    accuracy = json.loads(results.read_text())["results"]["sicog_colour"]["accuracy,none"]
    (row,) = json.loads((out / "headline.json").read_text())["benchmarks"]
    assert (row["state"], row["value"], row["source"]) == ("done", round(100 * accuracy, 4), str(results))

    # An unknown task stops lmms-eval's whole evaluation: it logs the error, writes no results and exits 0.
    failed = suite()
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    summary = json.loads((out / "headline.json").read_text())
    assert summary["exit_status"] == 0
    states = [(r["benchmark"], r["state"]) for r in summary["benchmarks"]]
    assert states == [("Colour", "missing"), ("Absent", "missing")]
