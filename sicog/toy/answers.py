"""How a toy question and its answer appear in records: multiple-choice options and four-step answers."""

from __future__ import annotations

import random

from sicog.data.prompts import COT_STEPS
from sicog.data.steps import format_steps
from sicog.eval.prompts import multiple_choice_prompt as eval_multiple_choice_prompt
from sicog.toy.questions import Question

LETTERS = "ABCD"


def multiple_choice(question: Question, rng: random.Random) -> tuple[list[str], str]:
    """Four shuffled options (the answer and three distractors, each as the short reply states it) and the
    answer's letter."""
    if not question.can_be_multiple_choice:
        raise ValueError(f"question type {question.kind!r} has too few distractors for multiple choice")
    values = [question.answer, *rng.sample(question.distractors, 3)]
    rng.shuffle(values)
    return [question.say(v) for v in values], LETTERS[values.index(question.answer)]


def multiple_choice_prompt(text: str, options: list[str]) -> str:
    """The question with its options lettered A, B, ... in the benchmark evaluator's format."""
    return eval_multiple_choice_prompt(text, dict(zip(LETTERS, options)))


def cot_answer(question: Question, rng: random.Random, letter: str | None = None) -> str:
    """The four-step answer: objective, visual facts, reasoning, and "The answer is X." (X: letter or answer)."""
    objective = rng.choice(("I need to {t}.", "The task is to {t}.")).format(t=question.task)
    reasoning = question.reasoning
    if letter is not None:
        reasoning += " " + rng.choice(("This is option {x}.", "That is option {x}.")).format(x=letter)
    conclusion = f"The answer is {question.answer if letter is None else letter}."
    return format_steps(COT_STEPS, [objective, question.evidence, reasoning, conclusion])
