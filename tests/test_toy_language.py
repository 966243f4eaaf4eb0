"""The toy language: every phrasing reads back to the truth; questions have the right answers."""

from __future__ import annotations

import random
import re

import pytest

from sicog.data.prompts import COD_STEPS, COT_STEPS
from sicog.data.steps import format_steps, split_steps
from sicog.eval.prompts import MC_INSTRUCTION
from sicog.toy import language
from sicog.toy.answers import LETTERS, cot_answer, multiple_choice, multiple_choice_prompt
from sicog.toy.questions import CATEGORIES, MULTIPLE_CHOICE_ONLY, OPEN_ONLY, QUESTION_TYPES
from sicog.toy.score import parse_caption, score_caption
from sicog.toy.world import POSITIONS, RELATIONS, Scene, SceneObject, holds, sample_scene


def _truth(scene: Scene) -> dict:
    return scene.ground_truth()


def _scenes(n: int, seed: int = 0) -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng) for _ in range(n)]


def _assert_faithful(text: str, scene: Scene, complete: bool) -> None:
    score = score_caption(text, _truth(scene))
    assert score["hallucinated"] == 0 and (score["precision"] == 1.0 or score["mentioned"] == 0), text
    assert all(v in (None, 1.0) for v in score["attribute_accuracy"].values()), (text, score)
    assert score["background"] is not False and score["mark"] is not False, (text, score)
    if complete:
        assert score["recall"] == 1.0, text


def test_phrase_tables_cover_the_world() -> None:
    assert set(language.POSITION_PHRASES) == set(POSITIONS)
    assert set(language.RELATION_WORDS) == set(RELATIONS)


def test_every_generated_text_reads_back_to_the_truth() -> None:
    rng = random.Random(7)
    for scene in _scenes(300):
        bodies = language.cod_bodies(scene, rng)
        _assert_faithful(format_steps(COD_STEPS, bodies), scene, complete=True)
        for body in bodies:
            _assert_faithful(body, scene, complete=False)
        _assert_faithful(language.detailed_description(scene, rng), scene, complete=True)
        _assert_faithful(language.detailed_description(scene, None), scene, complete=True)
        _assert_faithful(language.brief_description(scene, rng), scene, complete=True)
        _assert_faithful(language.web_caption(scene, rng), scene, complete=len(scene.objects) == 1)


def test_detailed_description_states_every_attribute() -> None:
    rng = random.Random(3)
    for scene in _scenes(200, seed=4):
        score = score_caption(language.detailed_description(scene, rng), _truth(scene))
        n, labelled = len(scene.objects), sum(o.label is not None for o in scene.objects)
        assert score["attributes"]["size"]["stated"] == n and score["attributes"]["position"]["stated"] == n
        assert score["attributes"]["label"]["stated"] == labelled
        assert score["background"] is True
        if scene.mark:
            assert score["mark"] is True


@pytest.mark.parametrize("position", POSITIONS)
def test_every_position_phrase_parses(position: str) -> None:
    for phrase in language.POSITION_PHRASES[position]:
        parsed = parse_caption(f"The red circle is {phrase}. A big blue square {phrase} labeled 4.")
        assert parsed["objects"]["red circle"]["position"] == [position], phrase
        assert parsed["objects"]["blue square"] == {"size": ["large"], "position": [position], "label": [4]}


def test_every_size_shape_and_label_phrasing_parses() -> None:
    for size, words in language.SIZE_WORDS.items():
        for word in words:
            assert parse_caption(f"The {word} green diamond.")["objects"]["green diamond"]["size"] == [size]
            assert parse_caption(f"The green diamond is {word}.")["objects"]["green diamond"]["size"] == [size]
    for shape, words in language.SHAPE_WORDS.items():
        for word in words:
            assert f"orange {shape}" in parse_caption(f"An orange {word} at the top.")["objects"]
    for phrase in language.LABEL_AFTER_NAME:
        assert parse_caption(f"A red cross {phrase.format(n=7)}.")["objects"]["red cross"]["label"] == [7]
    for phrase in language.LABEL_PREDICATES:
        assert parse_caption(f"The red cross {phrase.format(n=5)}.")["objects"]["red cross"]["label"] == [5]
    for phrase in language.NO_LABEL_PREDICATES:
        assert parse_caption(f"The red cross is small and {phrase}.")["objects"]["red cross"]["label"] == [None]


def test_samples_differ_in_wording_but_agree_in_content() -> None:
    objects = (
        SceneObject("circle", "red", "large", 0, 0, 3),
        SceneObject("cross", "blue", "small", 1, 2),
        SceneObject("diamond", "green", "medium", 2, 1, 8),
    )
    scene = Scene(128, 96, "dark gray", objects)
    rng = random.Random(0)
    samples = [language.detailed_description(scene, rng) for _ in range(12)]
    assert len(set(samples)) >= 8
    contents = []
    for text in samples:
        facts = parse_caption(text)["objects"]
        contents.append({name: {k: sorted(map(str, v)) for k, v in f.items()} for name, f in facts.items()})
    assert all(c == contents[0] for c in contents)


