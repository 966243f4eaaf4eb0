"""The project's answer extractor: every accepted multiple-choice format, yes/no, and what is refused."""

from __future__ import annotations

import pytest

from sicog.curate.extract import candidate_answer, extract
from sicog.data.answers import answer_matches, extract_answer, extract_choice, extract_yes_no, parse_answer
from sicog.data.prompts import COT_STEPS
from sicog.data.steps import format_steps

OPTIONS = {"A": "blue", "B": "red", "C": "green", "D": "yellow"}


@pytest.mark.parametrize(
    "reply",
    [
        "B", "(B)", "[B]", "B.", "B:", "B) red", "B. red", "Option B", "option b",
        "red", "Red.", "a red", "The colour is red.",
        "The answer is B.", "The answer is (B)", "The correct answer is B, since the circle is red.",
        "Answer: B", "**Answer:** B", "Final answer: (B) red", "The answer is:\n\nB",
        "the answer is b", "answer: (b)", "(b)", "b)", "B. The circle on the left is red.",
        # A reason after the letter names other options' texts, without a comma too.
        "The answer is B because A is blue.", "The answer is option B which is red.", "Answer: B since C is green",
        "The correct option is B as the circle is red", "B because the circle is not blue",
    ],
)
def test_accepted_formats(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) == "B"


@pytest.mark.parametrize("reply", [
    "The correct answer is **B**. Here is why: A is blue.", "The answer is **B**. The circle is red.", "**B**: red",
    "**B**. The circle is red.", "The answer is **B** since A is blue.", "The answer is **B** as the circle is red.",
    "**B** because A is blue",
])
def test_a_bold_letter_followed_by_more_text_is_read_as_without_the_bold(reply: str) -> None:
    """The emphasis after the letter hid it: no answer, or the option its reason named ("since A is blue")."""
    plain = reply.replace("**", "")
    assert extract_choice(reply, OPTIONS) == extract_choice(plain, OPTIONS) == "B"
    assert parse_answer(reply).normalized == parse_answer(plain).normalized  # as curation reads it


def test_chain_of_thought_is_read_from_its_conclusion() -> None:
    reasoning = "The circle is blue on the left and red on the right. Option A is wrong."
    reply = format_steps(COT_STEPS, ["Find the colour.", "A blue square, a red circle.", reasoning, "The answer is B."])
    assert extract_choice(reply, OPTIONS) == "B"
    # Without a marker, step 4 alone is the answer, not the options named while reasoning.
    assert extract_choice(format_steps(COT_STEPS, ["A?", "A or C.", reasoning, "(b)"]), OPTIONS) == "B"
    # A marker in steps 1-3 is reasoning: step 4 concludes, with or without a marker of its own; curation reads
    # the same answer.
    for step_three in ("The answer is not A, because the circle is not blue.", "So the answer is clearly B."):
        for conclusion in ("B", "B. red", "red", "(B) red", "**B**"):
            steps = format_steps(COT_STEPS, ["Determine the answer: the colour.", "A circle.", step_three, conclusion])
            assert extract_choice(steps, OPTIONS) == "B", (step_three, conclusion)
            assert parse_answer(extract(steps, "reasoning").text).normalized in ("b", "red"), steps
            # The same steps written on one line, as models also write them.
            inline = " ".join(steps.split())
            assert extract_choice(inline, OPTIONS) == "B", inline
            assert candidate_answer(inline, extract(inline, "reasoning")).normalized in ("b", "red"), inline
    # A reply of more steps than four may conclude after step 4.
    longer = "Step 1: Look.\nStep 2: A circle.\nStep 3: It is not blue.\nStep 4: Compare.\nStep 5: The answer is B."
    assert extract_choice(longer, OPTIONS) == "B" and extract_yes_no(longer.replace("is B", "is yes")) == "yes"
    # The last marker wins over earlier ones.
    assert extract_choice("At first the answer is A. On reflection, the answer is b.", OPTIONS) == "B"
    # A free-form chain of thought ending with the verdict.
    assert extract_choice("Let me look. The shape is round and its colour is warm.\nThe answer is B", OPTIONS) == "B"


