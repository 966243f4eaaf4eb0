"""Multiple choice by option log-likelihood: the preferred option wins, batching changes nothing, blind runs."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sicog.cli import main
from sicog.data.jsonl import load_records
from sicog.eval.likelihood import blind_partners, choose, encode_options, likelihood_prompt, option_scores, score_rows
from sicog.eval.runner import evaluate
from sicog.model.builders import save_pretrained

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
QUESTION = "What colour is this image?"


def _image(colour: str) -> Image.Image:
    return Image.new("RGB", (64, 64), COLORS[colour])


def _rows(n: int = 8) -> list[dict[str, str]]:
    """MC rows about one-colour images; the options are the four colours in a rotating order."""
    names, rows = list(COLORS), []
    for i in range(n):
        colour = names[i % 4]
        options = names[i % 3:] + names[: i % 3]
        buffer = io.BytesIO()
        _image(colour).save(buffer, format="PNG")
        rows.append({"index": str(i), "image": base64.b64encode(buffer.getvalue()).decode(), "question": QUESTION,
                     **dict(zip("ABCD", options)), "answer": "ABCD"[options.index(colour)], "category": "colour"})
    return rows


def _write_tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def taught(taught_replies):
    """A tiny model taught to answer the colour question with the colour's name."""
    prompt = likelihood_prompt({"question": QUESTION})
    return taught_replies([(prompt, _image(colour), colour) for colour in COLORS], seed=3)


def test_the_option_the_model_prefers_is_chosen(taught) -> None:
    model, processor = taught
    rows = _rows()
    encoded = [encode_options(processor, row, _image(list(COLORS)[i % 4])) for i, row in enumerate(rows)]
    results = score_rows(model, processor, encoded)
    assert [r["prediction"] for r in results] == [row["answer"] for row in rows]
    for result in results:
        best = result["scores"][result["prediction"]][0]
        assert all(best >= total for total, _ in result["scores"].values())


def test_batching_gives_the_same_scores_as_one_by_one(taught) -> None:
    model, processor = taught
    row = _rows(1)[0]
    items = list(encode_options(processor, row, _image("red")).values())
    together = option_scores(model, processor, items, batch_size=4)
    alone = [option_scores(model, processor, [item], batch_size=1)[0] for item in items]
    assert [n for _, n in together] == [n for _, n in alone]
    assert [t for t, _ in together] == pytest.approx([t for t, _ in alone], abs=1e-4)


def test_choose_by_sum_and_by_mean_and_ties() -> None:
    # B has the highest sum, A the highest mean per token; a tie keeps the earlier letter.
    assert choose("ABC", [(-2.0, 1), (-1.5, 3), (-4.0, 2)]) == ("B", "B")
    assert choose("AB", [(-1.0, 1), (-1.8, 4)]) == ("A", "B")
    assert choose("AB", [(-1.0, 2), (-1.0, 2)]) == ("A", "A")


def test_blind_partners_are_seeded_and_never_the_row_itself() -> None:
    indices = [str(i) for i in range(10)]
    partners = blind_partners(indices, seed=0)
    assert sorted(partners) == indices and sorted(partners.values()) == indices
    assert all(partners[i] != i for i in indices)
    assert partners == blind_partners(indices, seed=0) != blind_partners(indices, seed=1)


def test_command_scores_by_likelihood_and_blind(taught, tmp_path: Path) -> None:
    model, processor = taught
    save_pretrained(model, processor, tmp_path / "model")
    rows = _rows()
    bench = _write_tsv(tmp_path / "bench.tsv", rows)
    base = ["eval", "--model", str(tmp_path / "model"), "--benchmark", str(bench), "--mc-scoring", "likelihood",
            "--batch-size", "3", "--no-progress"]
    assert main([*base, "--output-dir", str(tmp_path / "seen")]) == 0
    seen = json.loads((tmp_path / "seen" / "results.json").read_text())
    assert seen["accuracy"] == 1.0 and seen["length_normalised"]["scored"] == 8
    record = load_records(tmp_path / "seen" / "predictions.jsonl")[0]
    assert record["prediction"] in "ABCD" and set(record["scores"]) == set("ABCD")
    assert record["settings"]["mc_scoring"] == "likelihood" and record["settings"]["blind_seed"] is None
    assert main([*base, "--output-dir", str(tmp_path / "blind"), "--blind-seed", "0"]) == 0
    blind = json.loads((tmp_path / "blind" / "results.json").read_text())
    # Shown another row's image, the model names that image's colour: right only where the colours agree.
    partners = blind_partners([row["index"] for row in rows], 0)
    agree = sum(int(partners[row["index"]]) % 4 == int(row["index"]) % 4 for row in rows)
    assert blind["correct"] == agree and blind["settings"]["blind_seed"] == 0


def test_options_are_scored_after_the_question_as_asked(taught_replies, tmp_path: Path) -> None:
    """A caption-like request is scored without the short-answer instruction when asked to (--as-asked)."""
    assert likelihood_prompt({"question": QUESTION}, short_answer=False) == QUESTION
    assert likelihood_prompt({"question": QUESTION}) != QUESTION
    model, processor = taught_replies([(QUESTION, _image(colour), colour) for colour in COLORS], seed=4)
    rows = _rows()
    images = [_image(list(COLORS)[i % 4]) for i in range(len(rows))]
    results = score_rows(model, processor, [encode_options(processor, r, i, short_answer=False)
                                            for r, i in zip(rows, images, strict=True)])
    assert [r["prediction"] for r in results] == [row["answer"] for row in rows]
    save_pretrained(model, processor, tmp_path / "model")
    bench = _write_tsv(tmp_path / "bench.tsv", rows)
    base = ["eval", "--model", str(tmp_path / "model"), "--benchmark", str(bench), "--as-asked", "--no-progress"]
    assert main([*base, "--mc-scoring", "likelihood", "--output-dir", str(tmp_path / "asked")]) == 0
    record = load_records(tmp_path / "asked" / "predictions.jsonl")[0]
    assert record["prompt"] == QUESTION and record["settings"]["short_answer"] is False
    assert json.loads((tmp_path / "asked" / "results.json").read_text())["accuracy"] == 1.0
    # Generated answers have no options to score: the flag is refused before the model loads.
    assert main([*base, "--output-dir", str(tmp_path / "generated")]) == 2
    assert not (tmp_path / "generated").exists()


def test_a_row_that_cannot_be_encoded_is_reported_and_the_rest_scored(taught, tmp_path: Path) -> None:
    """A literal <image> in a question or an option makes that row an error, not the end of the run."""
    rows = _rows(4)
    rows[1]["question"] = f"<image> {QUESTION}"
    rows[2]["C"] = f"{rows[2]['C']} <image>"
    results = evaluate(*taught, _write_tsv(tmp_path / "bench.tsv", rows), tmp_path / "out", batch_size=4,
                       mc_scoring="likelihood", progress=False)
    assert (results["errors"], results["scored"], results["correct"]) == (2, 2, 2)
    errors = load_records(tmp_path / "out" / "errors.jsonl")
    assert [(e["id"], e["field"], e["file"]) for e in errors] == [("1", "question", str(tmp_path / "bench.tsv")),
                                                                  ("2", "C", str(tmp_path / "bench.tsv"))]
    assert all("placeholder" in e["reason"] for e in errors)
    assert [r["id"] for r in load_records(tmp_path / "out" / "predictions.jsonl")] == ["0", "3"]
