"""Extraction of the compared part (CoD step 5, CoT step 4) and reasoning answer normalisation."""

from __future__ import annotations

import pytest

from sicog.curate.extract import candidate_answer, expects_steps, extract
from sicog.data.answers import answer_phrase, normalize_answer, parse_answer
from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.steps import format_steps

FINAL = "A small brown dog sleeps on a red sofa next to a window."


@pytest.mark.parametrize(
    "text",
    [
        format_steps(COD_STEPS, ["A dog.", "Brown fur.", "On a sofa.", "A window.", FINAL]),
        f"Step 1: A dog.\nStep 4: A window.\nStep 5: {FINAL}",
        f"Step 4: A window.\n\nStep 5: {COD_STEPS[4]}\n{FINAL}",
        f"**Step 4**: A window.\n**Step 5**: {FINAL}",
        f"**Step 5: {COD_STEPS[4]}**\n{FINAL}",
        f"Step 4 - A window.\nStep 5 - {FINAL}",
        f"step 4: a window.\nstep 5: {FINAL}",
        f"### Step 5. Final cohesive description\n{FINAL}",
        f"Step 5: Detailed description\n{FINAL}",
        f"Step 1: A dog. Step 4: A window. Step 5: {FINAL}",
        f"Step 5 (Organize the observations): {FINAL}",
    ],
    ids=["formatted", "same-line", "header-line", "bold", "bold-header", "dash", "lower-case", "markdown-heading",
         "paraphrased-header", "inline", "parenthetical"],
)
def test_caption_step_five_is_found_in_real_output_formats(text: str) -> None:
    extraction = extract(text, "captions")
    assert extraction.step_found and not extraction.fallback
    assert extraction.text.lower() == FINAL.lower()


def test_missing_step_falls_back_to_the_whole_text_and_is_counted() -> None:
    text = "Step 1: A dog.\nStep 2: Brown fur.\n\nThe dog sleeps."
    extraction = extract(text, "captions")
    assert (extraction.text, extraction.step_found, extraction.fallback) == (text, False, True)


@pytest.mark.parametrize("empty", ["", "   \n"])
def test_an_empty_candidate_is_no_fallback(empty: str) -> None:
    """The report's fall-backs count replies whose steps are missing; an empty one is not compared at all."""
    assert extract(empty, "captions").fallback is False and extract(empty, "reasoning").fallback is False


def test_direct_prompt_output_is_compared_whole_without_counting_a_fallback() -> None:
    assert not expects_steps("default") and expects_steps("cod-default") and expects_steps(None)
    extraction = extract(FINAL, "captions", expect_steps=expects_steps("default"))
    assert (extraction.text, extraction.fallback) == (FINAL, False)


def test_reasoning_uses_step_four_not_step_five() -> None:
    text = format_steps(COT_STEPS, ["Count cubes.", "Cubes.", "One, two, three.", "The answer is 3."])
    assert extract(text, "reasoning").text == "The answer is 3."
    assert extract(text, "captions").fallback


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Step 3: It is not blue.\nStep 4: Compare the options.\nStep 5: The answer is B.", "b"),
        ("Step 3: The answer is not A.\nStep 4: (C) red.\nStep 5: Done.", "c"),
        ("Step 4: The answer is 3.\nStep 5: I could also say 4, but no.", "3"),
    ],
    ids=["answer-in-step-5", "no-marker-anywhere", "marker-in-step-4-wins"],
)
def test_a_candidate_answers_where_evaluation_reads_the_answer(text: str, answer: str) -> None:
    """Answer agreement and evaluation read one answer: a marked one from step 4 on, else step 4's text."""
    assert candidate_answer(text, extract(text, "reasoning")).normalized == answer


@pytest.mark.parametrize("first_line", ["3", "Yes", "Blue", "(B)", "(B) red cube", "Answer: 3", "The answer is 3",
                                        "**Final answer:** 3"])
def test_a_short_answer_line_is_not_mistaken_for_a_header(first_line: str) -> None:
    text = f"Step 3: Counted.\nStep 4: {first_line}\nBecause that is what the image shows."
    extraction = extract(text, "reasoning")
    assert extraction.text.startswith(first_line)
    assert parse_answer(extraction.text).normalized == parse_answer(text).normalized


@pytest.mark.parametrize("step_four", ["Final answer\n3", "(Conclusion) 3", "(Summary): 3", "**Conclusion**\n3"])
def test_a_header_in_the_step_is_dropped_before_its_answer(step_four: str) -> None:
    text = f"Step 3: Counted.\nStep 4: {step_four}"
    assert extract(text, "reasoning").text == "3"


