"""Open short answers: the question without its options, the reply compared with the right option's text
(normalised, through an optional synonym table); the command, its resume and its ranks."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from sicog.cli import main
from sicog.data.jsonl import RecordError, load_records
from sicog.data.prompts import SHORT_ANSWER, STEP_BY_STEP_ANSWER
from sicog.eval.prompts import short_answer_prompt
from sicog.eval.runner import PREDICTIONS, EvalSettings, merge_and_score, open_scoring, run_rank
from sicog.eval.short_answers import ShortAnswers, load_synonyms
from sicog.eval.tsv import read_benchmark
from sicog.model.builders import save_pretrained
from sicog.toy.synonyms import synonym_table

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20)}
# Another word for each colour: the benchmark spells the options of odd rows with these.
OTHER_WORDS = {"red": "scarlet", "green": "lime", "blue": "navy", "yellow": "gold"}
QUESTION = "What colour is this image?"


def _png(colour: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), COLORS[colour]).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _write_bench(path: Path) -> Path:
    """Eight colour questions (odd rows' options in other words) and one row whose image is broken."""
    names, rows = list(COLORS), []
    for i in range(8):
        colour, options = names[i % 4], names[i % 3:] + names[: i % 3]
        texts = [OTHER_WORDS[o] if i % 2 else o for o in options]
        rows.append({"index": str(i), "image": _png(colour), "question": QUESTION, **dict(zip("ABCD", texts)),
                     "answer": "ABCD"[options.index(colour)], "category": "colour"})
    broken = base64.b64encode(b"not an image at all " * 8).decode()
    rows.append({**rows[0], "index": "8", "image": broken})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def taught(taught_replies):
    """A tiny model taught to answer the colour question with the colour's name."""
    prompt = short_answer_prompt({"question": QUESTION})
    return taught_replies([(prompt, Image.new("RGB", (64, 64), rgb), colour) for colour, rgb in COLORS.items()], seed=3)


@pytest.fixture
def toy_synonyms(tmp_path) -> ShortAnswers:
    path = tmp_path / "synonyms.json"
    path.write_text(json.dumps(synonym_table()))
    return ShortAnswers(load_synonyms(path))


@pytest.mark.parametrize("reply, truth", [
    ("Red circle.", "red circle"),
    ("the red circle", "red circle"),
    ("  A red disk. ", "red circle"),
    ("The answer is a blue rhombus.", "blue diamond"),
    ("plus sign", "cross"),
    ("Upper left", "top left"),
    ("top left corner", "top left"),
    ("Top", "top center"),
    ("bottom middle", "bottom center"),
    ("light grey", "light gray"),
    ("Three.", "3"),
])
def test_toy_phrasings_match_the_right_option(reply, truth, toy_synonyms) -> None:
    assert toy_synonyms.reply(reply) == toy_synonyms.canonical(truth)


@pytest.mark.parametrize("reply, truth", [
    ("blue circle", "red circle"),   # another object
    ("top right", "top left"),
    ("top", "top left"),             # "top" alone is the top center
    ("red", "red circle"),           # half an answer
    ("It is the red circle.", "red circle"),  # a sentence, not the short answer
    ("No entry", "No parking"),      # phrases that start with "no" are not the answer "no"
    ("No.", "No parking"),
])
def test_wrong_answers_do_not_match(reply, truth, toy_synonyms) -> None:
    assert toy_synonyms.reply(reply) != toy_synonyms.canonical(truth)


def test_without_a_table_only_normalisation_applies() -> None:
    plain = ShortAnswers()
    assert plain.reply("The Red circle.") == plain.canonical("red circle") == "red circle"
    assert plain.reply("red disk") != plain.canonical("red circle")
    assert plain.reply("") is None and plain.reply("   .") is None
    assert plain.reply("No, it is not.") == plain.canonical("no") == "no"
    assert plain.reply("No parking.") == plain.canonical("No parking") == "no parking"
    row = {"A": "Red circle", "B": "blue square", "answer": "A"}
    assert plain.truth(row) == "red circle" and plain.truth({**row, "answer": ""}) is None


def test_the_question_is_asked_without_its_options() -> None:
    row = {"hint": "Shapes.", "question": "What is red?", "A": "red circle", "B": "blue square", "answer": "A"}
    assert short_answer_prompt(row) == f"Shapes.\nWhat is red?\n{SHORT_ANSWER}"
    assert short_answer_prompt(row, "cot") == f"Shapes.\nWhat is red?\n{STEP_BY_STEP_ANSWER}"


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('["circle", "disk"]', "expected a JSON object"),
    ('{"circle": "disk"}', "field 'circle': expected a list of phrases"),
    ('{"circle": ["disk"], "square": ["Disk"]}', "field 'square': phrase 'Disk' is listed under both"),
    ('{"circle": ["the"]}', "phrase 'the' is empty once normalised"),
])
def test_bad_synonym_tables_are_refused(tmp_path, text, message) -> None:
    path = tmp_path / "synonyms.json"
    path.write_text(text)
    with pytest.raises(RecordError, match=message) as err:
        load_synonyms(path)
    assert str(path) in str(err.value)