@pytest.mark.parametrize(
    "reply",
    [
        "", "b", "E", "(E)", "I do not know", "A or B", "B or C", "A, B", "B, C", "B. blue",
        "red or blue", "The answer is A or B.", "It is red, not blue... or blue.", "The answer is purple.",
        # The option list echoed: every option is named, none chosen.
        "A. blue\nB. red\nC. green", "(A) blue (B) red (C) green", "A. blue, B. red", "A) blue, B) red",
        "B. red\nC. green", "a. blue\nb. red", "(b) red (d) yellow", "The answer is B. red, C. green",
        "The answer is A, B or C.", "A, B, or C", "B, C and D", "A; B",
        # The same in bold: the first letter's emphasis once hid the others.
        "Answer: **A**, **B**", "**A**; **B**", "The answer is **A**, **B** or **C**.",
    ],
)
def test_ambiguous_or_wrong_formats_choose_nothing(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) is None


def test_article_a_is_not_option_a_and_words_are_not_letters() -> None:
    options = {"A": "blue square", "B": "green cross", "C": "red circle", "D": "purple diamond"}
    assert extract_choice("A red circle", options) == "C"
    assert extract_choice("A. blue square", options) == "A"
    assert extract_choice("Blue square.", options) == "A"
    # "B..." starts a word, and no option's text is in the reply.
    assert extract_choice("Because the cross is green.", options) is None


def test_a_repeated_letter_or_other_capitals_are_not_another_option() -> None:
    assert extract_choice("B. red (B)", OPTIONS) == "B"
    assert extract_choice("B. It is red, i.e. warm, as in Washington D.C.", OPTIONS) == "B"
    assert extract_choice("(B) red, the answer", OPTIONS) == "B"


@pytest.mark.parametrize(("reply", "choice"), [
    ("The answer is C. Step 4: the water boils.", "C"),
    ("The answer is A, as shown in step 4.", "A"),
    ("The answer is D. Step 4 - nothing happens", "D"),
    ("A. Step 4: Add water", "A"),
])
def test_a_step_named_after_the_answer_is_no_chain_of_steps(reply: str, choice: str) -> None:
    """Only markers that open with steps 1 to 4 are steps written on one line; a reply naming "step 4" of
    something else keeps its answer."""
    options = {"A": "Step 4: Add water", "B": "the water boils", "C": "nothing", "D": "it freezes"}
    assert extract_choice(reply, options) == choice
    if reply.startswith("The answer is"):
        assert candidate_answer(reply, extract(reply, "reasoning")).normalized == choice.lower()
    assert extract_yes_no("Yes. Step 4: no further change is needed.") == "yes"


@pytest.mark.parametrize("reply",
                         ["The answer is （B）", "The answer is Ｂ", "（Ｂ）\u3000ｒｅｄ", "The answer is: ＲＥＤ."])
def test_full_width_replies_choose_as_curation_reads_them(reply: str) -> None:
    """Full-width letters and brackets (as Chinese-trained models write them) are read as their usual forms."""
    assert extract_choice(reply, OPTIONS) == "B" and parse_answer(reply).normalized in ("b", "red")


def test_full_width_yes_and_no() -> None:
    assert extract_yes_no("The answer is ＹＥＳ") == "yes" and extract_yes_no("Ｎｏ， it is not.") == "no"


def test_options_that_start_with_yes_or_no_are_phrases() -> None:
    options = {"A": "No entry", "B": "No parking", "C": "Stop"}
    assert extract_choice("No parking", options) == "B"
    assert extract_choice("The sign says no entry.", options) == "A"
    assert extract_choice("The answer is: No parking.", options) == "B"
    assert extract_choice("No", options) is None
    # "yes"/"no" before a new clause still is the answer "yes"/"no".
    assert answer_matches("No, it is not.", "no") and answer_matches("Yes.", "yes") and answer_matches("no", "No")
    assert not answer_matches("No entry", "No parking") and not answer_matches("No parking", "no")


def test_longer_option_text_wins_over_its_part() -> None:
    options = {"A": "red", "B": "dark red", "C": "blue"}
    assert extract_choice("It is dark red.", options) == "B"
    assert extract_choice("It is red.", options) == "A"
    assert extract_choice("dark red or blue", options) is None


def test_a_text_two_options_share_chooses_neither_and_only_upper_case_keys_are_options() -> None:
    """A benchmark row may repeat an option's text (a translation, a data error): the reply is then no choice."""
    assert extract_choice("It is red.", {"A": "red", "B": "blue", "C": "Red"}) is None
    assert extract_choice("The answer is b", {"A": "red", "b": "blue", "hint": "x"}) is None
    assert extract_choice("blue", {"A": "red", "b": "blue"}) is None


