"""Reading generation inputs: exact prompts, planned prompt lengths, and error records before batching."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sicog.data.jsonl import RecordError, write_jsonl
from sicog.data.prompts import CAPTION_PROMPTS
from sicog.generate.inputs import PromptCounter, read_inputs
from sicog.model.image_io import ImageError, load_image


@pytest.fixture(scope="module")
def processor(tiny_model_factory):
    return tiny_model_factory()[1]


@pytest.fixture
def folder(tmp_path):
    sizes = {"small.png": (40, 30), "wide.png": (200, 64), "big.jpg": (150, 130), "line.png": (300, 2)}
    for name, size in sizes.items():
        Image.new("RGB", size, (120, 30, 60)).save(tmp_path / name)
    (tmp_path / "text.png").write_text("not an image")
    return tmp_path


def write(tmp_path, records, name="data.jsonl"):
    path = tmp_path / name
    write_jsonl(path, records)
    return path


def test_caption_prompts_are_the_exact_strings(tmp_path, folder, processor):
    data = write(tmp_path, [
        {"id": 1, "image": "small.png"},
        {"id": "b", "image": "wide.png", "conversations": [{"from": "human", "value": "<image>\nWhat is shown?"}]},
    ])
    for prompt_type in ("cod-default", "default"):
        plan = read_inputs(data, processor, task="captions", prompt_type=prompt_type, image_folder=folder)
        assert [t.prompt for t in plan.tasks] == [CAPTION_PROMPTS[prompt_type]] * 2 and plan.ids == ["1", "b"]
    plan = read_inputs(data, processor, task="captions", prompt_type="cod-conv", image_folder=folder)
    assert plan.tasks[0].id == "b" and plan.tasks[0].prompt == "What is shown? Describe the image step-by-step."
    assert plan.errors[0]["id"] == "1" and plan.errors[0]["field"] == "question"


def test_reasoning_prompts_use_the_question_field_first(tmp_path, folder, processor):
    data = write(tmp_path, [
        {"id": "q1", "image": "small.png", "answer": "3",
         "question": "How many circles?\nAnswer the question using a single word or phrase."},
        {"id": "q2", "image": str(folder / "big.jpg"),
         "conversations": [{"from": "human", "value": "<image>\nWhich colour?"}, {"from": "gpt", "value": "Red."}]},
    ])
    plan = read_inputs(data, processor, task="reasoning", prompt_type="cot-default", image_folder=folder)
    assert [t.prompt for t in plan.tasks] == ["How many circles?\nAnswer the question step-by-step.",
                                              "Which colour? Answer the question step-by-step."]
    assert plan.tasks[1].images == (folder / "big.jpg",)  # absolute paths are kept
    assert plan.tasks[0].conversation() == [
        {"from": "human", "value": "<image>\nHow many circles?\nAnswer the question step-by-step."}]
    plan = read_inputs(data, processor, task="reasoning", prompt_type="default", image_folder=folder)
    # As the published direct-answer prompt: the question as written, only a step-by-step request taken out.
    assert [t.prompt for t in plan.tasks] == ["How many circles?\nAnswer the question using a single word or phrase.",
                                              "Which colour?"]


@pytest.mark.parametrize("sizes", [[(40, 30)], [(200, 64)], [(150, 130)], [(64, 300)], [(40, 30), (150, 130)]])
def test_planned_length_equals_the_processor_encoding(processor, sizes):
    prompt = "Please describe it."
    images = [Image.new("RGB", size) for size in sizes]
    turn = [{"from": "human", "value": "<image>\n" * len(images) + prompt}]
    assert PromptCounter(processor)(prompt, sizes) == len(processor.encode(turn, images, train=False).input_ids)


def test_one_counter_counts_a_prompt_with_one_image_and_with_two(processor):
    """Its cache of the rendered text is per prompt and image count: one image's count served two images'."""
    count, prompt = PromptCounter(processor), "Please describe it."
    for sizes in ([(40, 30)], [(40, 30), (150, 130)], [(40, 30)]):
        turn = [{"from": "human", "value": "<image>\n" * len(sizes) + prompt}]
        images = [Image.new("RGB", size) for size in sizes]
        assert count(prompt, sizes) == len(processor.encode(turn, images, train=False).input_ids)


def test_bad_records_become_error_records_with_their_reason(tmp_path, folder, processor):
    records = [
        {"id": "ok1", "image": "small.png", "question": "Q?"},
        {"id": "gone", "image": "missing.png", "question": "Q?"},
        {"id": "text", "image": "text.png", "question": "Q?"},
        {"id": "line", "image": "line.png", "question": "Q?"},
        {"id": "noimg", "question": "Q?"},
        {"id": "noq", "image": "small.png"},
        {"id": "blankq", "image": "small.png", "question": "\u200b"},
        {"id": "long", "image": "wide.png", "question": "Q?"},
        {"id": "ok2", "image": "small.png", "question": "Q?"},
    ]
    data = write(tmp_path, records)
    limit = PromptCounter(processor)("Q? Answer the question step-by-step.", [(40, 30)])
    plan = read_inputs(data, processor, task="reasoning", prompt_type="cot-default", image_folder=folder,
                       max_prompt_tokens=limit)
    assert plan.ids == [r["id"] for r in records]
    assert [t.id for t in plan.tasks] == ["ok1", "ok2"] and [t.index for t in plan.tasks] == [0, 8]
    errors = {e["id"]: e for e in plan.errors}
    assert set(errors) == {"gone", "text", "line", "noimg", "noq", "blankq", "long"}
    assert "image file not found" in errors["gone"]["reason"] and "missing.png" in errors["gone"]["reason"]
    assert "cannot read image" in errors["text"]["reason"]
    assert "degenerate image" in errors["line"]["reason"] and "150:1" in errors["line"]["reason"]
    assert "needs an image" in errors["noimg"]["reason"]
    assert "needs a question" in errors["noq"]["reason"] and errors["noq"]["field"] == "question"
    assert "needs a question" in errors["blankq"]["reason"]
    assert f"over the limit of {limit}" in errors["long"]["reason"] and errors["long"]["field"] == "prompt"
    for error in errors.values():
        assert error["file"] == str(data) and error["line"] == 1 + plan.ids.index(error["id"])
        assert error["record"] == records[error["line"] - 1]


def test_ids_must_exist_and_be_unique(tmp_path, folder, processor):
    data = write(tmp_path, [{"id": "a", "image": "small.png"}, {"id": "b", "image": "small.png"},
                            {"id": "a", "image": "x.png"}])
    with pytest.raises(RecordError, match=r"data.jsonl:3 id='a' field 'id': duplicate id \(first on line 1\)"):
        read_inputs(data, processor, task="captions", prompt_type="default", image_folder=folder)
    data = write(tmp_path, [{"image": "small.png"}], name="noid.jsonl")
    with pytest.raises(RecordError, match="noid.jsonl:1 field 'id'"):
        read_inputs(data, processor, task="captions", prompt_type="default", image_folder=folder)


def test_json_array_input_and_prompt_type_checks(tmp_path, folder, processor):
    data = tmp_path / "data.json"
    data.write_text(json.dumps([{"id": "a", "image": "small.png", "question": "Q?"}]))
    assert len(read_inputs(data, processor, task="reasoning", prompt_type="default", image_folder=folder).tasks) == 1
    with pytest.raises(ValueError, match="'cod-default' is not a reasoning prompt type; choose from: cot-default"):
        read_inputs(data, processor, task="reasoning", prompt_type="cod-default")


def test_caption_prompts_without_a_question_never_read_conversations(tmp_path, folder, processor):
    """As published, cod-default and default captions need only the image, whatever ``conversations`` holds."""
    data = write(tmp_path, [{"id": "a", "image": "small.png", "conversations": "<image>\nDescribe."},
                            {"id": "b", "image": "small.png", "conversations": {"from": "human", "value": "hi"}},
                            {"id": "c", "image": "small.png", "conversations": 5}])
    for prompt_type in ("cod-default", "default"):
        plan = read_inputs(data, processor, task="captions", prompt_type=prompt_type, image_folder=folder)
        assert not plan.errors and [t.prompt for t in plan.tasks] == [CAPTION_PROMPTS[prompt_type]] * 3


def test_conversations_that_are_not_a_list_and_over_long_image_names_are_error_records(tmp_path, folder, processor):
    records = [{"id": "a", "image": "small.png", "conversations": 5},
               {"id": "b", "image": "x" * 300 + ".png", "question": "What?"},
               {"id": "c", "image": "small.png", "question": "What?", "conversations": 5}]
    for task, prompt_type in (("captions", "cod-conv"), ("reasoning", "cot-default")):
        plan = read_inputs(write(tmp_path, records), processor, task=task, prompt_type=prompt_type,
                           image_folder=folder)
        assert [(e["id"], e["field"]) for e in plan.errors] == [("a", "conversations"), ("b", "image")]
        assert "'conversations' is int, not a list" in plan.errors[0]["reason"]
        assert "cannot read image" in plan.errors[1]["reason"]
        assert [t.id for t in plan.tasks] == ["c"]  # its question field is used; conversations is not read
    with pytest.raises(ImageError, match="cannot read image"):
        load_image(folder / ("x" * 300 + ".png"))


def test_several_sources_are_read_in_order_and_name_their_file(tmp_path, folder, processor):
    """A brace pattern or a comma-separated list, as `sicog train --data_path` takes: errors name their own file."""
    first = write(tmp_path, [{"id": "a", "image": "small.png"}, {"id": "b", "image": "missing.png"}], "part1.jsonl")
    second = write(tmp_path, [{"id": "c", "image": "wide.png"}], "part2.jsonl")
    for data in (tmp_path / "part{1..2}.jsonl", f"{second},{first}"):
        plan = read_inputs(data, processor, task="captions", prompt_type="default", image_folder=folder)
        expected = ["a", "b", "c"] if "{" in str(data) else ["c", "a", "b"]
        assert plan.ids == expected
        assert [(t.id, t.index) for t in plan.tasks] == [(i, expected.index(i)) for i in expected if i != "b"]
        assert {t.id: (t.source, t.line) for t in plan.tasks} == {"a": (str(first), 1), "c": (str(second), 1)}
        assert [(e["id"], e["file"], e["line"]) for e in plan.errors] == [("b", str(first), 2)]
    again = write(tmp_path, [{"id": "a", "image": "small.png"}], "part3.jsonl")
    with pytest.raises(RecordError, match=r"part3.jsonl:1 id='a' field 'id': duplicate id \(first on line 1 of "
                                          r".*part1.jsonl\)"):
        read_inputs(f"{first},{again}", processor, task="captions", prompt_type="default", image_folder=folder)
