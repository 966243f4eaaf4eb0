"""Rows longer than the model's context: `sicog eval` (every scoring) and `sicog image-use` list them as errors, naming
the row and the field, and score the others, instead of running out of memory or scoring them past the context."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

import sicog.eval.runner as runner
from sicog.data.jsonl import load_records
from sicog.eval.generation import encode_item
from sicog.eval.image_use import image_use
from sicog.eval.prompts import build_prompt
from sicog.eval.runner import ERRORS, PREDICTIONS, evaluate
from sicog.eval.tsv import read_benchmark, row_image
from sicog.model.builders import tiny_text_config

CONTEXT = 256  # small, so that an over-long row is cheap to build and, unchecked, still runs
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
QUESTION = "What colour is this image?"
LONG = " ".join(["word"] * 120)  # several hundred tokens with the test tokenizer


@pytest.fixture(scope="module")
def short_context(tiny_model_factory, tokenizer):
    """A tiny model whose LLM has a context of :data:`CONTEXT` tokens."""
    text = tiny_text_config(len(tokenizer))
    text.max_position_embeddings = CONTEXT
    return tiny_model_factory(seed=0, text_config=text)


def _benchmark(path: Path, n: int = 4, **edits: dict[str, str]) -> Path:
    """A multiple-choice TSV of ``n`` rows about one-colour images; ``edits``: row index -> fields to replace."""
    rows = []
    for i in range(n):
        colour = list(COLORS)[i % 4]
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), COLORS[colour]).save(buffer, format="PNG")
        rows.append({"index": str(i), "image": base64.b64encode(buffer.getvalue()).decode(), "question": QUESTION,
                     **dict(zip("ABCD", COLORS)), "answer": "ABCD"[i % 4], "category": "colour",
                     **edits.get(f"row{i}", {})})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("scoring", ["generate", "likelihood", "open"])
def test_a_row_over_the_context_is_an_error_and_the_rest_scored(short_context, tmp_path: Path, scoring: str) -> None:
    """A question far over the context made the run run out of memory (or, less far over, was scored silently)."""
    bench = _benchmark(tmp_path / "bench.tsv", row1={"question": f"{QUESTION} {LONG}"})
    new_tokens = None if scoring == "likelihood" else 2  # likelihood scoring generates no reply
    results = evaluate(*short_context, bench, tmp_path / "out", batch_size=4, max_new_tokens=new_tokens,
                       mc_scoring=scoring, progress=False)
    assert (results["errors"], results["scored"]) == (1, 3)
    errors = load_records(tmp_path / "out" / ERRORS)
    assert [(e["id"], e["field"], e["file"]) for e in errors] == [("1", "question", str(bench))]
    assert errors[0]["record"]["question"].endswith(LONG) and "image" not in errors[0]["record"]
    what = "prompt with option D" if scoring == "likelihood" else "prompt"  # D: "yellow", the longest option
    less = "" if scoring == "likelihood" else " less 2 new tokens"
    limit = CONTEXT if scoring == "likelihood" else CONTEXT - 2
    assert errors[0]["reason"].startswith(f"{what} is ")
    assert errors[0]["reason"].endswith(f"tokens (images included), over the limit of {limit} (the model's "
                                        f"context of {CONTEXT}{less})")
    assert [r["id"] for r in load_records(tmp_path / "out" / PREDICTIONS)] == ["0", "2", "3"]


def test_the_new_tokens_count_toward_the_limit(short_context, tmp_path: Path, monkeypatch) -> None:
    """A prompt that fits the context but leaves no room for --max-new-tokens is too long, as in `sicog generate`."""
    model, processor = short_context
    bench = _benchmark(tmp_path / "bench.tsv", n=2, row1={"question": " ".join(["word"] * 20)})
    table = read_benchmark(bench)
    longer = table.rows[1]
    length = len(encode_item(processor, build_prompt(longer, table.kind), [row_image(table, longer)]).input_ids)
    asked = []

    def answer_a(model, processor, encoded, *, max_new_tokens, **kwargs) -> list[str]:
        asked.extend(len(item.input_ids) + max_new_tokens for item in encoded)
        return ["A"] * len(encoded)

    monkeypatch.setattr(runner, "generate_replies", answer_a)
    fits = evaluate(model, processor, bench, tmp_path / "fits", max_new_tokens=CONTEXT - length, progress=False)
    assert (fits["errors"], fits["scored"]) == (0, 2) and max(asked) == CONTEXT
    asked.clear()
    over = evaluate(model, processor, bench, tmp_path / "over", max_new_tokens=CONTEXT - length + 1, progress=False)
    assert (over["errors"], over["scored"]) == (1, 1) and max(asked) < CONTEXT
    errors = load_records(tmp_path / "over" / ERRORS)
    assert [(e["id"], e["field"]) for e in errors] == [("1", "question")]
    assert errors[0]["reason"] == (f"prompt is {length} tokens (images included), over the limit of {length - 1} "
                                   f"(the model's context of {CONTEXT} less {CONTEXT - length + 1} new tokens)")


def test_likelihood_names_the_option_that_makes_a_row_too_long(short_context, tmp_path: Path) -> None:
    """When the question fits with some options, the field is the option that does not fit, not the question."""
    bench = _benchmark(tmp_path / "bench.tsv", row2={"C": f"blue {LONG}"})
    results = evaluate(*short_context, bench, tmp_path / "out", mc_scoring="likelihood", progress=False)
    assert (results["errors"], results["scored"]) == (1, 3)
    errors = load_records(tmp_path / "out" / ERRORS)
    assert [(e["id"], e["field"]) for e in errors] == [("2", "C")]
    assert errors[0]["reason"].startswith("prompt with option C is ")
    assert f"over the limit of {CONTEXT} (the model's context of {CONTEXT})" in errors[0]["reason"]
    assert [r["id"] for r in load_records(tmp_path / "out" / PREDICTIONS)] == ["0", "1", "3"]


def test_image_use_lists_a_conversation_over_the_context(short_context, tmp_path: Path) -> None:
    """A record over the context ran out of memory in the loss pass (or was measured past the context)."""
    (tmp_path / "images").mkdir()
    records = []
    for i, colour in enumerate(list(COLORS) * 2):
        Image.new("RGB", (64, 64), COLORS[colour]).save(tmp_path / "images" / f"{i}.png")
        records.append({"id": f"img-{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTION}"}, {"from": "gpt", "value": f"The image is {colour}."}]})
    records.insert(3, {"id": "long", "image": "0.png", "conversations": [
        {"from": "human", "value": f"<image>\n{QUESTION} {LONG}"}, {"from": "gpt", "value": "Red."}]})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    result = image_use(*short_context, data, tmp_path / "images", progress=False)
    assert [(e["file"], e["line"], e["id"], e["field"]) for e in result["errors"]] == [
        (str(data), 4, "long", "conversations")]
    reason = result["errors"][0]["reason"]
    assert reason.startswith(f"{data}:4 id='long' field 'conversations': conversation is ")
    assert reason.endswith(f"tokens (images included), over the limit of {CONTEXT} (the model's context of {CONTEXT})")
    assert (result["records"], result["compared"]) == (9, 8)
