"""benchmarks/bench_toy_lookup.py: every task's scored token is the attribute of the object it asks about,
at the distance the task's name says, and a short run reports an accuracy on fresh sequences."""

from __future__ import annotations

import copy
import importlib.util
import random
import sys
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel, Qwen2ForCausalLM

from sicog.model.builders import tiny_text_config, tiny_vision_config
from sicog.model.vision import patch_features
from sicog.toy.pretrain import pixels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    # A script run as `python benchmarks/bench_toy_lookup.py` finds its sibling `cpu_time` on sys.path; so must this.
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.append(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_toy_lookup", ROOT / "benchmarks" / "bench_toy_lookup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _objects(bench, tokens: list[int]) -> list[tuple[int, int, int]]:
    """The (colour, shape, place) of each one-token object, decoded independently of the task code."""
    base = bench.bound(0, 0, 0)
    return [divmod(divmod(t - base, 4)[0], 4) + (divmod(t - base, 4)[1],) for t in tokens if t >= base]


@pytest.mark.parametrize("gap", [1, 5])
@pytest.mark.parametrize("words", [1, 2])
def test_a_question_scores_the_place_of_the_object_it_names(bench, words: int, gap: int) -> None:
    rng = random.Random(0)
    for _ in range(50):
        tokens, (scored,) = bench.asked(words, gap)(rng)
        answer = len(tokens) - 1
        assert scored == answer - 1
        shape = tokens[answer - gap] - bench.shape(0)
        named = [o for o in _objects(bench, tokens) if o[1] == shape]
        if words == 2:
            colour = tokens[answer - gap - 1] - bench.colour(0)
            named = [o for o in named if o[0] == colour]
        assert len(named) == 1
        assert tokens[answer] == bench.place(named[0][2])


@pytest.mark.parametrize(("colour_first", "gap"), [(False, 1), (True, 1), (False, 5)])
def test_text_pairs_ask_for_the_colour_written_with_the_shape(bench, colour_first: bool, gap: int) -> None:
    rng = random.Random(0)
    for _ in range(50):
        tokens, (scored,) = bench.text_pairs(colour_first, gap)(rng)
        firsts, seconds = tokens[1:9:2], tokens[2:9:2]
        pairs = dict(zip(seconds, firsts, strict=True)) if colour_first else dict(zip(firsts, seconds, strict=True))
        answer = scored + 1
        assert len(pairs) == 4 and answer == len(tokens) - 1 and tokens[answer] == pairs[tokens[answer - gap]]
        assert all(bench.shape(0) <= t < bench.shape(4) for t in (seconds if colour_first else firsts))


def test_a_restated_reply_scores_the_place_of_the_shape_asked_and_named_again(bench) -> None:
    rng = random.Random(0)
    for _ in range(50):
        tokens, (scored,) = bench.restated(rng)
        answer = len(tokens) - 1
        assert scored == answer - 1 and tokens[scored] == bench.IS
        shape = tokens[answer - 2] - bench.shape(0)
        assert tokens[answer - 2 - 5] == tokens[answer - 2], "the reply names the shape the question asked about"
        (named,) = [o for o in _objects(bench, tokens) if o[1] == shape]
        assert tokens[answer] == bench.place(named[2])


def test_a_description_scores_each_place_after_its_object(bench) -> None:
    rng = random.Random(0)
    tokens, scored = bench.describe(rng)
    objects = _objects(bench, tokens)
    assert len(scored) == len(objects) == 4
    for position in scored:
        colour, shape = tokens[position - 2] - bench.colour(0), tokens[position - 1] - bench.shape(0)
        (place,) = [p for c, s, p in objects if (c, s) == (colour, shape)]
        assert tokens[position + 1] == bench.place(place)


def test_a_named_description_scores_each_place_after_the_one_token_naming_its_object(bench) -> None:
    rng = random.Random(0)
    names = {bench.named(c, s): (c, s) for c in range(4) for s in range(4)}
    for _ in range(20):
        tokens, scored = bench.TASKS["composed, describe, named"][0](rng)
        objects = _objects(bench, tokens)
        assert len(scored) == len(objects) == 4 and len(set(scored)) == 4
        for position in scored:
            (place,) = [p for c, s, p in objects if (c, s) == names[tokens[position]]]
            assert tokens[position + 1] == bench.place(place)


@pytest.mark.parametrize("varied", [False, True])
def test_a_description_in_context_keeps_its_image_and_scores_its_places(bench, varied: bool) -> None:
    task = bench.in_context(bench.describing("pair", one_token=True), before=3, after=5, copies=2, varied=varied)
    names = {bench.named(c, s): (c, s) for c in range(4) for s in range(4)}
    rng, templates = random.Random(0), set()
    for _ in range(20):
        tokens, scored = task(rng)
        image = tokens[4:12]
        assert tokens[0] == bench.BOS and tokens[12] == bench.SEP and image[::2] == image[1::2]
        objects = _objects(bench, tokens)
        assert len(objects) == 8 and len(set(objects)) == 4 and len(scored) == 4
        assert all(k > 17 for k in scored)
        for position in scored:
            (place,) = {p for c, s, p in objects if (c, s) == names[tokens[position]]}
            assert tokens[position + 1] == bench.place(place)
        templates.add(tuple(tokens[1:4] + tokens[13:18]))
        assert all(t in bench.FILLER for t in tokens[1:4] + tokens[13:18])
    assert (len(templates) > 1) == varied


def test_a_short_run_reports_held_out_accuracy(bench) -> None:
    result = bench.run("bound, asked last", steps=3, lr=1e-3, batch_size=4, seed=0, layers=1)
    assert result["task"] == "bound, asked last" and 0.0 <= result["accuracy"] <= 1.0 and result["guess"] == 0.25


def test_composed_objects_are_the_projected_sum_of_their_attributes(bench) -> None:
    model = Qwen2ForCausalLM(tiny_text_config(bench.VOCAB, hidden_size=32, layers=1, heads=2, kv_heads=1))
    composed = bench.ComposedObjects(32)
    tokens = torch.tensor([[bench.BOS, bench.bound(1, 2, 3), bench.bound(1, 2, 0), bench.shape(2)]])
    embedded = composed.embed(model, tokens)[0]
    parts = composed.parts
    assert torch.allclose(embedded[1], composed.projector(parts[0, 1] + parts[1, 2] + parts[2, 3]))
    assert torch.allclose(embedded[2] - embedded[1], composed.projector.weight @ (parts[2, 0] - parts[2, 3]), atol=1e-5)
    assert torch.equal(embedded[3], model.get_input_embeddings().weight[bench.shape(2)])
    result = bench.run("composed, describe", steps=3, lr=1e-3, batch_size=4, seed=0, layers=1, hidden_size=32)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_tower_objects_are_projected_patch_features_of_their_drawn_cells(bench, tmp_path: Path) -> None:
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config(hidden_size=16, layers=2, patch_size=16, image_size=32)).save_pretrained(
        tmp_path / "vision")
    images = bench.TowerObjects(tmp_path / "vision", 32, centre=True, seed=0)
    pool = [images._drawn(sorted(bench._scene(random.Random(k), "pair"), key=lambda o: o[2])) for k in range(64)]
    assert images._features(pool).mean(0).sub(images.mean).norm() < images.mean.norm(), "the mean of other pictures"
    objects = [(1, 2, 3), (0, 0, 1), (3, 1, 0), (2, 3, 2)]
    drawn = copy.deepcopy(images.rng)
    scene = images._drawn(sorted(objects, key=lambda o: o[2]))
    assert [o.position for o in scene.objects] == ["top left", "top right", "bottom left", "bottom right"]
    assert [(o.color, o.shape) for o in scene.objects] == [("blue", "square"), ("red", "circle"), ("green", "cross"),
                                                           ("yellow", "triangle")]
    images.rng = drawn
    model = Qwen2ForCausalLM(tiny_text_config(bench.VOCAB, hidden_size=32, layers=1, heads=2, kv_heads=1))
    tokens = torch.tensor([bench._image(objects) + [bench.named(1, 2)]])
    embedded = images.embed(model, tokens)[0]
    pixel_values = torch.from_numpy(pixels(scene, 32))[None]
    features = patch_features(images.tower, pixel_values, bench.FEATURE_LAYER, 16).flatten(0, 2)
    torch.testing.assert_close(embedded[1:5], images.projector(features - images.mean))
    assert torch.equal(embedded[-1], model.get_input_embeddings().weight[bench.named(1, 2)])
    result = bench.run("tower, describe, named, centred", steps=2, lr=1e-3, batch_size=2, seed=0, tower=tmp_path,
                       layers=1, hidden_size=32)
    assert 0.0 <= result["accuracy"] <= 1.0