def test_an_option_whose_text_names_other_letters_is_chosen_by_its_letter() -> None:
    """ScienceQA's and AI2D's "Both A and B": the letters after C are C's own text, not several options named."""
    options = {"A": "The cat", "B": "The dog", "C": "Both A and B", "D": "Neither A nor B"}
    for reply in ("C. A and B", "(C) A and B", "C: A and B are both in the image", "The answer is C. A and B."):
        assert extract_choice(reply, options) == "C", reply
    assert extract_choice("C. C, because both are there", options) == "C"
    assert extract_choice("A, B or C", options) is None and extract_choice("A as well as B", options) is None


def test_numbers_and_options_beyond_d() -> None:
    options = {"A": "1", "B": "2", "C": "3", "D": "4", "E": "5", "F": "six apples"}
    assert extract_choice("The answer is three.", options) == "C"
    assert extract_choice("(E)", options) == "E"
    assert extract_choice("There are six apples.", options) == "F"
    # Missing and empty options are not choices.
    assert extract_choice("C", {"A": "x", "B": "y", "C": ""}) is None
    assert extract_choice("C", {"A": "x", "B": "y", "C": None}) is None


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        ("Yes", "yes"), ("yes.", "yes"), ("NO", "no"), ("No, there is no dog.", "no"),
        ("Yes, there is a dog but no cat.", "yes"), ("The answer is no.", "no"),
        (format_steps(COT_STEPS, ["a", "b", "No dog is visible, yes.", "The answer is no."]), "no"),
        ("There is a dog.", None), ("Maybe.", None), ("", None), ("I see a dog, yes, or no", None),
    ],
)
def test_yes_no(reply: str, said: str | None) -> None:
    assert extract_yes_no(reply) == said


def test_short_answers() -> None:
    assert extract_answer("Reasoning...\nThe answer is: **top left**.") == "top left"
    assert answer_matches("The answer is three.", "3")
    assert answer_matches("Light grey", "light gray")
    assert not answer_matches("The answer is 4.", "3")
    # One answer however it is written: full-width digits, compound number words, the answer restated in brackets.
    assert answer_matches("The answer is ３.", "3") and answer_matches("twenty-one", "21")
    assert answer_matches("Ninety nine balloons", "99 balloons") and answer_matches("The answer is 3 (three).", "3")
    assert not answer_matches("3 (4)", "3") and not answer_matches("twenty-one", "20")
    # A reason ends the phrase, with or without a comma; a reply that is all reason stays as written.
    assert answer_matches("The answer is 3 because there are three cubes.", "3")
    assert answer_matches("The answer is red since the light is on", "red")
    assert parse_answer("The answer is because of the rain.").normalized == "because of rain"


def test_a_period_after_an_abbreviation_or_an_initial_does_not_end_the_answer() -> None:
    assert parse_answer("The answer is Mr. Smith.").normalized == "mr smith"
    assert not answer_matches("The answer is Mr. Smith.", "Mr. Jones")
    assert parse_answer("The answer is St. Louis. It lies on the river.").normalized == "st louis"
    assert not answer_matches("The answer is St. Louis.", "St. Paul")
    assert parse_answer("The answer is e.g. 3").normalized == "e g 3"
    assert parse_answer("The answer is John F. Kennedy. He was president.").normalized == "john f kennedy"
    assert parse_answer("The answer is J. K. Rowling.").normalized == "j k rowling"
    # Without a marker the last sentence is the answer, cut by the same rule.
    assert parse_answer("I looked closely.\nIt was painted by Mr. Smith.").normalized == "it was painted by mr smith"
    # An option letter, "No" and a number still end the answer.
    for reply, said in (("The answer is B. Because it is red.", "b"), ("the answer is b. because", "b"),
                        ("The answer is option B. Because", "b"), ("The answer is No. There is none.", "no"),
                        ("The answer is vitamin C. It is sour.", "vitamin c"), ("The answer is 3. Then", "3")):
        assert parse_answer(reply).normalized == said, reply


def test_a_correct_option_phrase_is_an_answer_marker() -> None:
    for reply in ("The correct option is B.", "So the best choice would be (B).", "Final choice: B",
                  "Option A is wrong. The right option is B."):
        answer = parse_answer(reply)
        assert (answer.normalized, answer.explicit) == ("b", True), reply
        assert extract_choice(reply, OPTIONS) == "B", reply


