"""Reading the answer out of a model's reply: multiple-choice letters, yes/no, short answers.

This is the project's one answer extractor (the built-in benchmark runner and the toy world's scorer
both use it). The final answer is the text after the last "answer is" / "answer:" marker, else the
body of structured-CoT step 4, else the whole reply. A multiple-choice answer is accepted as
"B", "(B)", "B.", "B) red", "Option B", "The answer is b", or the option's own text ("red", "The
colour is red."). Replies that name two options ("A or B", "B. blue" when blue is A) choose nothing.
"""

from __future__ import annotations

import re
from typing import Mapping

from sicog.data.prompts import COT_STEPS
from sicog.data.steps import final_step

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")

# "The answer is B", "Answer: B", "**Final answer:** (B)": what follows the last marker is the answer.
_ANSWER_MARKER = re.compile(r"\banswer\**\s*(?:is\b\s*:?|[:\uff1a])\**[ \t]*", re.IGNORECASE)
_LETTER = re.compile(
    r"(?P<word>(?:option|choice)\s+)?(?P<open>[(\[])?(?P<letter>[A-Za-z])(?P<close>[)\]])?"
    r"(?P<sep>[\s.:,;)]*)(?P<rest>.*)",
    re.IGNORECASE | re.DOTALL,
)
_BARE_LETTER = re.compile(r"(?:option\s+)?[(\[]?([A-Z])[)\]]?[.:]?", re.IGNORECASE)
_TRIM = " \t\n*\"'`"


def _final_span(text: str) -> tuple[str, bool]:
    """The final-answer text of a reply and whether an explicit answer marker introduced it."""
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        after = text[markers[-1].end() :]
        # "The answer is:\n\nB": the answer may sit on the next non-empty line.
        lines = [line for line in after.splitlines() if line.strip(_TRIM)]
        return (lines[0] if lines else ""), True
    body, _ = final_step(text, len(COT_STEPS), COT_STEPS)
    return body, False


def _clean(span: str) -> str:
    return span.strip().strip(_TRIM).rstrip(".").strip(_TRIM)


def extract_answer(text: str) -> str:
    """The final answer of a reply: after the last "answer is", else CoT step 4, else the whole reply."""
    return _clean(_final_span(text)[0])


def normalize_answer(text: str) -> str:
    """Lower case, no articles or trailing punctuation, number words as digits, "grey" as "gray"."""
    text = re.sub(r"[.!?,;:*\"'`]+$", "", text.strip().lower()).strip()
    text = re.sub(r"^(?:the|a|an)\s+", "", text)
    text = text.replace("grey", "gray")
    words = [str(NUMBER_WORDS.index(w)) if w in NUMBER_WORDS else w for w in text.split()]
    return " ".join(words)


def _usable_options(options: Mapping[str, object]) -> dict[str, str]:
    """Single upper-case letters with a non-empty text."""
    return {
        str(k): str(v).strip()
        for k, v in options.items()
        if len(str(k)) == 1 and str(k).isupper() and v is not None and str(v).strip()
    }


def _letter_choice(answer: str, options: dict[str, str], marked: bool) -> tuple[bool, str | None]:
    """Read ``answer`` as an option letter: ``(decided, letter)``; undecided answers are tried as text."""
    match = _LETTER.fullmatch(answer)
    if not match or match.group("letter").upper() not in options:
        return False, None
    letter, sep, rest = match.group("letter"), match.group("sep"), match.group("rest").strip()
    punctuated = any(c in sep for c in ".:,;)") or bool(match.group("close"))
    if rest and not sep:
        return False, None  # the letter starts a word ("Blue")
    if letter.islower():
        # A lone lower-case letter may be a word (the article "a"); it needs a mark around it.
        if not (marked or match.group("word") or match.group("open") or punctuated):
            return False, None
        letter = letter.upper()
    if not rest:
        return True, letter
    if not punctuated:
        return False, None  # "A red circle", "A or B": read as text, not as option A
    wanted = normalize_answer(rest)
    if wanted == normalize_answer(options[letter]):
        return True, letter
    other_text = any(normalize_answer(t) == wanted for k, t in options.items() if k != letter)
    other_letter = (m := _BARE_LETTER.fullmatch(rest)) is not None and m.group(1).upper() in options
    if other_text or other_letter:
        return True, None  # "B. blue" where blue is A, or "A, B": two options named
    return True, letter  # "B. The circle is red."


def _text_choice(answer: str, options: dict[str, str]) -> str | None:
    """The one option whose text the answer is, or else the one it mentions (whole words)."""
    wanted = normalize_answer(answer)
    exact = [k for k, v in options.items() if normalize_answer(v) == wanted]
    if exact:
        return exact[0] if len(exact) == 1 else None
    spans = {}
    for key, value in options.items():
        text = normalize_answer(value)
        if text:
            spans[key] = [m.span() for m in re.finditer(rf"(?<!\w){re.escape(text)}(?!\w)", wanted)]
    mentioned = [key for key, found in spans.items() if any(not _inside_other(span, key, spans) for span in found)]
    return mentioned[0] if len(mentioned) == 1 else None


def _inside_other(span: tuple[int, int], key: str, spans: dict[str, list[tuple[int, int]]]) -> bool:
    """Whether ``span`` lies within a longer mention of another option ("red" inside "dark red")."""
    start, end = span
    return any(
        other != key and s <= start and end <= e and e - s > end - start for other in spans for s, e in spans[other]
    )


def extract_choice(prediction: str, options: Mapping[str, object]) -> str | None:
    """The option letter a reply chose, or None when it chose none or several.

    ``options`` maps upper-case letters to option texts (empty or missing options are ignored).
    """
    usable = _usable_options(options)
    if not usable or not prediction:
        return None
    span, marked = _final_span(prediction)
    answer = _clean(span)
    if not answer:
        return None
    decided, letter = _letter_choice(answer, usable, marked)
    if decided:
        return letter
    return _text_choice(answer, usable)


def extract_yes_no(prediction: str) -> str | None:
    """"yes" or "no" as the reply's final answer says (any case), or None when it says neither or both."""
    words = re.findall(r"[a-z]+", extract_answer(prediction).lower())
    if words and words[0] in ("yes", "no"):
        return words[0]  # "No, there is no dog." / "Yes, there is a dog, but no cat."
    said = {"yes", "no"} & set(words)
    return said.pop() if len(said) == 1 else None


def answer_matches(prediction: str, answer: str) -> bool:
    """Whether a reply's final answer equals a short ground-truth answer (after normalisation)."""
    return normalize_answer(extract_answer(prediction)) == normalize_answer(answer)
