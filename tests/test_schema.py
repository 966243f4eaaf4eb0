"""The LLaVA record check shared by training, `data check`, `curate mix` and the curation outputs: empty answers
are refused (with field, reason and category), and nothing that published data holds is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_curate_pipeline import generation

from sicog.curate.mix import mix
from sicog.curate.records import parse_generated, training_record
from sicog.data.jsonl import RecordError, errors_path, load_records
from sicog.data.prompts import caption_prompt
from sicog.data.schema import check_llava_record
from sicog.data.text import blank


def turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def test_blank_text_is_whitespace_controls_and_default_ignorable_characters() -> None:
    invisible = ["", " \u200b", "\ufeff\u200d", "\ufe0f", "\u034f", "\u3164", "\u1160", "\x00", "\u00ad", "\U000e0041"]
    shown = ["a\u200b", "\u0600", "\u06dd", "\u0301", "\U0001f44d", "\u200fx"]
    assert all(blank(text) for text in invisible) and not any(blank(text) for text in shown)


@pytest.mark.parametrize("answer", ["", " ", "\n\t ", "\u200b", "\ufeff\u200d \u2060", "\ufe0f", "\u3164"])
def test_an_empty_answer_is_refused_naming_its_field(answer: str) -> None:
    record = {"id": "q1", "conversations": turns("Hi?", "Hello.", "And?", answer)}
    with pytest.raises(RecordError) as caught:
        check_llava_record(record, path="d.jsonl", line=4)
    err = caught.value
    assert (err.field, err.kind, err.line) == ("conversations[3].value", "empty answer", 4)
    assert str(err).startswith("d.jsonl:4 id='q1' field 'conversations[3].value': empty answer")


@pytest.mark.parametrize("record", [
    {"id": 1, "image": "a.jpg", "conversations": turns("<image>", "A cat on a mat.")},  # captioning data
    {"id": "t", "conversations": turns("", "Hello! How can I help?")},  # text-only, empty first prompt
    {"id": "m", "image": ["a.jpg", "b.jpg"], "conversations": turns("<image>\n<image>\nSame?", "No.")},
    {"id": "later", "image": "a.jpg", "conversations": turns("Hi", "Hello.", "<image>\nWhat?", "A cat.")},
])
def test_published_shapes_are_accepted(record: dict) -> None:
    check_llava_record(record)


def test_every_failure_has_a_category() -> None:
    cases = {
        "not an object": [],
        "invalid id": {"conversations": turns("a", "b")},
        "invalid image field": {"id": "x", "image": "", "conversations": turns("a", "b")},
        "invalid conversations": {"id": "x", "conversations": []},
        "role order": {"id": "x", "conversations": [{"from": "user", "value": "a"}]},
        "no answer": {"id": "x", "conversations": turns("a")},
        "<image> in answer": {"id": "x", "image": "a.jpg", "conversations": turns("a", "<image>")},
        "placeholder count": {"id": "x", "image": "a.jpg", "conversations": turns("a", "b")},
    }
    for kind, record in cases.items():
        with pytest.raises(RecordError) as caught:
            check_llava_record(record)
        assert caught.value.kind == kind


def test_a_generated_record_is_checked_before_any_candidate_is_chosen() -> None:
    """Curation checks the training record's shape with a stand-in answer: an empty answer is not the input's
    fault, and an unusable image field still is."""
    record = {"id": "c1", "image": "c1.jpg", "candidates": ["", "A cat."],
              "generation": generation("default", caption_prompt("default"))}
    item = parse_generated(record, path="gen.jsonl", line=1)
    check_llava_record(training_record(item, "A cat.", {}))
    with pytest.raises(RecordError, match="field 'image'"):
        parse_generated({**record, "image": [""]}, path="gen.jsonl", line=1)


def test_curate_mix_sends_empty_and_missing_answers_to_the_errors_file(tmp_path: Path) -> None:
    good = {"id": "ok", "conversations": turns("Q?", "A.")}
    bad = {"id": "bad", "conversations": turns("Q?", "  ")}
    unanswered = {"id": "asked", "conversations": turns("Q?")}
    source = tmp_path / "curated.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in (good, bad, unanswered)))
    [part] = mix([source], tmp_path / "mix.jsonl")
    assert (part.records, part.errors, part.taken) == (3, 2, 1)
    empty, missing = load_records(errors_path(tmp_path / "mix.jsonl"))
    assert (empty["id"], empty["line"], empty["field"]) == ("bad", 2, "conversations[1].value")
    assert "empty answer" in empty["reason"]
    assert (missing["id"], missing["line"], missing["field"]) == ("asked", 3, "conversations")
    assert "no gpt turn" in missing["reason"]


def test_training_skips_and_lists_an_empty_answer(tmp_path: Path, tiny_model_factory) -> None:
    from sicog.train.datasets import SupervisedDataset

    _, processor = tiny_model_factory()
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"id": rid, "conversations": turns("Q?", answer)}) + "\n"
                            for rid, answer in (("ok", "Yes."), ("empty", ""))))
    dataset = SupervisedDataset(data, processor, show_progress=False)
    assert [r["id"] for r in dataset.records] == ["ok"]
    [problem] = dataset.skipped  # listed like an over-long sample: the run goes on
    assert (problem.id, problem.category, problem.field) == ("empty", "empty answer", "conversations[1].value")
    assert not dataset.problems


def test_every_reader_of_a_text_takes_a_blank_one_for_empty() -> None:
    """Each of these took a zero-width space for text: an annotation step, a generation prompt, a question."""
    from sicog.annotate.stepcheck import StepFormatError, format_checked_steps
    from sicog.curate.records import parse_generated
    from sicog.data.prompts import COT_STEPS, reasoning_prompt
    from sicog.generate.inputs import record_question

    with pytest.raises(StepFormatError, match=r"empty step\(s\) 2"):
        format_checked_steps(COT_STEPS, ["Look.", "\u200b", "Compare.", "B"])
    generated = {"id": "g", "image": "a.png", "candidates": ["A cube."],
                 "generation": {"prompt": "<image>\n\u200b", "task": "captions"}}
    with pytest.raises(RecordError, match="generation.prompt"):
        parse_generated(generated, path="gen.jsonl", line=1)
    assert record_question({"conversations": [{"from": "human", "value": "<image>\n\u200b"}]}) is None
    with pytest.raises(ValueError, match="empty question"):
        reasoning_prompt("cot-default", "\u200b")