@pytest.mark.parametrize("reply", [
    # A discussion of other options, then the conclusion: the last sentence naming an option decides.
    "A is wrong because the image does not show blue. So B.",
    "The image clearly does not show blue, which rules out A. Therefore, B.",
    "It is not blue. It is red.", "The car is red. It is parked next to a tree.",
    "At first it might look like blue, but a closer look shows otherwise.\nI'd go with B.",
    "Options:\nA. blue\nB. red\nC. green\nTherefore, B.",
    "Step 1: Look.\nStep 2: The car is not blue.\nStep 3: Compare.\nStep 4: Conclusion\nB",
    # Markers with words between "answer" and the letter, or of their own.
    "The car is not blue.\nSo the answer must be B.", "The answer is therefore B.", "The answer is most likely B.",
    "The correct answer here is B.", "The answer, therefore, is B.", "The answer in this case is B.", "Answer - B",
    "### Answer\nB", "The car is not blue.\n\n**Final Answer**\n\n**B**", "The answer is $\\boxed{\\text{B}}$.",
    # A verdict after the letter.
    "Option B is correct.", "B is the right answer.", "b is the correct answer.", "B (red) is the best choice.",
    "(B) is the answer. (A) is a distractor.", "So (B) is the right one, since the car is red.",
    "Option B is correct. Option A is incorrect.",
    # A later "the answer is not ..." or "this answer is ..." explains; it does not answer again.
    "The answer is B. The answer is not A because the image does not show blue.",
    "Answer: B\nExplanation: The answer is not blue, since that is not what the image shows.",
    "The answer is B. This answer is consistent with what the image shows.",
    "The answer is B rather than A.", "The answer is B and not A.",
])
def test_a_conclusion_after_other_options_are_discussed_is_read(reply: str) -> None:
    """These read the option the reasoning rejected (A: "blue" or "A" is mentioned), or nothing."""
    assert extract_choice(reply, OPTIONS) == "B"


@pytest.mark.parametrize("reply", [
    "The car is not blue.", "I can't tell whether the image shows red.", "Both B and A seem plausible.",
    "At first it might look like blue, but a closer look shows otherwise.\nI cannot determine the answer.",
    "It is red, not blue... or blue.",
    # A verdict list: every option gets one, and none is the reply's conclusion.
    "A: incorrect.\nB: correct.\nD: incorrect.",
    # An option list echoed after a preface, or one letter per line with its text below: no conclusion follows.
    "The options are:\nA. blue\nB. red\nC. green\nD. yellow", "A\nblue\nB\nred\nC\ngreen\nD\nyellow",
    # A letter above another option's text contradicts itself.
    "C\nblue", "B\nyellow",
    # Initials, units and words are no option letters.
    "It is Washington, D.C.", "It is 25°C.", "N/A",
])
def test_a_rejection_a_refusal_or_an_echo_chooses_nothing(reply: str) -> None:
    assert extract_choice(reply, OPTIONS) is None


def test_symbol_options_compare_as_written() -> None:
    """Symbols normalise to nothing: every symbol once matched the one symbol option, no symbol matched among four."""
    operators = {"A": "+", "B": "-", "C": "\u00d7", "D": "\u00f7"}
    assert [extract_choice(reply, operators) for reply in ("+", "-", "\u00d7", "The answer is -", "A\n+")] == [
        "A", "B", "C", "B", "A"]
    assert extract_choice("\u00b0", {"A": "3", "B": "red", "C": "+"}) is None


