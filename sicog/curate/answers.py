"""Final answers of reasoning candidates: find the answer phrase in CoT step 4 and normalise it.

Rules (documented in docs/curation.md):

- The answer phrase is the last ``\\boxed{X}`` or "answer is X" / "answer: X" / "answer would be X"
  in the text (cut at the end of its sentence and before ", because ..."); without one, the last
  sentence of the text.
- Normalisation: lower case; option letters "(B)", "B.", "B)", "B", "option B" -> "b" (whatever
  follows a parenthesised letter is dropped, so "(B) red" -> "b"); a leading "yes"/"no" -> "yes"/"no";
  number words zero..twenty -> digits, "1,000" -> "1000", "3.0" -> "3"; punctuation and the articles
  a/an/the removed; whitespace collapsed. Units are kept ("3 cubes" != "3").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PHRASE = re.compile(
    r"\banswer\b(?:\s+to\s+(?:the|this)\s+question)?\s*(?:is|would\s+be|should\s+be|will\s+be|[:=])"
    r"\s*:?\s*(?P<ans>[^\n]+)",
    re.IGNORECASE,
)
_BOXED = re.compile(r"\\boxed\{(?P<ans>[^{}]*)\}")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_REASON_CLAUSE = re.compile(r",\s+(?:because|since|as|which|so)\b.*$", re.IGNORECASE | re.DOTALL)
_SENTENCES = re.compile(r"(?<=[.!?])\s+")

_OPTION = re.compile(
    r"^(?:(?:option|choice)\s*\(?(?P<a>[a-h])\)?(?![a-z])"
    r"|\((?P<b>[a-h])\)"
    r"|(?P<c>[a-h])[.):](?:\s|$)"
    r"|(?P<d>[a-h])$)"
)
_YES_NO = re.compile(r"^(yes|no)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TRAILING_ZEROS = re.compile(r"(?<=\d)\.0+(?!\d)")
_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[^\W_]+")
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


@dataclass(frozen=True)
class Answer:
    """A candidate's answer: the phrase found, its normalised form, and whether a phrase marked it."""

    phrase: str
    normalized: str
    explicit: bool


def answer_phrase(text: str) -> tuple[str, bool]:
    """The final answer phrase of ``text`` and whether an explicit marker ("answer is", boxed) found it."""
    matches = [m for pattern in (_PHRASE, _BOXED) for m in pattern.finditer(text)]
    if matches:
        last = max(matches, key=lambda m: m.start())
        phrase = last.group("ans")
        if last.re is _PHRASE:
            phrase = _SENTENCE_END.split(phrase, maxsplit=1)[0]
            phrase = _REASON_CLAUSE.sub("", phrase)
        return phrase.strip(), True
    sentences = [s for s in _SENTENCES.split(text.strip()) if s.strip()]
    return (sentences[-1].strip() if sentences else ""), False


def normalize_answer(phrase: str) -> str:
    """Normalise an answer phrase so that equal answers compare equal (rules in the module docstring)."""
    text = phrase.strip().lower()
    text = re.sub(r"[*`$\"'\u201c\u201d\u2018\u2019]", "", text).strip()
    text = re.sub(r"^\\text\{(.*)\}$", r"\1", text)
    option = _OPTION.match(text)
    if option:
        return next(group for group in option.groups() if group)
    yes_no = _YES_NO.match(text)
    if yes_no:
        return yes_no.group(1)
    text = _THOUSANDS.sub("", text)
    text = _TRAILING_ZEROS.sub("", text)
    tokens = [_NUMBER_WORDS.get(token, token) for token in _TOKEN.findall(text)]
    return " ".join(token for token in tokens if token not in _ARTICLES)


def parse_answer(text: str) -> Answer:
    """Find and normalise the final answer of a reasoning candidate's conclusion."""
    phrase, explicit = answer_phrase(text)
    return Answer(phrase, normalize_answer(phrase), explicit)
