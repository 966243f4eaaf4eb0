"""Questions about a toy scene, with their answers and the facts a step-by-step answer cites.

Each question type belongs to one of MMStar's five categories. A generator returns None when the
scene cannot carry that question (no labelled object for a label question, say); callers then draw
another scene. ``distractors`` are wrong answers of the same kind; a question becomes multiple choice
only when it has at least three.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from sicog.toy.language import (
    RELATION_WORDS,
    SHAPE_PLURALS,
    SIZE_WORDS,
    join_list,
    number_word,
    object_list,
    place,
    with_article,
)
from sicog.toy.world import CORNERS, LAYOUTS, RELATIONS, SIZES, Layout, Scene, SceneObject, holds

# How a short reply states a place: "The red circle is in the {place}." (position_of's claim).
PLACE_CLAIM = "in the {}"

CATEGORIES = (
    "coarse perception",
    "fine-grained perception",
    "instance reasoning",
    "logical reasoning",
    "math",
)


@dataclass(frozen=True)
class Question:
    """One question about one scene, its short answer and the facts of a step-by-step answer."""

    kind: str
    category: str
    text: str
    answer: str
    distractors: tuple[str, ...]
    task: str  # what the question asks, as "count the objects" (CoT step 1)
    evidence: str  # the visual facts that matter (CoT step 2)
    reasoning: str  # how the answer follows from them (CoT step 3)
    # The short reply with "{}" for the answer: it names what was asked about right before the answer
    # ("The circle is {}."), so the reply's last words are the key a tiny model looks the answer up by.
    claim: str = "{}"

    def say(self, value: str) -> str:
        """``value`` (the answer or a distractor) as the short reply states it."""
        return self.claim.format(value)

    @property
    def reply(self) -> str:
        """The right short reply: the answer as the claim states it."""
        return self.say(self.answer)

    @property
    def can_be_multiple_choice(self) -> bool:
        """Whether there are enough distractors for four options."""
        return len(self.distractors) >= 3


Generator = Callable[[Scene, random.Random], "Question | None"]


def _numbers_near(n: int) -> tuple[str, ...]:
    return tuple(str(v) for v in range(max(0, n - 3), n + 4) if v != n)


def _other_counts(n: int) -> tuple[str, ...]:
    """Wrong counts of objects in one picture: every count from 0 to 4 (or to ``n``) but ``n``, so the
    options of a counting question are not centred on the answer (numbers near ``n`` are)."""
    return tuple(str(v) for v in range(max(5, n + 1)) if v != n)


def _balanced_choice(rng: random.Random, counts: dict[str, int]) -> str:
    """A key of ``counts`` chosen so that every distinct count in the scene is equally likely (most colours of a
    2x2 grid occur once). This flattens the answers' prior but does not remove it: over many scenes the small
    counts are allowed more often than 4 (docs/toy_world.md; the blind score measures what is left)."""
    target = rng.choice(sorted(set(counts.values())))
    return rng.choice([k for k, v in counts.items() if v == target])


def _vocab(scene: Scene) -> Layout:
    """The scene's layout: distractors come from the attributes its world draws, so no option is
    ruled out by the text alone."""
    return LAYOUTS[scene.layout]


def _absent(scene: Scene) -> list[str]:
    names, vocab = {o.name for o in scene.objects}, _vocab(scene)
    return [f"{c} {s}" for c in vocab.colors for s in vocab.shapes if f"{c} {s}" not in names]


def _others(scene: Scene, rng: random.Random, exclude: set[str]) -> tuple[str, ...]:
    """Wrong object names: objects of the scene not in ``exclude`` plus a few absent ones."""
    present = [o.name for o in scene.objects if o.name not in exclude]
    return tuple(present + rng.sample(_absent(scene), 3))


def _where(objects: list[SceneObject], rng: random.Random) -> str:
    """"The red circle is in the top left and the blue square is at the center." """
    text = join_list([f"the {o.name} is {place(o, rng)}" for o in objects])
    return text[:1].upper() + text[1:] + "."


def count_objects(scene: Scene, rng: random.Random) -> Question | None:
    if _vocab(scene).full:  # the count is the same in every image
        return None
    n = len(scene.objects)
    text = rng.choice(("How many objects are in the image?", "How many shapes are there in the image?"))
    verb = "is" if n == 1 else "are"
    return Question(
        "count_objects", "coarse perception", text, str(n), _other_counts(n),
        "count the objects in the image",
        f"The image shows {object_list(scene, rng)}.",
        f"There {verb} {number_word(n)} in total.",
        "The number of objects is {}.",
    )


def background_color(scene: Scene, rng: random.Random) -> Question:
    text = rng.choice(("What color is the background?", "What is the background color of the image?"))
    return Question(
        "background_color", "coarse perception", text, scene.background,
        tuple(b for b in _vocab(scene).backgrounds if b != scene.background),
        "find the color of the background",
        f"The shapes sit on a {scene.background} background.",
        f"So the background is {scene.background}.",
        "The background is {}.",
    )


def which_present(scene: Scene, rng: random.Random) -> Question:
    """Multiple choice only: one option is in the image, the others are not."""
    obj = rng.choice(scene.objects)
    return Question(
        "which_present", "coarse perception", "Which of these objects is in the image?", obj.name,
        tuple(rng.sample(_absent(scene), 3)),
        "find which of the listed objects appears in the image",
        f"The image shows {object_list(scene, rng)}.",
        f"Of the options, only the {obj.name} is in the image.",
        "The image shows the {}.",
    )


def is_present(scene: Scene, rng: random.Random) -> Question:
    if rng.random() < 0.5:
        target, answer = rng.choice(scene.objects).name, "yes"
    else:
        target = rng.choice(_absent(scene))
        answer = "no"
    verdict = with_article(target) if answer == "yes" else f"no {target}"
    return Question(
        "is_present", "coarse perception", f"Is there {with_article(target)} in the image?", answer,
        ("no",) if answer == "yes" else ("yes",),
        f"check whether there is {with_article(target)} in the image",
        f"The image shows {object_list(scene, rng)}.",
        f"So there is {verdict} in the image.",
    )


def color_of_shape(scene: Scene, rng: random.Random) -> Question | None:
    unique = [o for o in scene.objects if sum(p.shape == o.shape for p in scene.objects) == 1]
    if not unique:
        return None
    obj = rng.choice(unique)
    text = rng.choice((f"What color is the {obj.shape}?", f"What is the color of the {obj.shape}?"))
    return Question(
        "color_of_shape", "fine-grained perception", text, obj.color,
        tuple(c for c in _vocab(scene).colors if c != obj.color),
        f"find the color of the {obj.shape}",
        f"There is one {obj.shape}, the {obj.name}, {place(obj, rng)}.",
        f"So the {obj.shape} is {obj.color}.",
        f"The {obj.shape} is {{}}.",
    )


def label_of(scene: Scene, rng: random.Random) -> Question | None:
    labelled = [o for o in scene.objects if o.label is not None]
    if not labelled:
        return None
    obj = rng.choice(labelled)
    text = rng.choice((f"What number is on the {obj.name}?", f"Which digit is written on the {obj.name}?"))
    return Question(
        "label_of", "fine-grained perception", text, str(obj.label),
        tuple(str(d) for d in range(1, 10) if d != obj.label),
        f"read the number on the {obj.name}",
        f"The {obj.name} is {place(obj, rng)} and shows the digit {obj.label}.",
        f"The digit on the {obj.name} is {obj.label}.",
        f"The number on the {obj.name} is {{}}.",
    )


def position_of(scene: Scene, rng: random.Random) -> Question:
    obj = rng.choice(scene.objects)
    text = rng.choice((f"Where is the {obj.name} in the image?", f"In which part of the image is the {obj.name}?"))
    return Question(
        "position_of", "fine-grained perception", text, obj.position,
        tuple(p for p in _vocab(scene).positions() if p != obj.position),
        f"locate the {obj.name}",
        f"The {obj.name} is {place(obj, rng)}.",
        f"So its position is the {obj.position}.",
        f"The {obj.name} is {PLACE_CLAIM}.",
    )


def size_of(scene: Scene, rng: random.Random) -> Question:
    obj = rng.choice(scene.objects)
    word, sizes = SIZE_WORDS[obj.size][0], _vocab(scene).sizes
    return Question(
        "size_of", "fine-grained perception", f"Is the {obj.name} {join_list(sizes).replace(' and ', ' or ')}?",
        obj.size,
        tuple(s for s in sizes if s != obj.size),
        f"judge the size of the {obj.name}",
        f"The {obj.name} is {word} for its part of the image.",
        f"So the {obj.name} is {obj.size}.",
        f"The {obj.name} is {{}}.",
    )


def mark_corner(scene: Scene, rng: random.Random) -> Question | None:
    if scene.mark is None:
        return None
    corner = scene.mark.corner
    text = rng.choice(("In which corner is the small dot?", "Which corner holds the small dot?"))
    return Question(
        "mark_corner", "fine-grained perception", text, corner, tuple(c for c in CORNERS if c != corner),
        "find the corner with the small dot",
        f"A small {scene.mark.color} dot sits in the {corner} corner.",
        f"So the dot is in the {corner} corner.",
        "The corner with the dot is the {}.",
    )


def relation_lookup(scene: Scene, rng: random.Random) -> Question | None:
    options = []
    for anchor in scene.objects:
        for relation in RELATIONS:
            hits = [o for o in scene.objects if o is not anchor and holds(o, relation, anchor)]
            if len(hits) == 1:
                options.append((anchor, relation, hits[0]))
    if not options:
        return None
    anchor, relation, hit = rng.choice(options)
    words = RELATION_WORDS[relation][0]
    return Question(
        "relation_lookup", "instance reasoning", f"Which object is {words} the {anchor.name}?", hit.name,
        _others(scene, rng, {hit.name, anchor.name}),
        f"find the object {words} the {anchor.name}",
        _where(list(scene.objects), rng),
        f"Only the {hit.name} is {words} the {anchor.name}.",
        f"{words[:1].upper() + words[1:]} the {anchor.name} is the {{}}.",
    )


def relation_yes_no(scene: Scene, rng: random.Random) -> Question | None:
    if len(scene.objects) < 2:
        return None
    a, b = rng.sample(list(scene.objects), 2)
    relation = rng.choice(RELATIONS)
    words = RELATION_WORDS[relation][0]
    true = holds(a, relation, b)
    return Question(
        "relation_yes_no", "instance reasoning", f"Is the {a.name} {words} the {b.name}?", "yes" if true else "no",
        ("no",) if true else ("yes",),
        f"check whether the {a.name} is {words} the {b.name}",
        _where([a, b], rng),
        f"So the {a.name} is {'' if true else 'not '}{words} the {b.name}.",
    )


def compare_size(scene: Scene, rng: random.Random) -> Question | None:
    pairs = [(a, b) for a in scene.objects for b in scene.objects if SIZES.index(a.size) > SIZES.index(b.size)]
    if not pairs:
        return None
    big, small = rng.choice(pairs)
    first, second = (big, small) if rng.random() < 0.5 else (small, big)
    return Question(
        "compare_size", "instance reasoning", f"Which is larger, the {first.name} or the {second.name}?", big.name,
        # Exactly three, the smaller one always among them: every set of options then names both objects asked
        # about, so the text alone narrows it to those two and no further.
        (small.name, *rng.sample(_others(scene, rng, {big.name, small.name}), 2)),
        f"compare the sizes of the {first.name} and the {second.name}",
        f"The {first.name} is {SIZE_WORDS[first.size][0]} and the {second.name} is {SIZE_WORDS[second.size][0]}.",
        f"So the {big.name} is larger.",
        "The larger one is the {}.",
    )


def largest_object(scene: Scene, rng: random.Random) -> Question | None:
    ranks = [SIZES.index(o.size) for o in scene.objects]
    if len(scene.objects) < 2 or ranks.count(max(ranks)) != 1:
        return None
    big = scene.objects[ranks.index(max(ranks))]
    sizes = join_list([f"the {o.name} is {SIZE_WORDS[o.size][0]}" for o in scene.objects])
    return Question(
        "largest_object", "instance reasoning",
        rng.choice(("Which object is the largest?", "Which shape is the biggest?")), big.name,
        _others(scene, rng, {big.name}),
        "find the largest object",
        sizes[:1].upper() + sizes[1:] + ".",
        f"Only the {big.name} is {SIZE_WORDS[big.size][0]}, so it is the largest.",
        "The largest object is the {}.",
    )


def _count_matching(
    scene: Scene, rng: random.Random, kind: str, test: Callable[[SceneObject], bool], noun: str, what: str
) -> Question:
    matching = [o for o in scene.objects if test(o)]
    n = len(matching)
    if n == 0:
        found = f"None of them is {with_article(what)}."
    else:
        verb = "is " + with_article(what) if n == 1 else "are " + noun
        found = f"Of these, {join_list(['the ' + o.name for o in matching])} {verb}."
    return Question(
        kind, "logical reasoning", f"How many {noun} are there in the image?", str(n), _other_counts(n),
        f"count the {noun}",
        f"The image shows {object_list(scene, rng)}.",
        f"{found} That makes {number_word(n)}.",
        f"The number of {noun} is {{}}.",
    )


def count_shape(scene: Scene, rng: random.Random) -> Question:
    shape = _balanced_choice(rng, {s: sum(o.shape == s for o in scene.objects) for s in _vocab(scene).shapes})
    return _count_matching(scene, rng, "count_shape", lambda o: o.shape == shape, SHAPE_PLURALS[shape], shape)


def count_color(scene: Scene, rng: random.Random) -> Question:
    color = _balanced_choice(rng, {c: sum(o.color == c for o in scene.objects) for c in _vocab(scene).colors})
    return _count_matching(scene, rng, "count_color", lambda o: o.color == color, f"{color} objects", f"{color} object")


def count_labelled(scene: Scene, rng: random.Random) -> Question:
    return _count_matching(
        scene, rng, "count_labelled", lambda o: o.label is not None, "objects with a number", "object with a number"
    )


def same_line(scene: Scene, rng: random.Random) -> Question | None:
    options = []
    for anchor in scene.objects:
        for line, index in (("row", lambda o: o.row), ("column", lambda o: o.col)):
            mates = [o for o in scene.objects if o is not anchor and index(o) == index(anchor)]
            if len(mates) == 1:
                options.append((anchor, line, mates[0]))
    if not options:
        return None
    anchor, line, mate = rng.choice(options)
    return Question(
        "same_line", "logical reasoning", f"Which object is in the same {line} as the {anchor.name}?", mate.name,
        _others(scene, rng, {mate.name, anchor.name}),
        f"find the object in the same {line} as the {anchor.name}",
        _where(list(scene.objects), rng),
        f"Only the {mate.name} shares the {line} of the {anchor.name}.",
        f"In the same {line} as the {anchor.name} is the {{}}.",
    )


def _labelled(scene: Scene) -> list[SceneObject]:
    return [o for o in scene.objects if o.label is not None]


def label_sum(scene: Scene, rng: random.Random) -> Question | None:
    labelled = _labelled(scene)
    if len(labelled) < 2:
        return None
    total = sum(o.label for o in labelled)
    text = rng.choice(
        ("What is the sum of the numbers on the objects?", "What do the numbers on the shapes add up to?")
    )
    return Question(
        "label_sum", "math", text, str(total), _numbers_near(total),
        "add up the numbers written on the objects",
        "The numbers are " + join_list([f"{o.label} on the {o.name}" for o in labelled]) + ".",
        " + ".join(str(o.label) for o in labelled) + f" = {total}.",
        "The sum of the numbers is {}.",
    )


def label_difference(scene: Scene, rng: random.Random) -> Question | None:
    pairs = [(a, b) for a in _labelled(scene) for b in _labelled(scene) if a.label > b.label]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    diff = a.label - b.label
    return Question(
        "label_difference", "math", f"How much larger is the number on the {a.name} than the number on the {b.name}?",
        str(diff), _numbers_near(diff),
        f"subtract the number on the {b.name} from the number on the {a.name}",
        f"The {a.name} shows {a.label} and the {b.name} shows {b.label}.",
        f"{a.label} - {b.label} = {diff}.",
        "The difference is {}.",
    )


def count_after_adding(scene: Scene, rng: random.Random) -> Question | None:
    if _vocab(scene).full:  # with a fixed object count the answer is too easy to guess from the text
        return None
    shape = rng.choice(scene.objects).shape
    added = rng.randint(1, 3)
    plural = SHAPE_PLURALS[shape]
    n = sum(o.shape == shape for o in scene.objects)
    more = plural if added > 1 else shape
    return Question(
        "count_after_adding", "math",
        f"If {number_word(added)} more {more} were added, how many {plural} would there be?",
        str(n + added), _numbers_near(n + added),
        f"count the {plural} and add {number_word(added)}",
        f"The image shows {object_list(scene, rng)}.",
        f"There {'is' if n == 1 else 'are'} {n} now, and {n} + {added} = {n + added}.",
        f"The number of {plural} would be {{}}.",
    )


def count_two_colors(scene: Scene, rng: random.Random) -> Question:
    colors = _vocab(scene).colors
    pairs = {f"{a},{b}": sum(o.color in (a, b) for o in scene.objects) for a in colors for b in colors if a != b}
    first, second = _balanced_choice(rng, pairs).split(",")
    matching = [o for o in scene.objects if o.color in (first, second)]
    counts = [sum(o.color == c for o in scene.objects) for c in (first, second)]
    n = len(matching)
    return Question(
        "count_two_colors", "math", f"How many objects are {first} or {second}?", str(n), _other_counts(n),
        f"count the {first} objects and the {second} objects and add them up",
        f"The image shows {object_list(scene, rng)}.",
        f"There {'is' if counts[0] == 1 else 'are'} {counts[0]} {first} and {counts[1]} {second}, and "
        f"{counts[0]} + {counts[1]} = {n}.",
        f"The number of {first} or {second} objects is {{}}.",
    )


QUESTION_TYPES: dict[str, tuple[str, Generator]] = {
    "count_objects": ("coarse perception", count_objects),
    "background_color": ("coarse perception", background_color),
    "which_present": ("coarse perception", which_present),
    "is_present": ("coarse perception", is_present),
    "color_of_shape": ("fine-grained perception", color_of_shape),
    "label_of": ("fine-grained perception", label_of),
    "position_of": ("fine-grained perception", position_of),
    "size_of": ("fine-grained perception", size_of),
    "mark_corner": ("fine-grained perception", mark_corner),
    "relation_lookup": ("instance reasoning", relation_lookup),
    "relation_yes_no": ("instance reasoning", relation_yes_no),
    "compare_size": ("instance reasoning", compare_size),
    "largest_object": ("instance reasoning", largest_object),
    "count_shape": ("logical reasoning", count_shape),
    "count_color": ("logical reasoning", count_color),
    "count_labelled": ("logical reasoning", count_labelled),
    "same_line": ("logical reasoning", same_line),
    "label_sum": ("math", label_sum),
    "label_difference": ("math", label_difference),
    "count_after_adding": ("math", count_after_adding),
    "count_two_colors": ("math", count_two_colors),
}
# What a question type needs that a layout may not draw.
_NEEDS_LABELS = frozenset({"label_of", "count_labelled", "label_sum", "label_difference"})
# A full grid fixes the object count, and in a full 2-row grid no object is alone left of (above...) another.
_NEEDS_EMPTY_CELLS = frozenset({"count_objects", "count_after_adding", "relation_lookup"})


def question_kinds(layout: Layout, category: str | None = None) -> list[str]:
    """The question types a world of ``layout`` can ask (of ``category``, if given)."""
    skip = set()
    if not layout.label_probability:
        skip |= _NEEDS_LABELS
    if not layout.mark_probability:
        skip.add("mark_corner")
    if layout.full:
        skip |= _NEEDS_EMPTY_CELLS
    return [k for k, (c, _) in QUESTION_TYPES.items() if k not in skip and category in (None, c)]


# Types that only make sense with options to choose from, and types with too few wrong answers for four options.
MULTIPLE_CHOICE_ONLY = frozenset({"which_present"})
OPEN_ONLY = frozenset({"is_present", "size_of", "relation_yes_no"})