@pytest.mark.parametrize(
    ("text", "phrase", "explicit"),
    [
        ("There are three cubes. The answer is 3.", "3", True),
        ("So the final answer is: B. The red cube.", "B", True),
        ("The answer to the question is 7, because seven dots are visible.", "7", True),
        ("Counting gives \\boxed{42}.", "42", True),
        ("I think the answer is:\n5", "5", True),
        ("The answer is 3.5 cm.", "3.5 cm", True),
        ("First I counted. There are three cubes.", "There are three cubes.", False),
        ("", "", False),
    ],
)
def test_answer_phrase(text: str, phrase: str, explicit: bool) -> None:
    assert answer_phrase(text) == (phrase, explicit)


@pytest.mark.parametrize(
    ("phrase", "normalized"),
    [
        ("(B)", "b"), ("B.", "b"), ("B", "b"), ("b)", "b"), ("(B) red cube", "b"), ("Option B", "b"),
        ("option (c)", "c"), ("three", "3"), ("3", "3"), ("3.0", "3"), ("1,000", "1000"), ("-2", "-2"),
        ("The Red Cube!", "red cube"), ("an apple", "apple"), ("Yes, there is a cat.", "yes"), ("No.", "no"),
        ("**3**", "3"), ("3 cubes", "3 cubes"), ("a cube", "cube"),
    ],
)
def test_normalize_answer(phrase: str, normalized: str) -> None:
    assert normalize_answer(phrase) == normalized


def test_different_wordings_of_one_answer_normalise_equal() -> None:
    wordings = ["The answer is 3.", "So, the answer is three.", "Answer: 3", "The final answer is **3**."]
    assert {parse_answer(w).normalized for w in wordings} == {"3"}
    assert parse_answer("The answer is 5.").normalized == "5"


# Our captions and the published formats: the annotation API's reply ("**Step 5**: header", blank line,
# text; what the published data's dd_caption split relies on) and convert_cot.py's "Step 4: header\n".
RELEASE_COD = (
    "**Step 1**: Extract salient content by identifying the key elements that define the image or document.\n\n"
    "A dog on a sofa.\n\n"
    "**Step 4**: Examine marginal or peripheral content to ensure no important information is missed.\n\n"
    "A window.\n\n"
    f"**Step 5**: Organize all observations into a detailed, cohesive description.\n\n{FINAL}"
)


@pytest.mark.parametrize("text", [RELEASE_COD, format_steps(COD_STEPS, ["A dog.", "Fur.", "Sofa.", "Window.", FINAL]),
                                  RELEASE_COD.replace("**Step", "Step").replace("**:", ":")],
                         ids=["release", "ours", "release-plain"])
def test_step_five_has_no_header_sentence_in_either_format(text: str) -> None:
    extraction = extract(text, "captions")
    assert extraction.step_found and extraction.text == FINAL
    assert "Organize all observations" not in extraction.text


def test_release_cot_step_four_is_the_answer_alone() -> None:
    text = ("Step 1: Clarify the task objective.\nCount the cubes.\n\n"
            "Step 2: Extract the crucial visual information from the image.\nThree cubes.\n\n"
            "Step 3: Generate detailed reasoning to solve the task.\nOne, two, three.\n\n"
            "Step 4: Conclude the task with an answer.\n3")
    assert extract(text, "reasoning").text == "3"


def test_the_final_step_alone_is_the_body_split_steps_gives_it() -> None:
    """final_step builds only the wanted step's body (curation reads millions); it must be split_steps' body."""
    texts = [
        format_steps(COD_STEPS, ["A dog.", "Brown fur.", "On a sofa.", "A window.", FINAL]),
        f"**Step 5: {COD_STEPS[4]}**\n{FINAL}\nStep 5: a second step five\nStep 1: late",
        f"Step 1: A dog.\nStep 5:\n\n### {COD_STEPS[4]}\n{FINAL}",
        "Step 5:", "no steps at all", f"Step 2: x\nStep 4: y\n**Step 5**: {FINAL}\nStep 6: extra",
        format_steps(COT_STEPS, ["Count.", "Cubes.", "Three.", "The answer is 3."]),
    ]
    from sicog.data.steps import final_step, split_steps

    for text in texts:
        for step, headers in ((5, COD_STEPS), (4, COT_STEPS), (1, ())):
            body = split_steps(text, headers).get(step)
            assert final_step(text, step, headers) == ((body, True) if body else (text.strip(), False)), text
