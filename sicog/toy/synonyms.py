"""The toy language's synonyms as a table for open short-answer scoring (`sicog eval --mc-scoring open
--synonyms`): a reply may name a shape, size, background or place in any of the language's phrasings
("red disk" for "red circle", "upper left" for "top left")."""

from __future__ import annotations

import os

from sicog.data.jsonl import write_json
from sicog.toy.language import BACKGROUND_WORDS, POSITION_PHRASES, SHAPE_WORDS, SIZE_WORDS


def _others(key: str, phrases: list[str]) -> list[str]:
    return [p for p in dict.fromkeys(phrases) if p != key]


def synonym_table() -> dict[str, list[str]]:
    """Canonical word or place (the ground truth's) -> its other phrasings in the toy language."""
    table = {key: _others(key, list(words)) for words_of in (SHAPE_WORDS, SIZE_WORDS, BACKGROUND_WORDS)
             for key, words in words_of.items()}
    # A place is said with a preposition ("in the upper left"); a short answer names it alone ("upper left").
    for place, phrases in POSITION_PHRASES.items():
        table[place] = _others(place, [p.split(" ", 1)[1].removeprefix("the ") for p in phrases])
    return {key: others for key, others in table.items() if others}


def write_synonyms(path: str | os.PathLike) -> int:
    """Write :func:`synonym_table` as JSON; return how many canonical phrases it has."""
    table = synonym_table()
    write_json(path, table)
    return len(table)
