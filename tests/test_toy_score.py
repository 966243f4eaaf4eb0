"""Scorers: caption precision/recall/attributes against ground truth, answer extraction, MC accuracy."""

from __future__ import annotations

import json

import pytest

from sicog.data.jsonl import RecordError
from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.steps import format_steps
from sicog.toy.datasets import read_bench_tsv
from sicog.toy.language import detailed_description
from sicog.toy.score import answer_matches, extract_choice, load_ground_truth, score_caption, score_captions, score_mc
from sicog.toy.world import Mark, Scene, SceneObject

SCENE = Scene(
    128,
    96,
    "light gray",
    (
        SceneObject("circle", "red", "large", 0, 0, 3),
        SceneObject("square", "blue", "small", 1, 1),
        SceneObject("triangle", "green", "medium", 2, 2, 7),
    ),
    mark=Mark("yellow", "top right"),
)
TRUTH = SCENE.ground_truth()
CAPTION = detailed_description(SCENE, None)
OPTIONS = {"A": "blue", "B": "red", "C": "green", "D": "yellow"}


def test_ground_truth_caption_scores_one() -> None:
    score = score_caption(CAPTION, TRUTH)
    assert (score["precision"], score["recall"], score["f1"], score["hallucinated"]) == (1.0, 1.0, 1.0, 0)
    assert score["attribute_accuracy"] == {"size": 1.0, "position": 1.0, "label": 1.0}
    assert score["background"] is True and score["mark"] is True


def test_one_wrong_colour_loses_exactly_that_object() -> None:
    wrong = CAPTION.replace("red circle", "purple circle")
    assert wrong != CAPTION
    score = score_caption(wrong, TRUTH)
    assert score["matched"] == 2 and score["hallucinated"] == 1
    assert score["recall"] == pytest.approx(2 / 3) and score["precision"] == pytest.approx(2 / 3)
    assert score["attribute_accuracy"] == {"size": 1.0, "position": 1.0, "label": 1.0}


def test_empty_caption_scores_zero() -> None:
    score = score_caption("", TRUTH)
    assert (score["precision"], score["recall"], score["f1"], score["mentioned"]) == (0.0, 0.0, 0.0, 0)
    assert score["attribute_accuracy"] == {"size": None, "position": None, "label": None}
    assert score["background"] is None and score["mark"] is None


def test_wrong_attributes_and_extra_objects_are_counted() -> None:
    caption = (
        "On a dark gray background, a small red circle labeled 5 in the top left, a small blue square at the "
        "center and an orange cross at the bottom. A small yellow dot sits in the bottom left corner."
    )
    score = score_caption(caption, TRUTH)
    assert score["hallucinated"] == 1 and score["matched"] == 2
    assert score["recall"] == pytest.approx(2 / 3) and score["precision"] == pytest.approx(2 / 3)
    assert score["attributes"]["size"] == {"stated": 2, "correct": 1}
    assert score["attributes"]["position"] == {"stated": 2, "correct": 2}
    assert score["attributes"]["label"] == {"stated": 1, "correct": 0}
    assert score["background"] is False and score["mark"] is False


@pytest.mark.parametrize("said", ["The {} is medium.", "A medium {} on a plain background."])
def test_the_middle_size_named_by_its_key_is_read(said: str) -> None:
    """Short replies name the middle size "medium" (sicog.toy.questions); the caption wordings say "medium-sized"."""
    small = next(o for o in TRUTH["objects"] if o["size"] == "small")
    score = score_caption(said.format(f"{small['color']} {small['shape']}"), TRUTH)
    assert score["attributes"]["size"] == {"stated": 1, "correct": 0}


def test_saying_a_labelled_object_has_no_number_is_wrong() -> None:
    score = score_caption("The red circle is large and has no number. The blue square has no number.", TRUTH)
    assert score["attributes"]["label"] == {"stated": 2, "correct": 1}


def test_every_value_said_of_an_object_counts_not_only_the_first() -> None:
    # The red circle is large, in the top left, labelled 3: the second value said of each fact is false.
    caption = ("The red circle is in the top left and in the bottom right, is large and is small, labeled 3 and "
               "labeled 4.")
    score = score_caption(caption, TRUTH)
    assert {a: score["attributes"][a] for a in ("size", "position", "label")} == {
        "size": {"stated": 1, "correct": 0}, "position": {"stated": 1, "correct": 0},
        "label": {"stated": 1, "correct": 0}}
    assert score_caption("The red circle is in the top left, is large, labeled 3.", TRUTH)["attribute_accuracy"] == {
        "size": 1.0, "position": 1.0, "label": 1.0}


def test_cod_caption_with_all_steps_scores_one() -> None:
    bodies = ["A red circle, a blue square and a green triangle.", "x", "y", "z", CAPTION]
    assert score_caption(format_steps(COD_STEPS, bodies), TRUTH)["f1"] == 1.0


def test_score_captions_aggregates() -> None:
    total = score_captions([(CAPTION, TRUTH), ("", TRUTH)])
    assert total["captions"] == 2 and total["recall"] == 0.5 and total["precision"] == 0.5
    assert total["attribute_accuracy"]["size"] == 1.0 and total["hallucinated"] == 0
    assert total["background_accuracy"] == 1.0


@pytest.mark.parametrize(
    "reply",
    ["B", "(B)", "B.", "B. red", "B) red", "Option B", "red", "Red.", "The answer is B.", "The answer is (B)", "a red"],
)
def test_accepted_answer_formats(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) == "B"