def test_canonical_texts_are_fixed() -> None:
    scene = _scenes(1, seed=9)[0]
    assert language.detailed_description(scene, None) == language.detailed_description(scene, None)
    assert language.cod_bodies(scene, None) == language.cod_bodies(scene, None)


def _questions(n_scenes: int = 300):
    rng = random.Random(11)
    for scene in _scenes(n_scenes, seed=12):
        for kind, (category, generate) in QUESTION_TYPES.items():
            question = generate(scene, rng)
            if question is not None:
                yield scene, kind, category, question


def test_question_types_are_consistent() -> None:
    seen_kinds, seen_categories = set(), set()
    for _, kind, category, question in _questions():
        seen_kinds.add(kind)
        seen_categories.add(category)
        assert question.kind == kind and question.category == category
        assert question.answer not in question.distractors
        assert len(set(question.distractors)) == len(question.distractors)
        assert question.can_be_multiple_choice == (kind not in OPEN_ONLY), kind
    assert seen_kinds == set(QUESTION_TYPES) and seen_categories == set(CATEGORIES)
    assert MULTIPLE_CHOICE_ONLY.isdisjoint(OPEN_ONLY)


def test_answers_are_true_of_the_scene() -> None:
    for scene, kind, _, q in _questions():
        names = {o.name for o in scene.objects}
        if kind == "count_objects":
            assert q.answer == str(len(scene.objects))
        elif kind == "background_color":
            assert q.answer == scene.background
        elif kind == "which_present":
            assert q.answer in names and not names & set(q.distractors)
        elif kind == "label_of":
            obj = scene.find(re.search(r"on the (\w+ \w+)\?", q.text).group(1))
            assert q.answer == str(obj.label)
        elif kind == "position_of":
            obj = next(o for o in scene.objects if o.name in q.text)
            assert q.answer == obj.position
        elif kind == "relation_lookup":
            words, anchor = re.fullmatch(r"Which object is (.+) the (\w+ \w+)\?", q.text).groups()
            relation = next(r for r, w in language.RELATION_WORDS.items() if w[0] == words)
            hits = [o.name for o in scene.objects if o.name != anchor and holds(o, relation, scene.find(anchor))]
            assert hits == [q.answer]
        elif kind == "label_sum":
            assert q.answer == str(sum(o.label for o in scene.objects if o.label is not None))
        elif kind == "count_color":
            color = q.text.split()[2]
            assert q.answer == str(sum(o.color == color for o in scene.objects))


def test_replies_name_what_was_asked_right_before_the_answer() -> None:
    """Each short reply states the answer once, at its end, right after the object or quantity the question
    is about, so the reply's last words before the answer are the key to look it up by."""
    for scene, kind, _, q in _questions(100):
        if kind in ("relation_yes_no", "is_present"):
            assert q.reply == q.answer, "a yes or no is not restated"
            continue
        assert q.claim.count("{}") == 1 and q.reply == q.claim.replace("{}", q.answer) and q.reply.endswith(".")
        before = q.claim.split("{}")[0]
        if kind == "color_of_shape":
            obj = next(o for o in scene.objects if f"the {o.shape}?" in q.text)
            assert before == f"The {obj.shape} is " and q.answer == obj.color
        elif kind in ("size_of", "position_of", "label_of"):
            obj = next(o for o in scene.objects if f"the {o.name}" in q.text)
            assert before == {"size_of": f"The {obj.name} is ", "position_of": f"The {obj.name} is in the ",
                              "label_of": f"The number on the {obj.name} is "}[kind]
        else:
            assert before[:1].isupper() and before.endswith((" is ", " is the ", " be ", " shows the ")), (kind, before)


def test_multiple_choice_and_cot_formats() -> None:
    rng = random.Random(5)
    for _, _, _, question in _questions(60):
        answer = cot_answer(question, rng)
        steps = split_steps(answer, COT_STEPS)
        assert sorted(steps) == [1, 2, 3, 4] and steps[4] == f"The answer is {question.answer}."
        if not question.can_be_multiple_choice:
            with pytest.raises(ValueError, match="too few distractors"):
                multiple_choice(question, rng)
            continue
        options, letter = multiple_choice(question, rng)
        assert len(set(options)) == 4 and options[LETTERS.index(letter)] == question.reply
        assert all(o in {question.say(v) for v in (question.answer, *question.distractors)} for o in options)
        prompt = multiple_choice_prompt(question.text, options)
        assert prompt.splitlines() == [question.text, *(f"{k}. {o}" for k, o in zip(LETTERS, options)), MC_INSTRUCTION]
        assert split_steps(cot_answer(question, rng, letter), COT_STEPS)[4] == f"The answer is {letter}."
