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
from sicog.eval.likelihood import (
    choose,
    encode_options,
    image_keys,
    likelihood_prompt,
    option_scores,
    score_rows,
)
from sicog.eval.pairing import blind_partners
from sicog.eval.runner import evaluate
from sicog.eval.tsv import Benchmark, read_benchmark
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


def test_an_option_is_scored_on_its_reply_alone_and_the_image_as_generation_sees_it(tiny_model_factory) -> None:
    """A checkpoint trained with release masking also supervises the chat markers and role headers: scored with
    them, every option got 20 tokens and their log-probability more. A checkpoint that resizes images at inference
    (inference_long_side) showed the scorer another image than the one its generated answers see."""
    _, processor = tiny_model_factory(label_masking="release", inference_long_side=32)
    row = _rows(1)[0]
    wide = Image.new("RGB", (96, 64), COLORS["red"])
    for letter, item in encode_options(processor, row, wide).items():
        supervised = [token for token in item.labels if token != -100]
        reply = processor.tokenizer(row[letter])["input_ids"]
        assert supervised[: len(reply)] == reply and len(supervised) == len(reply) + 1  # and the end marker
        asked = processor.encode([{"from": "human", "value": "<image>\n" + likelihood_prompt(row)}], [wide],
                                 train=False)
        assert len(item.pixel_values) == len(asked.pixel_values)
        image_tokens = item.input_ids.count(processor.image_token_id)
        assert image_tokens == asked.input_ids.count(processor.image_token_id) > 0


def test_choose_by_sum_and_by_mean_and_ties() -> None:
    # B has the highest sum, A the highest mean per token; a tie keeps the earlier letter.
    assert choose("ABC", [(-2.0, 1), (-1.5, 3), (-4.0, 2)]) == ("B", "B")
    assert choose("AB", [(-1.0, 1), (-1.8, 4)]) == ("A", "B")
    assert choose("AB", [(-1.0, 2), (-1.0, 2)]) == ("A", "A")


def _png(colour: str) -> str:
    buffer = io.BytesIO()
    _image(colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _shared_pictures(tmp_path: Path) -> Benchmark:
    """Rows that share pictures the ways real benchmarks store them: MMBench's picture stored once and named by
    later rows' index, one picture repeated in full, and a picture file named two ways."""
    images = ["red", "0", "0", "green", "3", "green", "", ""]
    paths = ["", "", "", "", "", "", "blue.png", "./sub/../blue.png"]
    rows = [{"index": str(i), "image": _png(cell) if cell in COLORS else cell, "image_path": path,
             "question": QUESTION, "A": "red", "B": "green", "answer": "A"}
            for i, (cell, path) in enumerate(zip(images, paths, strict=True))]
    return read_benchmark(_write_tsv(tmp_path / "shared.tsv", rows))


def test_blind_partners_never_show_a_row_its_own_picture(tmp_path: Path) -> None:
    keys = image_keys(_shared_pictures(tmp_path))
    assert len(set(keys.values())) == 3  # red (rows 0-2), green (3-5), blue (6, 7)
    for seed in range(20):
        partners = blind_partners(keys, seed)
        assert sorted(partners) == sorted(keys) and all(keys[i] != keys[p] for i, p in partners.items())
        # No picture has more than half the rows: every row lends its image exactly once.
        assert sorted(partners.values()) == sorted(keys)
    assert blind_partners(keys, seed=0) == blind_partners(dict(reversed(keys.items())), seed=0)
    assert blind_partners(keys, seed=0) != blind_partners(keys, seed=1)


def test_blind_partners_with_one_dominant_picture_or_only_one() -> None:
    keys = {str(i): "x" for i in range(5)} | {"5": "y"}
    partners = blind_partners(keys, seed=0)
    assert all(partners[str(i)] == "5" for i in range(5)) and keys[partners["5"]] == "x"
    with pytest.raises(ValueError, match="at least two distinct images"):
        blind_partners({str(i): "x" for i in range(5)}, seed=0)


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
    # Shown another picture (the benchmark repeats each colour's picture twice), the model names that picture's
    # colour: never the row's own.
    partners = blind_partners(image_keys(read_benchmark(bench)), 0)
    assert all(int(partners[row["index"]]) % 4 != int(row["index"]) % 4 for row in rows)
    assert blind["correct"] == 0 and blind["scored"] == 8 and blind["settings"]["blind_seed"] == 0
    # With one picture for every row no blind score exists: the command refuses instead of showing each its own.
    one = _write_tsv(tmp_path / "one.tsv", [{**row, "image": rows[0]["image"]} for row in rows])
    assert main([*base[:4], str(one), *base[5:], "--output-dir", str(tmp_path / "one"), "--blind-seed", "0"]) == 2
    assert not (tmp_path / "one" / "predictions.jsonl").exists()


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


def test_likelihood_scoring_refuses_the_step_by_step_style(tmp_path: Path, capsys) -> None:
    """--prompt cot with likelihood scoring asked the direct question and recorded the run as cot."""
    bench = _write_tsv(tmp_path / "bench.tsv", _rows())
    assert main(["eval", "--model", str(tmp_path / "no-model"), "--benchmark", str(bench), "--prompt", "cot",
                 "--mc-scoring", "likelihood", "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    assert capsys.readouterr().err == ("sicog eval: error: likelihood scoring asks the question directly; --prompt cot "
                                       "is for generated replies (--mc-scoring generate or open)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scoring", ["likelihood", "generate", "open"])
def test_a_row_that_cannot_be_encoded_is_reported_and_the_rest_scored(taught, tmp_path: Path, scoring: str) -> None:
    """A literal <image> in a question or an option makes that row an error, not the end of the run; generated
    replies asked it with the placeholder quietly moved out of the text."""
    rows = _rows(4)
    rows[1]["question"] = f"<image> {QUESTION}"
    rows[2]["C"] = f"{rows[2]['C']} <image>"
    results = evaluate(*taught, _write_tsv(tmp_path / "bench.tsv", rows), tmp_path / "out", batch_size=4,
                       mc_scoring=scoring, progress=False)
    assert (results["errors"], results["scored"]) == (2, 2)
    if scoring == "likelihood":
        assert results["correct"] == 2
    errors = load_records(tmp_path / "out" / "errors.jsonl")
    assert [(e["id"], e["field"], e["file"]) for e in errors] == [("1", "question", str(tmp_path / "bench.tsv")),
                                                                  ("2", "C", str(tmp_path / "bench.tsv"))]
    assert all("placeholder" in e["reason"] for e in errors)
    assert [r["id"] for r in load_records(tmp_path / "out" / "predictions.jsonl")] == ["0", "3"]


def test_a_reply_length_for_likelihood_scoring_is_refused_by_the_library_too(taught, tmp_path: Path) -> None:
    """evaluate() took max_new_tokens with likelihood scoring and ignored it; the command refuses it first."""
    bench = _write_tsv(tmp_path / "bench.tsv", _rows(2))
    with pytest.raises(ValueError, match="--max-new-tokens 4: likelihood scoring generates no reply"):
        evaluate(*taught, bench, tmp_path / "out", mc_scoring="likelihood", max_new_tokens=4, progress=False)
    assert not (tmp_path / "out").exists()
