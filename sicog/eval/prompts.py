"""Benchmark prompts in VLMEvalKit's LLaVA manner, directly or step by step.

Multiple choice: the hint (if any) and the question, one "A. text" line per option, then "Answer
with the option's letter from the given choices directly." (the Chinese instruction for Chinese
questions, as VLMEvalKit does for MMBench-CN). Yes/no, and a multiple-choice question asked without
its options (open short answers): the question and "Answer the question using a single word or phrase."
(LLaVA-1.5's POPE prompt, and how the toy world's instruction data asks its short-answer questions).
Open questions (no options, answers that are not yes or no; only through VLMEvalKit): the hint and the
question as written. The ``cot`` style asks the same text for a step-by-step answer the way the
structured-CoT training data asks its questions (:func:`sicog.data.prompts.step_by_step_question`): the
short-answer line, where the text has one, is replaced by SICOG's step-by-step request; otherwise (the
multiple-choice instruction, an open question) the request is appended after a space.
"""

from __future__ import annotations

import re

from sicog.data.prompts import SHORT_ANSWER, reasoning_prompt
from sicog.eval.tsv import MULTIPLE_CHOICE, is_missing, row_options

PROMPT_STYLES = ("direct", "cot")
DEFAULT_PROMPT_STYLE = "direct"
# How a multiple-choice answer is read: from the generated reply, by the options' likelihood, or asked open.
MC_SCORING = ("generate", "likelihood", "open")
DEFAULT_MC_SCORING = "generate"
# `sicog eval`'s reply budget per style: enough for a letter or "yes" with a few words around it, and for a
# structured chain of thought.
DEFAULT_MAX_NEW_TOKENS = {"direct": 64, "cot": 1024}
# The framework adapters' (VLMEvalKit, lmms-eval) budget where a benchmark sets none: their open questions too.
FRAMEWORK_MAX_NEW_TOKENS = 1024
# A benchmark kind beside tsv's MULTIPLE_CHOICE and YES_NO: questions answered in the model's own words.
OPEN_QUESTION = "open"
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
MC_INSTRUCTION_CN = "请直接回答选项字母。"
_CJK = re.compile(r"[\u4e00-\u9fff]")


def _has_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def multiple_choice_prompt(question: str, options: dict[str, str], hint: str | None = None) -> str:
    """Hint, question, one "X. option" line per option, and the answer-with-a-letter instruction."""
    lines = [hint.strip()] if hint and hint.strip() else []
    lines.append(question.strip())
    lines += [f"{letter}. {text.strip()}" for letter, text in options.items()]
    text = "\n".join(lines)
    return f"{text}\n{MC_INSTRUCTION_CN if _has_chinese(text) else MC_INSTRUCTION}"


def yes_no_prompt(question: str) -> str:
    """The question and the short-answer instruction."""
    return f"{question.strip()}\n{SHORT_ANSWER}"


def _styled(text: str, style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose from {', '.join(PROMPT_STYLES)}")
    return reasoning_prompt("cot-default", text) if style == "cot" else text


def hinted_question(row: dict[str, str]) -> str:
    """The row's hint (if any) and question, as written."""
    hint = None if is_missing(row.get("hint")) else row["hint"]
    return row["question"] if hint is None else f"{hint.strip()}\n{row['question']}"


def short_answer_prompt(row: dict[str, str], style: str = DEFAULT_PROMPT_STYLE) -> str:
    """Hint, question and the short-answer instruction, without options (a yes/no row, a multiple-choice row
    scored by option likelihood or asked as an open question)."""
    return _styled(yes_no_prompt(hinted_question(row)), style)


def build_prompt(row: dict[str, str], kind: str, style: str = DEFAULT_PROMPT_STYLE) -> str:
    """The user text for one benchmark row (without ``<image>``)."""
    if kind == MULTIPLE_CHOICE:
        hint = None if is_missing(row.get("hint")) else row["hint"]
        return _styled(multiple_choice_prompt(row["question"], row_options(row), hint), style)
    if kind == OPEN_QUESTION:
        return _styled(hinted_question(row).strip(), style)
    return short_answer_prompt(row, style)
