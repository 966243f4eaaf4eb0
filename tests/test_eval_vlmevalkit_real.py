"""The VLMEvalKit launcher inside real VLMEvalKit, on custom TSVs (skipped where VLMEvalKit is not installed).

``python -m sicog.eval.vlmevalkit --sicog-model CKPT --model sicog --data ...`` runs VLMEvalKit's own
run.py, unedited: its dataset loading, inference loop and prediction files. tests/frameworks/setup.sh
installs VLMEvalKit into a throwaway environment and runs this file there.
"""

from __future__ import annotations

import base64
import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sicog.data.jsonl import load_records
from sicog.eval.prompts import MC_INSTRUCTION
from sicog.eval.runner import evaluate
from sicog.eval.tsv import read_benchmark
from sicog.model.builders import save_pretrained

pytest.importorskip("vlmeval", reason="VLMEvalKit is not installed (tests/frameworks/setup.sh installs it)")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
QUESTIONS = [("red", "A"), ("green", "B"), ("blue", "C"), ("green", "B")]


def _png(colour: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_tsvs(folder: Path) -> None:
    """ToyColourMC (options A-C, letter answers) and ToyColourOpen (the same questions, no options)."""
    folder.mkdir(parents=True, exist_ok=True)
    mc = [{"index": i, "image": _png(COLOURS[name]), "question": "What colour is the picture?",
           "A": "red", "B": "green", "C": "blue", "answer": letter, "category": "colour"}
          for i, (name, letter) in enumerate(QUESTIONS)]
    open_rows = [{"index": i, "image": _png(COLOURS[name]), "question": "What colour is the picture?",
                  "answer": name, "category": "colour"} for i, (name, _) in enumerate(QUESTIONS)]
    for name, rows in (("ToyColourMC", mc), ("ToyColourOpen", open_rows)):
        with open(folder / f"{name}.tsv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
            writer.writeheader()
            writer.writerows(rows)


def predictions(work_dir: Path, dataset: str) -> dict[str, str]:
    """index -> prediction from VLMEvalKit's prediction sheet of ``dataset``."""
    import pandas as pd

    found = sorted(work_dir.glob(f"sicog/*/sicog_{dataset}.xlsx"))
    assert found, f"VLMEvalKit wrote no predictions for {dataset} under {work_dir}"
    sheet = pd.read_excel(found[-1])
    return {str(index): str(prediction) for index, prediction in zip(sheet["index"], sheet["prediction"])}


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, tiny_model_factory):
    """The custom TSVs in an LMUData folder, a tiny checkpoint, and the built-in runner's replies."""
    root = tmp_path_factory.mktemp("vlmeval_real")
    write_tsvs(root / "LMUData")
    model, processor = tiny_model_factory(seed=7)
    save_pretrained(model, processor, root / "model")
    runner = evaluate(model, processor, read_benchmark(root / "LMUData" / "ToyColourMC.tsv"), root / "runner",
                      batch_size=1, max_new_tokens=6)
    assert runner["total"] == len(QUESTIONS)
    replies = {r["id"]: r["prediction"] for r in load_records(root / "runner" / "predictions.jsonl")}
    return {"root": root, "model": root / "model", "replies": replies,
            "env": {**os.environ, "LMUData": str(root / "LMUData")}}


@pytest.mark.slow
def test_run_py_with_sicog_predicts_custom_tsvs(toy_run) -> None:
    out = toy_run["root"] / "out"
    command = [sys.executable, "-m", "sicog.eval.vlmevalkit", "--sicog-model", str(toy_run["model"]),
               "--sicog-max-new-tokens", "6", "--sicog-device", "cpu",
               "--model", "sicog", "--data", "ToyColourMC", "ToyColourOpen", "--work-dir", str(out)]
    done = subprocess.run(command, cwd=toy_run["root"], env=toy_run["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # The same prompt, the same greedy decoding: VLMEvalKit's sheet holds the built-in runner's replies.
    assert predictions(out, "ToyColourMC") == toy_run["replies"]
    assert set(predictions(out, "ToyColourOpen")) == {str(i) for i in range(len(QUESTIONS))}
    # VLMEvalKit scored the multiple-choice predictions itself (exact matching: no judge key is set);
    # it has no scoring for a custom open-question TSV.
    scores = sorted(out.glob("sicog/*/sicog_ToyColourMC_acc.csv"))
    assert scores, done.stdout[-3000:] + done.stderr[-3000:]
    with open(scores[-1], newline="", encoding="utf-8") as handle:
        overall = float(next(csv.DictReader(handle))["Overall"])
    assert 0.0 <= overall <= 1.0


@pytest.mark.slow
def test_eval_suite_runs_vlmevalkit(toy_run) -> None:
    suite = toy_run["root"] / "toy_suite.yaml"
    suite.write_text("benchmarks:\n  - {name: ToyColour, vlmevalkit: ToyColourMC, lmms_eval: toy_colour}\n")
    out = toy_run["root"] / "suite_out"
    command = [sys.executable, "-m", "sicog", "eval-suite", "--model", str(toy_run["model"]), "--suite", str(suite),
               "--output-dir", str(out), "--", "--sicog-max-new-tokens", "6", "--mode", "infer"]
    done = subprocess.run(command, cwd=toy_run["root"], env=toy_run["env"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert predictions(out, "ToyColourMC") == toy_run["replies"]


def test_custom_tsv_without_options_is_not_asked_for_a_letter(tmp_path, monkeypatch, tiny_model_factory) -> None:
    from vlmeval.dataset import DATASET_TYPE, build_dataset

    from sicog.eval.vlmevalkit import SicogVLM

    write_tsvs(tmp_path / "LMUData")
    monkeypatch.setenv("LMUData", str(tmp_path / "LMUData"))
    model, processor = tiny_model_factory(seed=7)
    adapter = SicogVLM(model=model, processor=processor, max_new_tokens=4)
    for name, letters in (("ToyColourMC", True), ("ToyColourOpen", False)):
        dataset = build_dataset(name)
        assert DATASET_TYPE(name) == "MCQ"  # VLMEvalKit's default for any custom TSV, options or not
        adapter.set_dump_image(dataset.dump_image)
        assert adapter.use_custom_prompt(name)
        text = adapter.build_prompt(dataset.data.iloc[0], dataset=name)[-1]["value"]
        assert (MC_INSTRUCTION in text) == letters and ("A. red" in text) == letters
        assert text.startswith("What colour is the picture?")


def test_launcher_refuses_a_missing_checkpoint(tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "sicog.eval.vlmevalkit", "--sicog-model", str(tmp_path / "none"),
                           "--model", "sicog", "--data", "MMStar"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no SICOG checkpoint at" in done.stderr and "Traceback" not in done.stderr
