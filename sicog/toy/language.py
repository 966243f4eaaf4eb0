"""The toy language: several phrasings of every fact, so that correct samples differ in wording only.

Every function takes a ``random.Random`` that picks the phrasing and the order of objects; with
``rng=None`` it gives the canonical text (first phrasing, reading order), used as ground truth.
The phrase tables here are also what :mod:`sicog.toy.score` parses, so every sentence written here
can be read back: an object is always named by its colour and shape (optionally with a size word in
front), and its size, position and label follow it in the same clause.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from sicog.toy.world import Scene, SceneObject

T = TypeVar("T")

SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny"),
    "medium": ("medium-sized", "mid-sized"),
    "large": ("large", "big"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
}
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "white": ("white",),
    "light gray": ("light gray", "light grey"),
    "dark gray": ("dark gray", "dark grey"),
    "black": ("black",),
}
# Where an object is, as a phrase with its preposition; several phrasings per grid cell.
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "in the upper left", "in the top left corner", "at the top left"),
    "top center": ("at the top center", "in the top middle", "at the top"),
    "top right": ("in the top right", "in the upper right", "in the top right corner", "at the top right"),
    "middle left": ("in the middle left", "on the left side", "at the left edge"),
    "center": ("in the center", "at the center", "in the middle"),
    "middle right": ("in the middle right", "on the right side", "at the right edge"),
    "bottom left": ("in the bottom left", "in the lower left", "in the bottom left corner", "at the bottom left"),
    "bottom center": ("at the bottom center", "in the bottom middle", "at the bottom"),
    "bottom right": ("in the bottom right", "in the lower right", "in the bottom right corner", "at the bottom right"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above", "higher than"),
    "below": ("below", "beneath"),
}
# Label phrases after an object's name ("{n}" is the digit) and the words for "no label".
LABEL_AFTER_NAME = ("labeled {n}", "with the number {n}", "marked with a {n}", "bearing the digit {n}")
LABEL_PREDICATES = ("carries the number {n}", "has a {n} on it", "shows the digit {n}")
NO_LABEL_PREDICATES = ("has no number", "carries no digit")
# CoD step 4 for an image without a dot or a border: each also says that there is no dot.
NO_PERIPHERAL = ("There is no dot and no border.", "Nothing else is in the image.")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def pick(rng: random.Random | None, options: Sequence[T]) -> T:
    """A random option, or the first (canonical) one when ``rng`` is None."""
    return options[0] if rng is None else rng.choice(options)


def ordered(rng: random.Random | None, objects: Sequence[SceneObject]) -> list[SceneObject]:
    """Objects in a random order, or in reading order (row by row) when ``rng`` is None."""
    if rng is None:
        return sorted(objects, key=lambda o: (o.row, o.col))
    return rng.sample(list(objects), len(objects))


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def capitalize(text: str) -> str:
    """First letter upper-case, the rest untouched."""
    return text[:1].upper() + text[1:]


def join_list(items: Sequence[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def number_word(n: int) -> str:
    """"one" ... "ten", digits beyond."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def name(obj: SceneObject, rng: random.Random | None, size: bool = False) -> str:
    """The object's noun phrase without article: "red circle" or, with ``size``, "large red circle"."""
    noun = f"{obj.color} {pick(rng, SHAPE_WORDS[obj.shape])}"
    return f"{pick(rng, SIZE_WORDS[obj.size])} {noun}" if size else noun


def place(obj: SceneObject, rng: random.Random | None) -> str:
    """Where the object is: "in the top left", "at the center", ..."""
    return pick(rng, POSITION_PHRASES[obj.position])


def background(scene: Scene, rng: random.Random | None) -> str:
    """The background colour as words."""
    return pick(rng, BACKGROUND_WORDS[scene.background])


def label_after_name(obj: SceneObject, rng: random.Random | None) -> str:
    """" labeled 3" for a labelled object, "" otherwise."""
    return "" if obj.label is None else " " + pick(rng, LABEL_AFTER_NAME).format(n=obj.label)


def object_list(scene: Scene, rng: random.Random | None) -> str:
    """All objects by colour and shape: "a red circle, a blue square and a green triangle"."""
    return join_list([with_article(name(o, rng)) for o in ordered(rng, scene.objects)])


def count_phrase(scene: Scene, rng: random.Random | None) -> str:
    """"three shapes", "one object", ..."""
    n = len(scene.objects)
    noun = pick(rng, ("object", "shape"))
    return f"{number_word(n)} {noun}" + ("s" if n != 1 else "")


def full_object(obj: SceneObject, rng: random.Random | None) -> str:
    """Everything about one object in one phrase: "a large red circle labeled 3 in the top left"."""
    return f"{with_article(name(obj, rng, size=True))}{label_after_name(obj, rng)} {place(obj, rng)}"


def salient_content(scene: Scene, rng: random.Random | None) -> str:
    """CoD step 1: what is there, by colour and shape, on which background."""
    count, bg, objects = count_phrase(scene, rng), background(scene, rng), object_list(scene, rng)
    templates = (
        "{Count} on a {bg} background: {objects}.",
        "A {bg} background with {objects}.",
        "{Objects} on a {bg} background.",
    )
    return pick(rng, templates).format(Count=capitalize(count), bg=bg, objects=objects, Objects=capitalize(objects))


