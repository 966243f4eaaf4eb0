"""The part of a candidate that self-consistency compares: CoD step 5 (captions), CoT step 4 (reasoning).

The shared lenient parser (:func:`sicog.data.steps.final_step`) does the work; this module adds what
real model output needs on top of it: step markers written inline on one line, a leading
parenthetical ("Step 5 (Summary): ..."), and a paraphrased header line above the step's text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from sicog.data.answers import Answer, answer_line, parse_answer
from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.steps import FULL_WIDTH_SENTENCE_ENDS, break_inline_markers, final_step

Task = Literal["captions", "reasoning"]
TASKS: tuple[Task, ...] = get_args(Task)

# Prompt types that ask for step-by-step output; for the others ("default") the whole text is the unit.
STEP_PROMPT_TYPES = frozenset({"cod-default", "cod-conv", "cot-default"})

_LEADING_PAREN = re.compile(r"^\((?P<inside>[^()\n]{0,80})\)[ \t]*(?P<colon>[:.\-\u2013\u2014]?)[ \t]*")
_WORD = re.compile(r"[^\W\d_]{4,}")
# What ends a sentence, full-width marks included: a CJK sentence has no spaces, so the word count cannot tell it
# from a title.
_SENTENCE_MARKS = (".", "!", "?", *FULL_WIDTH_SENTENCE_ENDS)


@dataclass(frozen=True)
class Extraction:
    """The compared text of one candidate; ``fallback`` when its step was expected but not found."""

    text: str
    step_found: bool
    fallback: bool


def task_step(task: Task) -> tuple[int, Sequence[str]]:
    """The step number and step headers whose body is compared for ``task``."""
    if task == "captions":
        return 5, COD_STEPS
    if task == "reasoning":
        return 4, COT_STEPS
    raise ValueError(f"unknown curation task {task!r}; choose 'captions' or 'reasoning'")


def expects_steps(prompt_type: str | None) -> bool:
    """Whether a candidate generated with ``prompt_type`` should contain numbered steps (not recorded, None: yes)."""
    return prompt_type is None or prompt_type in STEP_PROMPT_TYPES


def extract(text: str, task: Task, *, expect_steps: bool = True) -> Extraction:
    """Extract the final step of ``text`` for ``task``; the whole text when the step is missing."""
    step, headers = task_step(task)
    body, found = final_step(text, step, headers)
    if not found:
        body, found = final_step(break_inline_markers(text), step, headers)
    if not found:
        # An empty candidate is no format problem: it is left out of the comparison (a zero embedding).
        return Extraction(text.strip(), False, expect_steps and bool(text.strip()))
    return Extraction(_drop_loose_header(body, headers[step - 1]), True, False)


def candidate_answer(text: str, extraction: Extraction) -> Answer:
    """A reasoning candidate's final answer, read where evaluation reads a reply's: a marker from step 4 on.

    ``extraction`` is the candidate's step 4 (:func:`extract`), read first; when it states no marked answer and a
    later step does ("Step 5: The answer is B."), that one counts, so that a candidate agrees with the majority
    when evaluation would score the same answer for it.
    """
    answer = parse_answer(extraction.text)
    if answer.explicit:
        return answer
    later = parse_answer(text)
    return later if later.explicit else answer


def _drop_loose_header(body: str, header: str) -> str:
    """Remove a leading parenthetical and a short header line that paraphrases the known header.

    A parenthetical counts as a header when it holds a word (not an option letter: "(B) red" is an answer)
    sharing a stem with the known header, or any word and a colon after it ("(Summary): ..."). A first line
    counts as a header only when it is short, has no sentence-final punctuation, states no answer ("Answer:
    3", "The answer is 3"), text follows it, and it shares a word stem with the known header (or is bold / a
    markdown heading), so that a one-word answer line such as "3" or "Yes" is never taken for a header.
    """
    header_stems = {w[:5].lower() for w in _WORD.findall(header)}

    def shares_stem(text: str) -> bool:
        return any(w[:5].lower() in header_stems for w in _WORD.findall(text))

    paren = _LEADING_PAREN.match(body)
    if paren and _WORD.search(paren["inside"]) and (paren["colon"] or shares_stem(paren["inside"])):
        body = body[paren.end():]
    body = body.strip()
    first, _, rest = body.partition("\n")
    line = first.strip()
    clean = line.strip("*#_ \t").strip()
    if not rest.strip() or not clean or len(clean.split()) > 8 or clean.endswith(_SENTENCE_MARKS):
        return body
    stated, marked = answer_line(clean)
    if marked and stated.strip("*#_ \t"):
        return body
    styled = line.startswith(("#", "**")) or line.endswith("**")
    return rest.strip() if shares_stem(clean) or styled else body