def test_command_checks_the_table_before_loading_the_model(tmp_path, capsys) -> None:
    bench = _write_bench(tmp_path / "bench.tsv")
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    base = ["eval", "--model", str(tmp_path / "no_model"), "--benchmark", str(bench), "--output-dir", str(tmp_path)]
    assert main([*base, "--mc-scoring", "open", "--synonyms", str(bad)]) == 2
    assert "bad.json: expected a JSON object" in capsys.readouterr().err
    assert main([*base, "--mc-scoring", "likelihood", "--synonyms", str(bad)]) == 2
    assert "a synonym table is for open short answers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not 'generate'"):
        open_scoring("generate", bad)


def test_command_scores_open_answers_resumes_and_rescores(taught, tmp_path) -> None:
    model, processor = taught
    save_pretrained(model, processor, tmp_path / "model")
    bench = _write_bench(tmp_path / "bench.tsv")
    out = tmp_path / "open"
    base = ["eval", "--model", str(tmp_path / "model"), "--benchmark", str(bench), "--output-dir", str(out),
            "--mc-scoring", "open", "--batch-size", "3", "--no-progress"]
    assert main(base) == 0
    plain = json.loads((out / "results.json").read_text())
    records = load_records(out / PREDICTIONS)
    assert [r["prediction"].strip() for r in records] == [list(COLORS)[i % 4] for i in range(8)]
    assert records[0]["prompt"] == f"{QUESTION}\n{SHORT_ANSWER}" and records[0]["settings"]["mc_scoring"] == "open"
    # The model names the colours; the odd rows spell them otherwise, and the broken image is an error.
    assert (plain["correct"], plain["scored"], plain["errors"]) == (4, 8, 1)
    assert plain["by_category"]["colour"]["accuracy"] == 0.5
    table = tmp_path / "colours.json"
    table.write_text(json.dumps({colour: [word] for colour, word in OTHER_WORDS.items()}))
    answered = (out / PREDICTIONS).read_bytes()
    assert main([*base, "--synonyms", str(table)]) == 0  # nothing is generated again, every row is rescored
    assert (out / PREDICTIONS).read_bytes() == answered
    assert json.loads((out / "results.json").read_text())["accuracy"] == 1.0

    # Two ranks answer the same as one process.
    ranked, benchmark = tmp_path / "ranked", read_benchmark(bench)
    settings = EvalSettings(model=str(tmp_path / "model"), mc_scoring="open")
    for rank in (0, 1):
        run_rank(benchmark, model, processor, ranked, settings, batch_size=3, rank=rank, world=2, progress=False)
    summary = merge_and_score(benchmark, ranked, open_scoring("open", table))
    assert load_records(ranked / PREDICTIONS) == records and summary["accuracy"] == 1.0
