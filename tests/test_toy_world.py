"""Toy world scenes and their rendering: invariants, slicing share, patch-aligned grid, pixels where the truth says."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sicog.model.slicing import plan_slices
from sicog.toy.datasets import WorldWriter
from sicog.toy.render import png_bytes, render
from sicog.toy.settings import TOY_MAX_SLICE_NUMS, TOY_PATCH_SIZE, TOY_SCALE_RESOLUTION
from sicog.toy.world import (
    BACKGROUNDS,
    COLORS,
    CORNER_CELLS,
    GRID_LINES,
    LAYOUTS,
    Mark,
    Scene,
    SceneObject,
    holds,
    sample_scene,
)


def _scenes(n: int, seed: int = 0, layout: str = "sliced") -> list[Scene]:
    rng = random.Random(seed)
    return [sample_scene(rng, LAYOUTS[layout]) for _ in range(n)]


def _plan(width: int, height: int):
    return plan_slices(
        width,
        height,
        scale_resolution=TOY_SCALE_RESOLUTION,
        patch_size=TOY_PATCH_SIZE,
        max_slice_nums=TOY_MAX_SLICE_NUMS,
    )


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_scene_invariants(layout: str) -> None:
    spec = LAYOUTS[layout]
    for scene in _scenes(500, layout=layout):
        cells = [(o.row, o.col) for o in scene.objects]
        assert (scene.width, scene.height) == (scene.cols * spec.cell, scene.rows * spec.cell)
        assert 1 <= len(scene.objects) <= (scene.rows * scene.cols if spec.full else 4)
        assert len(set(cells)) == len(cells), "two objects share a grid cell"
        assert len({o.name for o in scene.objects}) == len(scene.objects), "(colour, shape) not unique"
        for obj in scene.objects:
            assert obj.color in spec.colors and obj.shape in spec.shapes and obj.size in spec.sizes
            assert obj.label is None or (obj.size != "small" and 1 <= obj.label <= 9)
            x0, y0, x1, y1 = scene.object_box(obj)
            col, row = GRID_LINES[scene.cols].index(obj.col), GRID_LINES[scene.rows].index(obj.row)
            assert col * spec.cell <= x0 < x1 <= (col + 1) * spec.cell, "object leaves its cell"
            assert row * spec.cell <= y0 < y1 <= (row + 1) * spec.cell, "object leaves its cell"
        if scene.mark:
            assert CORNER_CELLS[scene.mark.corner] not in cells, "corner dot drawn over an object's cell"


def test_grid_layout_puts_one_object_in_every_patch() -> None:
    """The learnable layout: every image is one unsliced view in which each cell is exactly one patch."""
    for scene in _scenes(200, layout="grid"):
        plan = _plan(scene.width, scene.height)
        assert plan.num_slices == 0 and plan.source_size == (scene.width, scene.height)
        assert LAYOUTS["grid"].cell == TOY_PATCH_SIZE
        assert len(scene.objects) == scene.rows * scene.cols and scene.mark is None and scene.border is None


def test_relations_follow_the_grid() -> None:
    a = SceneObject("circle", "red", "large", 0, 0)
    b = SceneObject("square", "blue", "small", 2, 1)
    scene = Scene(96, 96, "white", (a, b))
    assert set(scene.relations()) == {
        ("red circle", "left of", "blue square"),
        ("red circle", "above", "blue square"),
        ("blue square", "right of", "red circle"),
        ("blue square", "below", "red circle"),
    }
    assert not holds(a, "below", b)
    with pytest.raises(ValueError, match="unknown relation"):
        holds(a, "near", b)


def test_sliced_layout_gives_a_good_share_of_two_to_four_slices() -> None:
    cell = LAYOUTS["sliced"].cell
    for rows, cols in LAYOUTS["sliced"].grids:
        plan = _plan(cols * cell, rows * cell)
        assert plan.num_slices in (0, 2, 3, 4), (rows, cols, plan)
        assert plan.source_size[0] * plan.source_size[1] <= TOY_SCALE_RESOLUTION**2
    slices = Counter(_plan(s.width, s.height).num_slices for s in _scenes(1000))
    assert slices[0] >= 50, "too few whole (unsliced) images"
    assert slices[2] + slices[3] + slices[4] >= 500, f"too few sliced images: {slices}"
    assert slices[2] >= 100 and slices[4] >= 100, slices


def test_world_writer_never_draws_a_scene_twice(tmp_path) -> None:
    writer = WorldWriter(tmp_path, seed=0)
    rng = writer.rng("align")
    keys = [writer.draw(rng)[0].key() for _ in range(300)]
    assert len(set(keys)) == 300 and writer.seen == set(keys)
    scene, answer = writer.draw(rng, accept=lambda s: len(s.objects) if len(s.objects) == 4 else None)
    assert answer == 4 and len(scene.objects) == 4
    grid = WorldWriter(tmp_path, seed=0, layout="grid")
    assert all(len(grid.draw(rng)[0].objects) == 4 for _ in range(20))
    with pytest.raises(RuntimeError, match="no new acceptable scene"):
        writer.draw(rng, accept=lambda s: None, max_tries=20)


def test_render_size_and_pixels_where_the_truth_says() -> None:
    for scene in _scenes(60, seed=2) + _scenes(60, seed=2, layout="grid"):
        image = render(scene)
        assert image.size == (scene.width, scene.height) and image.mode == "RGB"
        for obj in scene.objects:
            if obj.label is not None or obj.size == "small":
                continue
            x0, y0, x1, y1 = scene.object_box(obj)
            center = image.getpixel((int((x0 + x1) / 2), int((y0 + y1) / 2)))
            assert max(abs(c - t) for c, t in zip(center, COLORS[obj.color])) <= 12, (obj, center)


def test_background_border_and_dot_are_drawn() -> None:
    obj = SceneObject("square", "blue", "medium", 0, 1)
    plain = Scene(96, 64, "black", (obj,), rows=2, cols=3)
    framed = Scene(96, 64, "black", (obj,), mark=Mark("yellow", "top right"), border="red", rows=2, cols=3)
    assert render(plain).getpixel((2, 32)) == BACKGROUNDS["black"]
    assert render(framed).getpixel((0, 32)) == COLORS["red"]
    dot = render(framed).crop((96 - 14, 0, 96, 14))
    assert COLORS["yellow"] in {color for _, color in dot.getcolors(256)}


def test_digit_labels_change_the_pixels_and_differ_per_digit() -> None:
    def draw(label):
        return render(Scene(128, 128, "white", (SceneObject("circle", "blue", "large", 1, 1, label),))).tobytes()

    images = [draw(None)] + [draw(d) for d in range(1, 10)]
    assert len(set(images)) == 10


def test_png_bytes_are_deterministic_and_carry_no_metadata() -> None:
    scene = _scenes(1, seed=5)[0]
    first, second = png_bytes(render(scene)), png_bytes(render(scene))
    assert first == second
    assert b"tIME" not in first and b"tEXt" not in first


@pytest.mark.parametrize("kind", ["count_color", "count_shape", "count_two_colors"])
def test_counting_answers_are_not_guessable_from_the_text(kind: str) -> None:
    from sicog.toy.questions import QUESTION_TYPES

    rng, layout = random.Random(5), LAYOUTS["grid"]
    questions = [QUESTION_TYPES[kind][1](sample_scene(rng, layout), rng) for _ in range(2000)]
    answers = Counter(q.answer for q in questions)
    # Asking about a random object's colour, "1" answered most colour counts of a 2x2 grid.
    assert max(answers.values()) / len(questions) < 0.45, answers
    # Every count question offers wrong counts from the same range, whatever its answer.
    assert {frozenset({q.answer, *q.distractors}) for q in questions} == {frozenset("01234")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_which_is_larger_offers_both_objects_it_asks_about(layout: str) -> None:
    """Otherwise the one option naming an object of the question gives the answer away without the image."""
    from sicog.toy.questions import QUESTION_TYPES

    rng = random.Random(3)
    asked = [QUESTION_TYPES["compare_size"][1](sample_scene(rng, LAYOUTS[layout]), rng) for _ in range(500)]
    asked = [q for q in asked if q is not None]
    assert asked
    for question in asked:
        named = {name for name in (question.answer, *question.distractors) if f"the {name} " in question.text
                 or question.text.endswith(f"the {name}?")}
        assert len(named) == 2 and len(question.distractors) == 3, question
