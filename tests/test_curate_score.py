"""MBR scores, answer agreement and selection, with hand-made embeddings."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sicog.curate.score import best_index, majority_answer, mbr_scores
from sicog.curate.select import (
    BELOW_THRESHOLD,
    LOW_AGREEMENT,
    NO_ANSWER,
    NO_USABLE,
    SINGLE_CANDIDATE,
    TIED_ANSWERS,
    record_rng,
    select,
)


def unit(angle_degrees: float) -> list[float]:
    angle = math.radians(angle_degrees)
    return [math.cos(angle), math.sin(angle)]


def test_the_candidate_most_similar_to_the_others_is_chosen() -> None:
    # Three candidates close together around 10 degrees, one opposite them: the middle of the cluster wins.
    embeddings = np.array([unit(0), unit(10), unit(20), unit(190)])
    scores = mbr_scores(embeddings)
    assert best_index(scores) == 1
    assert scores.index(min(scores)) == 3
    expected = (math.cos(math.radians(10)) + math.cos(math.radians(20)) + math.cos(math.radians(190))) / 3
    assert scores[0] == pytest.approx(expected, abs=1e-6)


def test_scores_are_cosine_so_vector_length_does_not_matter() -> None:
    base = np.array([unit(0), unit(30), unit(60)])
    scaled = base * np.array([[1.0], [5.0], [0.2]])
    assert mbr_scores(base) == mbr_scores(scaled)


def test_self_similarity_is_excluded_by_default_and_included_on_request() -> None:
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert mbr_scores(embeddings) == [0.0, 0.0]
    assert mbr_scores(embeddings, include_self=True) == [0.5, 0.5]


def test_single_candidate_rule() -> None:
    assert mbr_scores(np.array([[0.3, 0.4]])) == [None]
    assert mbr_scores(np.array([[0.3, 0.4]]), include_self=True) == [1.0]
    decision = select([None], ["only one"], threshold=0.0, rng=random.Random(0))
    outcome = (decision.best_index, decision.kept, decision.drop_reason, decision.rejected_index)
    assert outcome == (0, False, SINGLE_CANDIDATE, None)


def test_zero_rows_from_empty_candidates_score_zero() -> None:
    scores = mbr_scores(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    assert scores == [0.5, 0.5, 0.0]


def test_exact_threshold_is_kept_and_anything_above_the_best_score_is_not() -> None:
    # a.b = a.c = 0.5 and b.c = -0.5: the best score is 0.5 up to float error, written as exactly 0.5.
    embeddings = np.array([unit(0), unit(60), unit(-60)])
    scores = mbr_scores(embeddings)
    assert scores == [0.5, 0.0, 0.0]
    texts = ["a", "b", "c"]
    assert select(scores, texts, threshold=0.5, rng=random.Random(0)).kept
    below = select(scores, texts, threshold=0.500001, rng=random.Random(0))
    assert (below.kept, below.drop_reason, below.rejected_index) == (False, BELOW_THRESHOLD, None)


def test_majority_answer_and_agreement() -> None:
    answers = ["3", "5", "3", "3", "", "3"]
    assert majority_answer(answers) == ("3", round(4 / 6, 6))
    assert majority_answer(["", ""]) == (None, 0.0)


def test_answers_tied_for_the_top_count_make_no_majority_and_no_pair() -> None:
    # Half the candidates say yes, half no: nothing self-consistent to keep, and a pair would pick a side.
    assert majority_answer(["yes", "yes", "yes", "no", "no", "no"]) == (None, 0.5)
    assert majority_answer(["3", "3", "5", "5", "7", "7"]) == (None, round(2 / 6, 6))
    assert majority_answer(["3", "3", "5", "5", "3", "7"]) == ("3", 0.5)  # a 3-2-1 split has one
    texts = [f"candidate {i}" for i in range(6)]
    for answers in (["yes", "yes", "yes", "no", "no", "no"], ["3", "3", "5", "5", "7", "7"]):
        decision = select([0.9, 0.8, 0.85, 0.7, 0.6, 0.5], texts, threshold=0.0, rng=random.Random(0),
                          answers=answers, min_agreement=0.0)
        assert (decision.kept, decision.drop_reason) == (False, TIED_ANSWERS)
        assert (decision.majority_answer, decision.rejected_index) == (None, None)


def test_reasoning_best_is_taken_among_the_majority_answer_and_rejected_disagrees() -> None:
    answers = ["5", "3", "3", "5", "3", "3"]
    scores = [0.95, 0.9, 0.8, 0.7, 0.85, 0.6]  # the top MBR score belongs to a minority answer
    texts = [f"candidate {i}" for i in range(6)]
    for seed in range(20):
        decision = select(scores, texts, threshold=0.5, rng=random.Random(seed), answers=answers, min_agreement=0.5)
        assert decision.best_index == 1 and decision.kept
        assert decision.majority_answer == "3" and decision.agreement == round(4 / 6, 6)
        assert answers[decision.rejected_index] == "5"


def test_reasoning_drop_reasons() -> None:
    texts = ["a", "b", "c", "d"]
    low = select(
        [0.9] * 4, texts, threshold=0.5, rng=random.Random(0), answers=["1", "2", "3", "1"], min_agreement=0.75
    )
    assert (low.kept, low.drop_reason, low.agreement) == (False, LOW_AGREEMENT, 0.5)
    # An agreement equal to the minimum is kept (2 of 4 at the default 0.5 sits exactly there).
    even = select([0.9] * 4, texts, threshold=0.5, rng=random.Random(0), answers=["1", "2", "3", "1"],
                  min_agreement=0.5)
    assert (even.kept, even.drop_reason, even.agreement) == (True, None, 0.5)
    none = select([0.9] * 4, texts, threshold=0.5, rng=random.Random(0), answers=["", "", "", ""], min_agreement=0.0)
    assert (none.kept, none.drop_reason) == (False, NO_ANSWER)


def test_rejected_comes_from_the_lower_scoring_half_drawn_by_the_seed_and_the_record() -> None:
    scores = [0.6, 0.9, 0.5, 0.8, 0.7, 0.4]
    texts = [f"caption {i}" for i in range(6)]
    drawn = {select(scores, texts, threshold=0.0, rng=random.Random(seed)).rejected_index for seed in range(50)}
    assert drawn == {0, 2, 5}  # the three lowest scores

    def rejected(seed: int, record_id: str) -> int:
        return select(scores, texts, threshold=0.0, rng=record_rng(seed, record_id)).rejected_index

    assert all(rejected(7, "img-1") == rejected(7, "img-1") for _ in range(5))  # the same draw every time
    # Other seeds, and other records with the very same candidates, draw for themselves.
    assert len({rejected(seed, "img-1") for seed in range(30)}) == 3
    assert len({rejected(7, f"img-{i}") for i in range(30)}) == 3


def test_rejected_is_never_a_copy_of_the_chosen_text() -> None:
    scores = [0.9, 0.8, 0.7, 0.6]
    texts = ["same", "other", "same", "same "]
    for seed in range(20):
        assert select(scores, texts, threshold=0.0, rng=random.Random(seed)).rejected_index == 1
    assert select([0.9, 0.9], ["same", "same"], threshold=0.0, rng=random.Random(0)).rejected_index is None


def test_a_caption_scoring_as_high_as_the_chosen_one_is_never_rejected() -> None:
    """Two candidates always score alike: the pair would prefer the first sample drawn to the second."""
    assert select([0.7, 0.7], ["a red square", "a blue circle"], threshold=0.0,
                  rng=random.Random(0)).rejected_index is None
    for seed in range(20):
        assert select([0.9, 0.9, 0.5], ["one", "two", "three"], threshold=0.0,
                      rng=random.Random(seed)).rejected_index == 2


def test_rejected_never_gives_the_chosen_answer_and_prefers_a_marked_one() -> None:
    # Every candidate answers 3: a pair of two right answers teaches nothing about the answer.
    texts = [f"reasoning {i}. The answer is 3." for i in range(4)]
    for seed in range(20):
        decision = select([0.9, 0.8, 0.7, 0.6], texts, threshold=0.0, rng=random.Random(seed), answers=["3"] * 4,
                          explicit=[True] * 4)
        assert decision.kept and decision.rejected_index is None
    # In the lower half, "there are 3 cubes" (read from a last sentence, no marker) may be the chosen answer in
    # other words; "5" was introduced by a marker.
    answers = ["3", "3", "3", "3", "there are 3 cubes", "5"]
    explicit = [True, True, True, True, False, True]
    for seed in range(20):
        decision = select([0.9, 0.85, 0.8, 0.3, 0.7, 0.6], [f"c{i}" for i in range(6)], threshold=0.0,
                          rng=random.Random(seed), answers=answers, explicit=explicit, min_agreement=0.5)
        assert decision.rejected_index == 5
    # Without a marked one, an unmarked different answer is still a rejected candidate.
    decision = select([0.9, 0.8, 0.7], ["c0", "c1", "c2"], threshold=0.0, rng=random.Random(0),
                      answers=["3", "3", "5"], explicit=[True, True, False])
    assert decision.rejected_index == 2


def test_rejected_is_never_an_empty_candidate() -> None:
    # A failed sample is no answer to prefer the chosen one over (DPO training refuses an empty rejected).
    for seed in range(20):
        chosen = select([0.9, 0.8, 0.1, 0.0], ["a red circle", "a blue square", " ", ""], threshold=0.0,
                        rng=random.Random(seed))
        assert chosen.rejected_index == 1
    assert select([0.9, 0.0], ["a red circle", ""], threshold=0.0, rng=random.Random(0)).rejected_index is None


def test_empty_or_whitespace_candidates_never_win() -> None:
    # Three empty candidates embed to zero rows: every score ties at 0 and the lowest index would win.
    texts = ["", "  \n", "A red circle.", "\t"]
    scores = mbr_scores(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 0.0]]))
    assert scores == [0.0, 0.0, 0.0, 0.0]
    chosen = select(scores, texts, threshold=0.0, rng=random.Random(0))
    assert chosen.best_index == 2 and chosen.kept
    answers = ["", "", "3", ""]
    chosen = select(scores, texts, threshold=0.0, rng=random.Random(0), answers=answers)
    assert chosen.best_index == 2
    nothing = select([0.0, 0.0], ["", " "], threshold=0.0, rng=random.Random(0))
    assert not nothing.kept and nothing.drop_reason == NO_USABLE and nothing.rejected_index is None


def test_candidates_with_the_image_placeholder_are_never_chosen_or_rejected() -> None:
    # A literal <image> in an assistant turn makes the training record invalid (curate mix and training reject it).
    texts = ["A red <image> circle.", "A red circle.", "A blue square.", "A green <image> dot."]
    for seed in range(20):
        chosen = select([0.9, 0.8, 0.1, 0.0], texts, threshold=0.0, rng=random.Random(seed))
        assert (chosen.best_index, chosen.kept, chosen.rejected_index) == (1, True, 2)
    nothing = select([0.5, 0.5], ["<image>", "A <image>."], threshold=0.0, rng=random.Random(0))
    assert not nothing.kept and nothing.drop_reason == NO_USABLE and nothing.rejected_index is None


def test_answers_of_image_placeholder_candidates_do_not_make_the_majority() -> None:
    # Counted, "5" would win 2 to 1 and the usable "3" would be kept as if it were the majority's answer.
    texts = ["<image> The answer is 5.", "<image> The answer is 5.", "The answer is 3.", ""]
    decision = select([0.9, 0.9, 0.8, 0.0], texts, threshold=0.0, rng=random.Random(0), answers=["5", "5", "3", ""],
                      min_agreement=0.5)
    assert (decision.best_index, decision.majority_answer, decision.agreement) == (2, "3", 0.25)
    assert (decision.kept, decision.drop_reason) == (False, LOW_AGREEMENT)


@pytest.mark.parametrize("scores,lowest", [([0.9, 0.8, 0.7, 0.6, 0.5], {3, 4}), ([0.9, 0.8, 0.7], {2})])
def test_rejected_comes_from_the_lower_half_for_an_odd_count(scores, lowest):
    """With an odd N (cycle_quick uses 3) the rejected one comes from the lower half, not the median."""
    texts = [f"caption {i}" for i in range(len(scores))]
    drawn = {select(scores, texts, threshold=0.0, rng=random.Random(seed)).rejected_index for seed in range(60)}
    assert drawn == lowest


def test_against_an_unmarked_chosen_answer_marked_answers_are_not_preferred():
    """Against an unmarked chosen answer every differing answer may be rejected, marked or not."""
    answers = ["3", "3", "3", "4", "5"]
    explicit = [False, False, False, True, False]
    drawn = {select([0.9, 0.85, 0.8, 0.3, 0.2], [f"c{i}" for i in range(5)], threshold=0.0, rng=random.Random(seed),
                    answers=answers, explicit=explicit).rejected_index for seed in range(60)}
    assert drawn == {3, 4}
