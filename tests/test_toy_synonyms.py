"""Open short answers in the toy language: every phrasing the language has for a place or a relation scores
right when it names the right one, read through the synonym table the cycle's `open_synonyms` step writes."""

from __future__ import annotations

import random

import pytest

from sicog.eval.short_answers import ShortAnswers, load_synonyms
from sicog.toy.language import POSITION_PHRASES, RELATION_WORDS, SHAPE_WORDS
from sicog.toy.questions import position_of, relation_lookup
from sicog.toy.synonyms import synonym_table, write_synonyms
from sicog.toy.world import Scene, SceneObject


@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> ShortAnswers:
    path = tmp_path_factory.mktemp("synonyms") / "synonyms.json"
    write_synonyms(path)
    return ShortAnswers(load_synonyms(path))  # as `sicog eval --mc-scoring open --synonyms` reads it


@pytest.mark.parametrize("cell", [(row, col) for row in range(3) for col in range(3)])
def test_every_place_phrasing_is_right_for_its_place_only(scorer, cell) -> None:
    obj = SceneObject("circle", "red", "large", *cell)
    question = position_of(Scene(96, 96, "white", (obj,)), random.Random(0))
    truth = scorer.canonical(question.reply)  # the right option: "The red circle is in the {place}."
    for place, phrases in POSITION_PHRASES.items():
        for phrase in phrases:
            for shape in SHAPE_WORDS["circle"]:
                reply = scorer.reply(f"The red {shape} is {phrase}.")
                assert (reply == truth) is (place == obj.position), (phrase, reply, truth)


def _relation_question(relation: str):
    """A relation_lookup question about ``relation`` (the blue diamond is its answer, the red square the anchor)."""
    cells = {"left of": ((1, 0), (1, 2)), "right of": ((1, 2), (1, 0)), "above": ((0, 1), (2, 1)),
             "below": ((2, 1), (0, 1))}[relation]
    scene = Scene(96, 96, "white", (SceneObject("diamond", "blue", "small", *cells[0]),
                                    SceneObject("square", "red", "small", *cells[1])))
    words = RELATION_WORDS[relation][0]
    for seed in range(100):
        question = relation_lookup(scene, random.Random(seed))
        if question.text == f"Which object is {words} the red square?":
            return question
    raise AssertionError(f"no question asks what is {relation} the red square")


@pytest.mark.parametrize("relation", list(RELATION_WORDS))
def test_every_relation_phrasing_is_right_for_its_relation_only(scorer, relation) -> None:
    truth = scorer.canonical(_relation_question(relation).reply)  # "To the left of the red square is the blue ..."
    for other, phrasings in RELATION_WORDS.items():
        for words in phrasings:
            reply = scorer.reply(f"{words[:1].upper() + words[1:]} the red square is the blue rhombus.")
            assert (reply == truth) is (other == relation), (words, reply, truth)


def test_a_place_named_alone_keeps_its_synonyms() -> None:
    # "The answer is upper left." and the corner question ("The corner with the dot is the top left.") name a
    # place without its preposition; the LM's reading check counts an option's wordings by this table too.
    table = synonym_table()
    assert table["top left"] == ["upper left", "top left corner"] and table["top center"] == ["top middle", "top"]
    assert table["in the top center"] == ["at the top center", "in the top middle", "at the top"]
