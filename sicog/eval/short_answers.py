"""Open short answers: a multiple-choice question asked without its options, the reply scored against the
right option's text.

The reply's answer is read by the project's answer rules (:mod:`sicog.data.answers`: the text after "the
answer is", else CoT step 4, else the last sentence of the reply) and normalised as every short answer is
(case, punctuation, the articles a/an/the, number words, "grey"); the right option's text is normalised
the same way, and the two must then be equal. A benchmark whose answers can be worded in several ways
brings a synonym table: a JSON object from a canonical phrase to its other phrasings,

    {"circle": ["disk"], "top left": ["upper left", "top left corner"]}

Every listed phrase, as a whole-word run inside a normalised answer, is replaced by its canonical phrase
(the longest phrase first, in one pass, so "top left" is not read as "top" followed by "left").
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

from sicog.data.answers import normalize_answer, parse_answer
from sicog.data.jsonl import RecordError, read_text
from sicog.eval.tsv import is_missing, row_options


def load_synonyms(path: str | os.PathLike) -> dict[str, str]:
    """A synonym table file read as normalised phrase -> normalised canonical phrase (each canonical phrase
    maps to itself). Raises :class:`RecordError` naming the file and the entry for a table that is not a
    JSON object of lists of phrases, an empty phrase, or a phrase listed under two canonical phrases."""
    try:
        table = json.loads(read_text(path))
    except OSError as err:
        raise RecordError(f"cannot read the synonym table: {err.strerror or err}", path=path) from None
    except json.JSONDecodeError as err:
        raise RecordError(f"not valid JSON: {err.msg} (column {err.colno})", path=path, line=err.lineno) from None
    if not isinstance(table, dict):
        raise RecordError("expected a JSON object: canonical phrase -> list of other phrasings", path=path)
    phrases: dict[str, str] = {}
    for canonical, others in table.items():
        if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
            raise RecordError("expected a list of phrases", path=path, field=canonical)
        target = normalize_answer(canonical)
        for phrase in (canonical, *others):
            key = normalize_answer(phrase)
            if not key:
                raise RecordError(f"phrase {phrase!r} is empty once normalised", path=path, field=canonical)
            if phrases.setdefault(key, target) != target:
                raise RecordError(f"phrase {phrase!r} is listed under both {phrases[key]!r} and {target!r}",
                                  path=path, field=canonical)
    return phrases


class ShortAnswers:
    """Reads replies and right answers of open short-answer scoring into comparable canonical phrases."""

    def __init__(self, synonyms: Mapping[str, str] | None = None) -> None:
        self.synonyms = dict(synonyms or {})
        # Longest first: at each position the longest listed phrase wins.
        alternation = "|".join(re.escape(p) for p in sorted(self.synonyms, key=lambda p: (-len(p), p)))
        self._pattern = re.compile(rf"(?<!\S)(?:{alternation})(?!\S)") if alternation else None

    def canonical(self, text: str) -> str:
        """``text`` normalised, each listed phrase replaced by its canonical phrase."""
        normal = normalize_answer(text)
        if self._pattern is None:
            return normal
        return self._pattern.sub(lambda m: self.synonyms[m.group(0)], normal)

    def reply(self, prediction: str) -> str | None:
        """The canonical answer of a reply, or None when it gives none."""
        return self.canonical(parse_answer(prediction).phrase) or None

    def truth(self, row: Mapping[str, str]) -> str | None:
        """The canonical text of the row's right option, or None when the row has no answer (or one that is
        not an option: such a row is reported as an error, not scored)."""
        answer = row.get("answer")
        text = None if is_missing(answer) else row_options(dict(row)).get(answer.strip())
        return None if text is None else self.canonical(text)