def attributes(scene: Scene, rng: random.Random | None) -> str:
    """CoD step 2: size and label of every object."""
    sentences = []
    for obj in ordered(rng, scene.objects):
        if obj.label is None:
            mention_none = rng is not None and rng.random() < 0.15
            tail = " and " + pick(rng, NO_LABEL_PREDICATES) if mention_none else ""
            sentences.append(f"The {name(obj, rng)} is {pick(rng, SIZE_WORDS[obj.size])}{tail}.")
        elif pick(rng, (True, False)):
            size, label = pick(rng, SIZE_WORDS[obj.size]), label_after_name(obj, rng)
            sentences.append(f"The {name(obj, rng)} is {size},{label}.")
        else:
            predicate = pick(rng, LABEL_PREDICATES).format(n=obj.label)
            sentences.append(f"The {name(obj, rng, size=True)} {predicate}.")
    return " ".join(sentences)


def relation_sentence(scene: Scene, rng: random.Random | None) -> str:
    """One true relation between two objects, or "" when there is only one object."""
    relations = scene.relations()
    if not relations:
        return ""
    subject, relation, other = pick(rng, relations)
    a, b = scene.find(subject), scene.find(other)
    return f"The {name(a, rng)} is {pick(rng, RELATION_WORDS[relation])} the {name(b, rng)}."


def layout(scene: Scene, rng: random.Random | None) -> str:
    """CoD step 3: where each object is ("the blue square [is] at the center"), sometimes one relation."""
    objects = ordered(rng, scene.objects)
    clauses = [f"the {name(o, rng)}{' is' if i == 0 else ''} {place(o, rng)}" for i, o in enumerate(objects)]
    text = capitalize(join_list(clauses)) + "."
    if len(objects) > 1 and (rng is None or rng.random() < 0.3):
        text += " " + relation_sentence(scene, rng)
    return text


def peripheral(scene: Scene, rng: random.Random | None) -> str:
    """CoD step 4: the corner dot and the border, or that the margins are empty."""
    sentences = []
    if scene.mark:
        templates = ("A small {c} dot sits in the {k} corner.", "The {k} corner holds a small {c} dot.")
        sentences.append(pick(rng, templates).format(c=scene.mark.color, k=scene.mark.corner))
    if scene.border:
        templates = ("The image has a thin {c} border.", "A thin {c} border frames the image.")
        sentences.append(pick(rng, templates).format(c=scene.border))
    if not sentences:
        sentences.append(pick(rng, NO_PERIPHERAL))
    return " ".join(sentences)


def detailed_description(scene: Scene, rng: random.Random | None) -> str:
    """CoD step 5 (and the "detailed" set): one cohesive description of everything."""
    objects = join_list([full_object(o, rng) for o in ordered(rng, scene.objects)])
    count, bg = count_phrase(scene, rng), background(scene, rng)
    templates = (
        "{Count} on a {bg} background: {objects}.",
        "On a {bg} background, {objects}.",
        "The image shows {objects} on a {bg} background.",
    )
    text = pick(rng, templates).format(Count=capitalize(count), bg=bg, objects=objects)
    if scene.mark or scene.border:
        text += " " + peripheral(scene, rng)
    return text


def cod_bodies(scene: Scene, rng: random.Random | None) -> list[str]:
    """The five Chain-of-Description step bodies (format them with ``format_steps(COD_STEPS, ...)``)."""
    return [
        salient_content(scene, rng),
        attributes(scene, rng),
        layout(scene, rng),
        peripheral(scene, rng),
        detailed_description(scene, rng),
    ]


def web_caption(scene: Scene, rng: random.Random) -> str:
    """A short, partial "web" caption: names some of the objects (never all of several), rarely their sizes."""
    k = rng.randint(1, max(1, min(2, len(scene.objects) - 1)))
    named = [with_article(name(o, rng, size=rng.random() < 0.3)) for o in rng.sample(list(scene.objects), k)]
    templates = (
        "{objects}.",
        "{objects} on a {bg} background.",
        "A picture of {objects}.",
        "Shapes, including {objects}.",
        "Simple shapes with {objects}.",
    )
    text = rng.choice(templates).format(objects=join_list(named), bg=background(scene, rng))
    return capitalize(text)


def brief_description(scene: Scene, rng: random.Random) -> str:
    """A one-sentence description for instruction tuning: every object by colour, shape and place."""
    parts = [f"{with_article(name(o, rng))} {place(o, rng)}" for o in ordered(rng, scene.objects)]
    return capitalize(join_list(parts)) + f" on a {background(scene, rng)} background."


def vocabulary() -> list[str]:
    """Every word and phrase of the language once, so a tokenizer trained on a small world still sees them all."""
    tables = (SIZE_WORDS, SHAPE_WORDS, BACKGROUND_WORDS, POSITION_PHRASES, RELATION_WORDS)
    phrases = [p for table in tables for options in table.values() for p in options]
    phrases += list(SHAPE_PLURALS.values()) + list(NUMBER_WORDS)
    phrases += [p.format(n=n) for p in LABEL_AFTER_NAME + LABEL_PREDICATES for n in range(10)]
    phrases += list(NO_LABEL_PREDICATES)
    return phrases