@pytest.mark.parametrize("reply, options, choice", [
    # A negation rejects what its own clause names, not the sentence's other options.
    ("The car is red and it is not moving.", OPTIONS, "B"), ("Sunny, not cloudy.", {"A": "sunny", "B": "cloudy"}, "A"),
    ("The dog is lying down but its eyes are open. No, it is not sleeping.", {"A": "Yes", "B": "No"}, "B"),
    ("False, the cat is not black.", {"A": "True", "B": "False"}, "B"),
    # A last sentence that names nothing and declines nothing leaves the answer where it was.
    ("The car is red. I cannot see the driver.", OPTIONS, "B"),
    # A verdict inside a sentence, or on a letter of an option's text, is no verdict.
    ("The answer is C. While A is the best guess at first glance, a closer look shows green.", OPTIONS, "C"),
    ("Vitamin C is the correct answer.", {"A": "Vitamin C", "B": "Iron", "C": "Zinc"}, "A"),
    # "A" before a capitalised word or a number is an article.
    ("It is an airplane. A Boeing 747 is parked at the gate.", {"A": "car", "B": "airplane"}, "B"),
    # The conclusion after an option list whose texts are verdict words.
    ("A: Left\nB: Right\n\nThe cup is on the left side of the table.", {"A": "Left", "B": "Right"}, "A"),
    # A later sentence naming another option contradicts the earlier choice: nothing is chosen.
    ("It is a cat. A dog would be larger.", {"A": "dog", "B": "cat"}, None),
    ("It is a dog. It could be mistaken for a cat from afar.", {"A": "dog", "B": "cat"}, None),
])
def test_clauses_sentences_and_verdicts_are_read_where_they_apply(reply: str, options: dict, choice: str | None):
    assert extract_choice(reply, options) == choice


ANGLES = {"A": "40°", "B": "50°", "C": "140°", "D": "130°"}
GRADES = {"A": "E", "B": "C", "C": "D", "D": "B"}  # AI2D's "which letter marks ...": options that are letters


@pytest.mark.parametrize("reply, options, choice", [
    # Labels in a figure are no options: an earlier sentence contradicts only by an option's text.
    ("In the figure, points A and B lie on the circle. Angle B is 140°.", ANGLES, "C"),
    ("D is the midpoint of BC. So x = 50°.", ANGLES, "B"),
    # An option's text ending a sentence ends it, however it is spelled ("Vitamin D." is no initial in a name).
    ("The supplement is rich in Vitamin D. The other nutrients are not mentioned on the label.",
     {"A": "Vitamin C", "B": "Vitamin D"}, "B"),
    ("The sign says Plan B. It might be part of a larger sign.", {"A": "Plan B", "B": "Plan A"}, "A"),
    # A verdict after a lone letter that answered another contradicts it.
    ("A\nC is correct.", OPTIONS, None), ("B\nB is correct.", OPTIONS, "B"),
    ("By the Pythagorean theorem, 3^2 + x^2 = 5^2, which makes B the best answer.", ANGLES, "B"),
    ("Based on the image, B is the correct answer.", GRADES, "B"),
    ("Vertex B is at the top. Therefore, B.", GRADES, "B"),
    ("Looking at the car closely, I compare the options.\n\na) blue", OPTIONS, "A"),
])
def test_labels_option_texts_and_letter_options_in_prose(reply: str, options: dict, choice: str | None):
    assert extract_choice(reply, options) == choice


@pytest.mark.parametrize("reply, choice", [
    # The latest of the markers, whatever their kinds, is the answer: a reply corrects its draft.
    ("At first I wrote \\boxed{A}. On reflection the answer is B.", "B"),
    ("Option A is correct.\nWait: the answer is B.", "B"),
    # Each way of declining ends the reading, whatever an earlier sentence named.
    ("It looks red. I am not certain.", None), ("Red? I do not know.", None),
    ("The car is red. None of the options fit the truck.", None), ("It is red. There is not enough information.", None),
    ("The car is red. I can't tell the truck's colour.", None), ("The car is red. I am unable to determine it.", None),
    # Each rejecting or entertaining word keeps its clause from choosing.
    *[(reply, None) for reply in (
        "Blue is wrong.", "Option A is false.", "Blue is unlikely.", "It is never blue.", "It cannot be blue.",
        "The shade rules out blue.", "We can eliminate blue.", "Blue is a distractor.", "Blue is excluded.",
        "It might be blue.", "It may be blue.", "It could be blue.", "At first it looks blue.",
        "Blue would be mistaken.")],
    # Verdicts: after "so", with the option's text, "only", a reason, or after a colon.
    ("Blue is absent. So B is the correct answer.", "B"),
    ("B (red) is the correct answer. Blue was a distractor.", "B"),
    ("B is the only correct answer. A blue car might look similar.", "B"),
    ("B is the correct answer because the car is red. A blue car might look similar.", "B"),
    ("Conclusion: B is correct. It might look blue at first.", "B"),
    ("B is the correct answer for a sunny day. It might look blue at first.", None),  # a verdict ends its sentence
    # Headings, clause breaks, bracketed option lists, contradicted letters.
    ("## Final Answer\nB. Blue is absent.", "B"), ("**Answer**\nB. Blue is absent.", "B"),
    ("The car is red - not blue.", "B"), ("Blue is wrong: the car is red.", "B"),
    ("(A) blue\n(B) red\n(C) green\nThe car is red.", "B"),
    ("(A)\nC is correct.", None), ("A.\nC is correct.", None), ("A. C is correct.", None),
    ("B.\nB is correct.", "B"),
    ("The answer is B instead of A.", "B"),
])
def test_markers_verdicts_refusals_and_rejections_each_decide(reply: str, choice: str | None) -> None:
    assert extract_choice(reply, OPTIONS) == choice


