"""Replies in Chinese and other scripts read as their English counterparts do: step markers, answers, answer
normalisation and curation's header check (each case here was misread before)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sicog.annotate.cod import parse_cod_reply
from sicog.curate.extract import extract
from sicog.data.answers import extract_choice, extract_yes_no, normalize_answer, parse_answer
from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.steps import split_steps

BODIES = ["图中有一只猫。", "猫是黑色的，短毛。", "猫在桌子的左边。", "背景是一面白墙。",
          "一只黑猫坐在白墙前的桌子左边。"]
OPTIONS = {"A": "狗", "B": "猫", "C": "鸟"}


@pytest.mark.parametrize("marker", ["Step {i}\uff1a{h}\n", "**Step {i}**\uff1a{h}\n", "Step {i}\uff0e{h}\n",
                                    "Step\u00a0{i}: {h}\n", "Step\u3000{i}\uff1a{h}\n"])
def test_a_full_width_separator_or_space_in_a_marker_is_read_as_the_ascii_one(marker):
    """With "Step 1：" the header and a stray "：" were in every step of the caption."""
    reply = "\n\n".join(marker.format(i=i, h=h) + b for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1))
    assert parse_cod_reply(reply)[0] == BODIES


def test_steps_written_on_one_line_after_full_width_sentence_marks_are_steps():
    reply = "Step 1: 题目问图中的动物。Step 2: 图中有一只猫。Step 3: 猫是选项B。Step 4: B"
    assert extract_choice(reply, OPTIONS) == "B"
    assert extract(reply, "reasoning").step_found
    assert parse_answer(reply).normalized == "b"


@pytest.mark.parametrize("reply", ["B\u3002", "**B**\u3002", "The answer is B\u3002", "\uff08B\uff09",
                                   "Step 4:\n**B\u3002**\n---\n希望对你有帮助", "B\u3002因为图中是猫\u3002"])
def test_an_option_letter_ended_by_an_ideographic_full_stop_is_chosen(reply):
    assert extract_choice(reply, OPTIONS) == "B"


def test_yes_or_no_ended_by_an_ideographic_full_stop():
    assert extract_yes_no("Yes\u3002") == "yes" and extract_yes_no("The answer is no\u3002") == "no"


@pytest.mark.parametrize("reply", ["B\nThe dog in the background is blurred.", "B\n\nExplanation: it is not a dog.",
                                   "**B**\r\n\r\nThe dog is in the background."])
def test_a_letter_alone_on_its_line_then_an_explanation_chooses_the_letter(reply):
    """The explanation's mention of another option's text chose that option."""
    assert extract_choice(reply, {"A": "dog", "B": "cat"}) == "B"


@pytest.mark.parametrize("reply", ["A\nB", "A\nB. cat", "A\n(B) cat", "A\nB\nC", "A\nC is correct.",
                                   "A\nOption C is correct.", "A\n3 cm\nB\n5 kg", "**A**\nA dog.\n\n**B**\nA cat.",
                                   "a\nbird is shown.", "A\nbird is shown.", "I\ncannot tell."])
def test_a_letter_on_its_line_that_another_option_or_the_sentence_follows_is_read_as_before(reply):
    """Another option's letter on the lines after it, or a sentence going on in lower case: not read as that
    letter alone (these chose nothing, or the option named, before a lone letter's line counted)."""
    options = {"A": "dog", "B": "cat", "C": "bird", "I": "ink"}
    assert extract_choice(reply, options) != reply[0].upper()


def test_a_bold_sentence_with_a_full_width_end_is_the_steps_text_not_its_header():
    assert split_steps("Step 4:\n**答案是B\u3002**\n---\n希望对你有帮助", COT_STEPS)[4] == "**答案是B\u3002**"
    caption = "Step 5: Compile detailed description\n**图中有三只猫\u3002**\n它们是黑色的\u3002"
    assert extract(caption, "captions").text == "**图中有三只猫\u3002**\n它们是黑色的\u3002"


def test_a_full_width_sentence_mark_ends_the_answer_phrase():
    assert parse_answer("The answer is 三只猫\u3002因为图里有三只\u3002").phrase == "三只猫"


@pytest.mark.parametrize(("word", "same_as"), [("\u062b\u064e\u0644\u0627\u062b\u064e\u0629", None),
                                              ("\u0915\u093e\u092e", None), ("cafe\u0301", "caf\u00e9")])
def test_words_keep_their_combining_marks(word, same_as):
    """They were split at each mark ("काम" -> "क म")."""
    assert normalize_answer(word) == (same_as or word)
    assert normalize_answer(f"The {word}.") == normalize_answer(same_as or word)


@pytest.mark.slow
def test_a_checkpoint_marker_naming_non_ascii_paths_reads_back_under_an_ascii_locale(tmp_path):
    """The marker is written as UTF-8 and was read in the locale's encoding: under a C locale without UTF-8 mode the
    checkpoint counted as one from an older SICOG, and resuming it was refused."""
    code = (
        "import sys; from sicog.train.checkpoints import mark_complete, checkpoint_stage;"
        "mark_complete(sys.argv[1], 2, 'stage2', run={'data_path': '/data/\\u8bad\\u7ec3.jsonl'});"
        "print(checkpoint_stage(sys.argv[1]))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "stage2"
