"""The lmms-eval adapter inside real lmms-eval, on a local toy task (skipped where lmms-eval is not installed;
tests/frameworks/setup.sh installs it into a throwaway environment and runs this file there).

The task asks the built-in runner's prompt and scores with the project's extractor, so lmms-eval's
accuracy and per-sample replies must equal the built-in runner's on the same checkpoint.
(Log-likelihood tasks are left out: lmms-eval 0.7.3 turns every log-likelihood result into a string
before scoring, so its multiple_choice tasks fail whatever the model; the adapter's loglikelihood is
tested in test_eval_lmms.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sicog.data.jsonl import load_records
from sicog.eval.runner import evaluate
from sicog.eval.tsv import read_benchmark
from sicog.model.builders import save_pretrained
from sicog.toy.build import build_world, load_manifest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (tests/frameworks/setup.sh installs it)")

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


@pytest.fixture(scope="module")
def toy_task(tmp_path_factory, tiny_model_factory):
    """A local lmms-eval task over the toy benchmark, a tiny checkpoint, and the built-in runner's results."""
    root = tmp_path_factory.mktemp("lmms_real")
    build_world(root / "world", seed=0, size="tiny")
    bench = read_benchmark(load_manifest(root / "world")["bench_mc"])
    data = root / "toy_mc.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in bench.rows))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "toy_utils.py").write_text(UTILS)
    generate = "doc_to_target: answer\ngeneration_kwargs:\n  max_new_tokens: 6\n  temperature: 0\n  do_sample: false\n"
    generate += "process_results: !function toy_utils.process_results"
    (tasks / "sicog_toy_mc.yaml").write_text(TASK.format(
        name="sicog_toy_mc", data=data, output_type="generate_until", extra=generate, metric="accuracy"))
    model, processor = tiny_model_factory(seed=7)
    save_pretrained(model, processor, root / "model")
    runner = evaluate(model, processor, bench, root / "runner", batch_size=1, max_new_tokens=6)
    replies = {r["id"]: r["prediction"] for r in load_records(root / "runner" / "predictions.jsonl")}
    return {"root": root, "tasks": tasks, "model": root / "model", "runner": runner, "replies": replies,
            "indices": bench.indices}


@pytest.mark.slow
def test_lmms_eval_scores_a_checkpoint_like_the_built_in_runner(toy_task) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from sicog.eval.lmms_eval import SicogLMMs, SicogLMMsChat, register

    register()  # what the lmms_eval.models entry point does when the package is installed
    assert get_model("sicog") is SicogLMMsChat and get_model("sicog", force_simple=True) is SicogLMMs
    for force_simple in (False, True):  # the chat model (the default) and the simple one answer alike
        out = simple_evaluate(
            model="sicog", model_args=f"pretrained={toy_task['model']},device=cpu,dtype=float32",
            tasks=["sicog_toy_mc"], batch_size="auto", max_batch_size=4, log_samples=True, force_simple=force_simple,
            task_manager=TaskManager(include_path=str(toy_task["tasks"])))
        assert out["results"]["sicog_toy_mc"]["accuracy,none"] == pytest.approx(toy_task["runner"]["accuracy"])
        samples = out["samples"]["sicog_toy_mc"]
        assert {str(s["doc"]["index"]): s["resps"][0][0] for s in samples} == toy_task["replies"]


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_lmms_eval_command_line_with_model_sicog(toy_task, processes) -> None:
    """``lmms-eval --model sicog`` (the model found through SICOG's installed entry point), and the same under
    torchrun with two processes that split the documents: every prediction logged, as the runner's."""
    out = toy_task["root"] / f"cli{processes}"
    bin_dir = Path(sys.executable).parent
    launcher = ([str(bin_dir / "lmms-eval")] if processes == 1 else
                [str(bin_dir / "torchrun"), "--standalone", "--nproc-per-node", str(processes), "-m", "lmms_eval"])
    command = [*launcher, "--model", "sicog",
               "--model_args", f"pretrained={toy_task['model']},dtype=float32",
               "--tasks", "sicog_toy_mc", "--include_path", str(toy_task["tasks"]), "--batch_size", "auto",
               "--output_path", str(out), "--log_samples"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=toy_task["root"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    logged = sorted(out.rglob("*samples_sicog_toy_mc*.jsonl"))
    assert logged, f"no samples file under {out}: {sorted(p.name for p in out.rglob('*'))}"
    samples = [json.loads(line) for line in logged[-1].read_text().splitlines() if line.strip()]
    # The samples file names each document by its position in the data file.
    assert {toy_task["indices"][s["doc_id"]]: s["filtered_resps"] for s in samples} == toy_task["replies"]
