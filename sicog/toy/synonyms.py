"""The toy language's synonyms as a table for open short-answer scoring (`sicog eval --mc-scoring open
--synonyms`): a reply may name a shape, size, background, place or relation in any of the language's
phrasings ("red disk" for "red circle", "at the top" for "in the top center", "left of" for "to the left of")."""

from __future__ import annotations

import os

from sicog.data.jsonl import write_json
from sicog.toy.language import BACKGROUND_WORDS, POSITION_PHRASES, RELATION_WORDS, SHAPE_WORDS, SIZE_WORDS
from sicog.toy.questions import PLACE_CLAIM


def _others(key: str, phrases: list[str]) -> list[str]:
    return [p for p in dict.fromkeys(phrases) if p != key]


def synonym_table() -> dict[str, list[str]]:
    """Canonical word or phrase -> its other phrasings in the toy language. The canonical phrase is the one the
    benchmark's right options use: the ground truth's word, a place as a short reply states it (``in the top
    left``, :data:`~sicog.toy.questions.PLACE_CLAIM`) and a relation in its first wording (``to the left of``)."""
    table = {key: _others(key, list(words)) for words_of in (SHAPE_WORDS, SIZE_WORDS, BACKGROUND_WORDS)
             for key, words in words_of.items()}
    for place, phrases in POSITION_PHRASES.items():
        # A place named alone ("upper left", as in "The answer is upper left.") ...
        table[place] = _others(place, [p.split(" ", 1)[1].removeprefix("the ") for p in phrases])
        # ... and with its preposition ("at the top" for "in the top center"), whichever the language uses.
        claim = PLACE_CLAIM.format(place)
        table[claim] = _others(claim, list(phrases))
    for words in RELATION_WORDS.values():
        table[words[0]] = _others(words[0], list(words))
    return {key: others for key, others in table.items() if others}


def write_synonyms(path: str | os.PathLike) -> int:
    """Write :func:`synonym_table` as JSON; return how many canonical phrases it has."""
    table = synonym_table()
    write_json(path, table)
    return len(table)
