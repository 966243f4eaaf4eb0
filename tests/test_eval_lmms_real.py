"""The lmms-eval adapter inside real lmms-eval, on a local toy task (skipped where lmms-eval is not installed).

The task asks the built-in runner's prompt and scores with the project's extractor, so lmms-eval's
accuracy and per-sample replies must equal the built-in runner's on the same checkpoint.
(Log-likelihood tasks are left out: lmms-eval 0.7.3 turns every log-likelihood result into a string
before scoring, so its multiple_choice tasks fail whatever the model; the adapter's loglikelihood is
tested in test_eval_lmms.py.)
"""

from __future__ import annotations

import json

import pytest

from sicog.data.jsonl import load_records
from sicog.eval.runner import evaluate
from sicog.eval.tsv import read_benchmark
from sicog.model.builders import save_pretrained
from sicog.toy.build import build_world, load_manifest

pytest.importorskip("lmms_eval")

TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: {output_type}
doc_to_visual: !function toy_utils.doc_to_visual
doc_to_text: !function toy_utils.doc_to_text
{extra}
metric_list:
  - metric: {metric}
    aggregation: mean
    higher_is_better: true
"""
UTILS = '''\
import base64
import io

from PIL import Image

from sicog.data.answers import extract_choice
from sicog.eval.prompts import build_prompt
from sicog.eval.tsv import MULTIPLE_CHOICE


def doc_to_visual(doc):
    return [Image.open(io.BytesIO(base64.b64decode(doc["image"]))).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return build_prompt(doc, MULTIPLE_CHOICE)


def process_results(doc, results):
    return {"accuracy": float(extract_choice(results[0], {k: doc[k] for k in "ABCD"}) == doc["answer"])}
'''


@pytest.mark.slow
def test_lmms_eval_scores_a_checkpoint_like_the_built_in_runner(tmp_path, tiny_model_factory) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from sicog.eval.lmms_eval import register

    build_world(tmp_path / "world", seed=0, size="tiny")
    world = load_manifest(tmp_path / "world")
    bench = read_benchmark(world["bench_mc"])
    data = tmp_path / "toy_mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in bench.rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "toy_utils.py").write_text(UTILS)
    generate = "doc_to_target: answer\ngeneration_kwargs:\n  max_new_tokens: 6\n  temperature: 0\n  do_sample: false\n"
    generate += "process_results: !function toy_utils.process_results"
    (tasks / "sicog_toy_mc.yaml").write_text(TASK.format(
        name="sicog_toy_mc", data=data, output_type="generate_until", extra=generate, metric="accuracy"))

    model, processor = tiny_model_factory(seed=7)
    save_pretrained(model, processor, tmp_path / "model")
    runner = evaluate(model, processor, bench, tmp_path / "runner", batch_size=1, max_new_tokens=6)
    runner_replies = {r["id"]: r["prediction"] for r in load_records(tmp_path / "runner" / "predictions.jsonl")}

    register()  # what the lmms_eval.models entry point does when the package is installed
    out = simple_evaluate(model="sicog", model_args=f"pretrained={tmp_path / 'model'},device=cpu,dtype=float32",
                          tasks=["sicog_toy_mc"], batch_size=1, log_samples=True,
                          task_manager=TaskManager(include_path=str(tasks)))
    assert out["results"]["sicog_toy_mc"]["accuracy,none"] == pytest.approx(runner["accuracy"])
    samples = out["samples"]["sicog_toy_mc"]
    assert {str(s["doc"]["index"]): s["resps"][0][0] for s in samples} == runner_replies
