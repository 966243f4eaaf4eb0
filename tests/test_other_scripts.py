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
                                    "Step {i}\uff09{h}\n", "Step\u00a0{i}: {h}\n", "Step\u3000{i}\uff1a{h}\n",
                                    "**Step {i}: {h}**\uff1a", "Step {i}: {h}\uff1a", "**Step {i}:**\u00a0{h}\n",
                                    "**Step {i}:**\u3000{h}\n"])
def test_a_full_width_separator_or_space_in_a_marker_is_read_as_the_ascii_one(marker):
    """With "Step 1：" the header and a stray "：" were in every step of the caption."""
    reply = "\n\n".join(marker.format(i=i, h=h) + b for i, (h, b) in enumerate(zip(COD_STEPS, BODIES), start=1))
    assert parse_cod_reply(reply)[0] == BODIES


@pytest.mark.parametrize("mark", ["\u3002", "\uff01", "\uff1f", "\uff1b"])
@pytest.mark.parametrize("marker", ["Step {i}\uff1a", "Step {i}: ", "Step\u00a0{i}: ", "Step\u3000{i}\uff1a"])
def test_steps_written_on_one_line_after_full_width_sentence_marks_are_steps(mark, marker):
    bodies = ["题目问图中的动物", "图中有一只猫", "猫是选项B"]
    steps = [marker.format(i=i) + body + mark for i, body in enumerate(bodies, start=1)]
    reply = "".join(steps) + marker.format(i=4) + "B"
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
                                   "**B**\r\n\r\nThe dog is in the background.",
                                   "B\nB is right: the dog is blurred.", "B\nI think the dog is blurred.",
                                   "B\nWashington D.C. is the capital, not a dog.", "B\nWashington D.C.",
                                   "B\nA city is shown, not a dog.", "B\nI chose it: no dog is there."])
def test_a_letter_alone_on_its_line_then_an_explanation_chooses_the_letter(reply):
    """The explanation's mention of another option's text chose that option (the article "A" and the pronoun "I"
    are words there, not options)."""
    assert extract_choice(reply, {"A": "dog", "B": "Washington D.C.", "D": "cat", "I": "ink"}) == "B"


def test_an_option_of_periods_alone_is_no_pattern_to_remove():
    assert extract_choice("A\nBut not the others.", {"A": "...", "B": "cat"}) == "A"


@pytest.mark.parametrize("reply", ["A\nB", "A\nB. cat", "A\n(B) cat", "A\nB\nC", "A\nC is correct.",
                                   "A\nOption C is correct.", "A\n3 cm\nB\n5 kg", "**A**\nA dog.\n\n**B**\nA cat.",
                                   "B\nA is incorrect because it is a dog.", "B\nNot A: the dog is blurred.",
                                   "A\nBoth B and C\nB\ndog\nC\nbird"])
def test_a_letter_on_its_line_above_another_options_letter_chooses_nothing(reply):
    """An option list, or a verdict on another option: not the first line's letter, nor the option whose text the
    explanation names ("B\nA is incorrect because it is a dog." chose A)."""
    assert extract_choice(reply, {"A": "dog", "B": "cat", "C": "bird"}) is None


@pytest.mark.parametrize(("reply", "choice"), [("a\nbird is shown.", "C"), ("A\nbird is shown.", "C"),
                                               ("I\ncannot tell.", None), ("A Cat.", "B"), ("B The dog.", None)])
def test_a_letter_whose_sentence_goes_on_is_read_as_text(reply, choice):
    """On the next line in lower case (the article "a", the pronoun "I"), or on its own line: the option named; a
    letter before another option's text contradicts itself ("B The dog.", as "C\nblue")."""
    assert extract_choice(reply, {"A": "dog", "B": "cat", "C": "bird", "I": "ink"}) == choice


@pytest.mark.parametrize("mark", ["\u3002", "\uff01", "\uff1f"])
def test_a_bold_sentence_with_a_full_width_end_is_the_steps_text_not_its_header(mark):
    assert split_steps(f"Step 4:\n**答案是B{mark}**\n---\n希望对你有帮助", COT_STEPS)[4] == f"**答案是B{mark}**"
    caption = f"Step 5: {COD_STEPS[4]}\n**图中有三只猫{mark}**\n它们是黑色的\u3002"
    assert extract(caption, "captions").text == f"**图中有三只猫{mark}**\n它们是黑色的\u3002"


def test_a_bold_statement_after_a_full_width_colon_is_the_steps_text():
    assert split_steps("Step 4:\n**Answer\uff1aB**\n---\n希望对你有帮助", COT_STEPS)[4] == "**Answer\uff1aB**"


@pytest.mark.parametrize("mark", ["\u3002", "\uff01", "\uff1f"])
def test_a_full_width_sentence_mark_ends_the_answer_phrase(mark):
    assert parse_answer(f"The answer is 三只猫{mark}因为图里有三只\u3002").phrase == "三只猫"


@pytest.mark.parametrize(("written", "same_as"), [("No\u3001it is not", "no"), ("5\u3001100", "5 100"),
                                                  ("1\u30012\u30013", "1 2 3"), ("No\u3002图中没有狗\u3002", "no")])
def test_the_ideographic_comma_and_full_stop_read_as_the_ascii_ones(written, same_as):
    assert normalize_answer(written) == same_as


@pytest.mark.parametrize("answer", ["\U0001f60a", "| --- |", "+", "\u2192"])
def test_an_answer_of_symbols_alone_is_none(answer):
    """A reply's closing emoji or table row is its last sentence: kept, it became every candidate's agreed answer."""
    assert normalize_answer(answer) == ""


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
        "import json, sys; from pathlib import Path;"
        "from sicog.train.checkpoints import checkpoint_stage, is_last_step, mark_complete;"
        "mark_complete(sys.argv[1], 2, 'stage2', run={'data_path': '/data/\\u8bad\\u7ec3.jsonl'});"
        "state = {'max_steps': 2, 'global_step': 2, 'log_history': [{'data': '/data/\\u8bad\\u7ec3'}]};"
        "Path(sys.argv[1], 'trainer_state.json').write_text(json.dumps(state, ensure_ascii=False), encoding='utf-8');"
        "print(checkpoint_stage(sys.argv[1]), is_last_step(sys.argv[1]))"
    )
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "stage2 True"
