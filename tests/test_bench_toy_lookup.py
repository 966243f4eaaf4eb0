"""benchmarks/bench_toy_lookup.py: every task's scored token is the attribute of the object it asks about,
at the distance the task's name says, and a short run reports an accuracy on fresh sequences."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from sicog.model.builders import tiny_text_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
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