@pytest.mark.parametrize("marker", [
    "The answer is", "The correct answer here is", "The answer in this case is", "The answer, therefore, is",
    "The answer must be", "The answer is clearly", "Answer -", "Answer \u2014", "## Final Answer\n", "**Answer**\n"])
def test_every_marker_reads_a_short_answer_before_a_later_sentence(marker: str) -> None:
    assert parse_answer(f"{marker} 3 cubes. There were 4 cubes before one fell.").normalized == "3 cubes"
    said_again = parse_answer("The answer is 3. That answer is supported by the three cubes in the image.")
    assert said_again.normalized == "3"


@pytest.mark.parametrize("reply, normalized", [
    ("The answer is 3 cubes instead of 4 cubes.", "3 cubes"), ("The answer is 3 cubes and not 4.", "3 cubes"),
    # The rule that drops "D: incorrect." holds for an unmarked sentence's own line only.
    ("The answer is (B) not (A).", "b"), ("Answer: B) It might look orange.", "b"), ("B)\nIt is not blue.", "b"),
])
def test_reason_cuts_and_the_verdict_against_rule(reply: str, normalized: str) -> None:
    assert parse_answer(reply).normalized == normalized


def test_an_option_period_lets_its_sentence_go_on() -> None:
    """The option's own period ended the sentence, and "does not describe it" no longer rejected it."""
    skies = {"A": "The sky is cloudy.", "B": "The sky is clear.", "C": "It is night."}
    assert extract_choice("The sky is cloudy. does not describe it, since the sun shines.", skies) is None
    assert extract_choice("A A+", {"A": "A+", "B": "B+"}) == "A"


def test_a_marker_before_not_answers_when_no_other_marker_does() -> None:
    """"Answer: not visible" lost its marker with the rule that skips "The answer is not A" after an answer."""
    alone = parse_answer("Answer: not visible")
    assert (alone.normalized, alone.explicit) == ("not visible", True)
    assert parse_answer("The answer is 5. The answer is not 6 because it has five.").normalized == "5"


@pytest.mark.parametrize("reply, normalized", [
    ("Option B is correct.", "b"), ("(B) is the answer. (A) is a distractor.", "b"),
    ("A: incorrect.\nB: correct.\nD: incorrect.", ""), ("The answer is therefore B.", "b"),
    ("### Answer\nB", "b"), ("The answer is $\\boxed{\\text{B}}$.", "b"),
    ("The answer is B. The answer is not A because the image does not show blue.", "b"),
    ("The answer is red, not blue.", "red"), ("The answer is B rather than A.", "b"),
])
def test_curation_reads_the_same_conclusions(reply: str, normalized: str) -> None:
    assert parse_answer(reply).normalized == normalized
    steps = format_steps(COT_STEPS, ["Pick the colour.", "A car.", "It is not blue.", reply])
    assert candidate_answer(steps, extract(steps, "reasoning")).normalized == normalized


@pytest.mark.parametrize("reply, choice", [
    # A capital before a verb is a letter named ("A isn't right"), not the article.
    ("B\nA isn't right.", None), ("B\nA does not fit.", None), ("B\nA might fit.", None), ("B\nA will not fit.", None),
    # "A" before a number is the article; a capital after a quote, a hyphen or a backslash is part of a word.
    ("A 5 kg weight is red.", "B"), ("Grade 'A' students drive red cars.", "B"), ("Red. Model T-C.", "B"),
    ("It is red, \\C.", "B"), ("It\u2019s B.", "B"),
])
def test_which_capitals_name_options(reply: str, choice: str | None) -> None:
    assert extract_choice(reply, OPTIONS) == choice