def test_every_token_trains_on_the_whole_text_after_the_image_and_scores_the_places(bench) -> None:
    names = {bench.named(c, s): (c, s) for c in range(4) for s in range(4)}
    ordered = bench.every_token(bench.describing("pair", one_token=True, by_colour=True))
    rng = random.Random(0)
    for _ in range(20):
        tokens, scored, trained = ordered(rng)
        start = tokens.index(bench.SEP)
        assert trained == list(range(start, len(tokens) - 1)) and set(scored) < set(trained)
        said = [names[tokens[k]] for k in scored]
        assert said == sorted(said), "by colour, then shape"
        objects = _objects(bench, tokens)
        for position in scored:
            (place,) = [p for c, s, p in objects if (c, s) == names[tokens[position]]]
            assert tokens[position + 1] == bench.place(place)
    randomly = bench.TASKS["tower, describe, named, every token"][0]
    orders = {tuple(names[tokens[k]] for k in scored) for tokens, scored, _ in (randomly(rng) for _ in range(20))}
    assert len(orders) > 1 and any(list(o) != sorted(o) for o in orders)


def test_a_trained_mask_differs_from_the_scored_one_only_when_a_task_says_so(bench) -> None:
    tokens, scored, trained = bench._batch(bench.describe, random.Random(0), 3)
    assert torch.equal(scored, trained)
    tokens, scored, trained = bench._batch(bench.every_token(bench.describe), random.Random(0), 3)
    assert torch.equal(scored & trained, scored) and trained.sum() > scored.sum()
    assert not trained[:, : 1 + bench.OBJECTS].any(), "the image is never a target"


def test_tower_tokens_in_a_chat_turn_repeat_each_objects_features(bench, tmp_path: Path) -> None:
    torch.manual_seed(0)
    CLIPVisionModel(tiny_vision_config(hidden_size=16, layers=2, patch_size=16, image_size=32)).save_pretrained(
        tmp_path / "vision")
    images = bench.TowerObjects(tmp_path / "vision", 32, centre=False, seed=0)
    model = Qwen2ForCausalLM(tiny_text_config(bench.VOCAB, hidden_size=32, layers=1, heads=2, kv_heads=1))
    tokens, _, _ = bench._batch(bench.TASKS["tower, describe, named, chat, every token"][0], random.Random(0), 2)
    embedded = images.embed(model, tokens)
    first = bench.CHAT_BEFORE + 1
    image = embedded[:, first : first + bench.OBJECTS * bench.QUERIES_PER_CELL]
    copies = image.reshape(2, bench.OBJECTS, bench.QUERIES_PER_CELL, -1)
    assert torch.equal(copies, copies[:, :, :1].expand_as(copies))
    assert not torch.allclose(copies[:, 0, 0], copies[:, 1, 0])