def test_cot_reply_is_read_from_its_conclusion() -> None:
    bodies = ["Find the colour.", "A red circle.", "It is red. This is option B.", "The answer is B."]
    reply = format_steps(COT_STEPS, bodies)
    assert extract_choice(reply, OPTIONS) == "B"
    steps_only = format_steps(COT_STEPS, ["a", "b", "c", "B"])
    assert extract_choice(steps_only, OPTIONS) == "B"


@pytest.mark.parametrize(
    "reply", ["A or B", "B or C", "B. blue", "E", "b", "", "I do not know", "red or blue", "The answer is A or B."]
)
def test_ambiguous_or_wrong_formats_choose_nothing(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) is None


def test_article_a_is_not_option_a() -> None:
    options = {"A": "blue square", "B": "green cross", "C": "red circle", "D": "purple diamond"}
    assert extract_choice("A red circle", options) == "C"
    assert extract_choice("A. blue square", options) == "A"


def test_score_mc_per_category_and_missing() -> None:
    rows = [
        {"index": "0", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "C", "category": "math"},
        {"index": "1", "A": "red", "B": "blue", "C": "green", "D": "black", "answer": "A", "category": "coarse"},
        {"index": "2", "A": "x", "B": "y", "C": "z", "D": "w", "answer": "D", "category": "math"},
    ]
    result = score_mc({"0": "The answer is 3.", "1": "A or B"}, rows)
    assert result["correct"] == 1 and result["total"] == 3 and result["missing"] == 1
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["by_category"]["math"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert result["by_category"]["coarse"]["accuracy"] == 0.0
    assert [item["choice"] for item in result["items"]] == ["C", None, None]


def test_open_answers_match_after_normalisation() -> None:
    assert answer_matches("The answer is three.", "3")
    assert answer_matches(format_steps(COT_STEPS, ["a", "b", "c", "The answer is top left."]), "top left")
    assert answer_matches("Light grey", "light gray")
    assert not answer_matches("The answer is 4.", "3")


def test_bad_inputs_name_file_line_and_field(tmp_path) -> None:
    path = tmp_path / "ground_truth.jsonl"
    good, bad = {"image": "a.png", "background": "white", "objects": []}, {"image": "b.png"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"ground_truth.jsonl:2 field 'background'"):
        load_ground_truth(path)
    with pytest.raises(RecordError, match="field 'answer'"):
        score_mc({}, [{"index": "0", "category": "math"}])
    tsv = tmp_path / "bench.tsv"
    tsv.write_text("index\tquestion\n0\tWhat?\n")
    with pytest.raises(RecordError, match="bench.tsv:1: missing columns image, A, B, answer, category"):
        read_bench_tsv(tsv)


def test_every_peripheral_phrasing_reads_back_as_its_mark() -> None:
    """Step 4 in every wording: the dot and its corner, or that there is none (the border is not scored)."""
    import random

    from sicog.toy.language import NO_PERIPHERAL, peripheral
    from sicog.toy.world import COLORS, CORNERS

    base = Scene(96, 96, "white", (SceneObject("circle", "red", "large", 1, 1),))
    with_dots = [Scene(96, 96, "white", base.objects, Mark(colour, corner), border)
                 for colour in COLORS for corner in CORNERS for border in (None, "blue")]
    for scene in [*with_dots, base, Scene(96, 96, "white", base.objects, border="green")]:
        texts = {peripheral(scene, random.Random(seed)) for seed in range(12)}
        if scene.mark is None and scene.border is None:
            assert texts == set(NO_PERIPHERAL)
        truth = scene.ground_truth()
        other = {**truth, "mark": None} if scene.mark else {**truth, "mark": {"color": "red", "corner": "top left"}}
        for text in texts:
            said = score_caption(text, truth)["mark"]
            # A border alone says nothing about a dot; every other step 4 does, and is false of another image.
            assert said is (None if scene.mark is None and scene.border else True), text
            assert score_caption(text, other)["mark"] is (None if said is None else False), text


def test_a_caption_denying_a_real_dot_is_wrong_and_one_denying_none_is_right() -> None:
    denial = "A large red circle in the top left on a light gray background. There is no dot."
    assert score_caption(denial, TRUTH)["mark"] is False  # SCENE has a yellow dot
    assert score_caption(denial, {**TRUTH, "mark": None})["mark"] is True
    assert score_caption("There is no yellow dot.", TRUTH)["mark"] is False  # SCENE's dot is yellow
    assert score_caption("There is no red dot.", TRUTH)["mark"] is True
    assert score_caption("There is a small yellow dot.", TRUTH)["mark"] is True  # no corner named: colour only
    assert score_caption("There is a small red dot.", TRUTH)["mark"] is False


def test_a_dot_in_a_sentence_that_names_an_object_is_read_without_taking_its_place() -> None:
    caption = "A large red circle in the top left, and a blue dot in the bottom right corner."
    score = score_caption(caption, TRUTH)
    assert score["mark"] is False  # the dot is yellow, in the top right
    assert score["attribute_accuracy"]["position"] == 1.0  # the circle's place is its own, not the dot's
    right = "A small yellow dot in the top right corner beside a large red circle in the top left."
    assert score_caption(right, TRUTH)["mark"] is True
    assert score_caption(right, TRUTH)["attribute_accuracy"]["position"] == 1.0
