"""Choosing, per record, the best candidate, whether it is kept, and the rejected one of a DPO pair."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sicog.curate.score import best_index, majority_answer
from sicog.data.prompts import IMAGE_TOKEN
from sicog.data.text import blank

SINGLE_CANDIDATE = "single candidate (no other candidate to agree with)"
BELOW_THRESHOLD = "best score below threshold"
LOW_AGREEMENT = "answer agreement below min-agreement"
NO_ANSWER = "no answer could be extracted"
TIED_ANSWERS = "no majority answer (answers tied for the top count)"
NO_USABLE = f"every candidate is empty or contains {IMAGE_TOKEN}"
A = TypeVar("A")  # an answer: its normalised text, or the parsed answer it comes from


def usable(text: str) -> bool:
    """Whether a candidate can be a training answer: not blank (invisible characters count as blank), and free of
    the image placeholder.

    A literal ``<image>`` in an assistant turn breaks the LLaVA record rules (one placeholder per image,
    human turns only), so training and ``curate mix`` would reject the record.
    """
    return not blank(text) and IMAGE_TOKEN not in text


def counted_answers(answers: Sequence[A], texts: Sequence[str], none: A = "") -> list[A]:
    """Each candidate's answer as the majority counts it: an unusable candidate's (see :func:`usable`) is
    ``none`` (the empty answer, in whatever form ``answers`` hold).

    Its answer is no vote: a majority carried by unusable candidates would let a usable candidate with another
    answer be chosen for it.
    """
    return [answer if usable(text) else none for answer, text in zip(answers, texts, strict=True)]


@dataclass(frozen=True)
class Selection:
    """The curation decision for one record."""

    best_index: int
    best_score: float | None
    kept: bool
    drop_reason: str | None
    rejected_index: int | None
    majority_answer: str | None = None
    agreement: float | None = None


def select(
    scores: Sequence[float | None],
    texts: Sequence[str],
    *,
    threshold: float,
    rng: random.Random,
    answers: Sequence[str] | None = None,
    explicit: Sequence[bool] | None = None,
    min_agreement: float = 0.0,
) -> Selection:
    """Decide one record: best candidate, kept or not (and why), and a rejected candidate for a pair.

    Captions (``answers`` is None): best = highest MBR score, kept when ``score >= threshold``.
    Reasoning: best = highest MBR score among the candidates giving the majority answer, kept when
    also ``agreement >= min_agreement``; answers tied for the top count make no majority, and the record
    is not kept. A rejected candidate is drawn (with ``rng``) from the lower-scoring half, never an
    unusable text (see :func:`usable`) or one identical to the chosen one; for reasoning never one giving
    the chosen answer, and preferably one whose answer an explicit marker introduced (``explicit``, one
    flag per candidate). Only kept records get one. An unusable candidate (empty, whitespace-only, or
    containing ``<image>``) is never the best one and its answer does not count toward the majority; a
    record without a usable candidate is not kept.
    """
    # An unusable candidate is never a training answer, whatever its score or the threshold.
    allowed = [usable(text) for text in texts]
    if answers is not None:
        answers = counted_answers(answers, texts)
    majority, agreement = (None, None) if answers is None else majority_answer(answers)
    agrees = allowed if answers is None else [ok and a == majority and a != "" for ok, a in zip(allowed, answers)]
    best = best_index(scores, agrees if any(agrees) else allowed)
    score = scores[best]
    has_answer = answers is None or any(answers)
    reason = drop_reason(
        score, threshold, has_usable=any(allowed), has_answer=has_answer,
        tied=has_answer and answers is not None and majority is None, agreement=agreement, min_agreement=min_agreement,
    )
    kept = reason is None
    rejected = _rejected(scores, texts, agrees, best, rng, answers=answers, explicit=explicit) if kept else None
    return Selection(best, score, kept, reason, rejected, majority, agreement)


def drop_reason(
    score: float | None,
    threshold: float,
    *,
    has_usable: bool = True,
    has_answer: bool = True,
    tied: bool = False,
    agreement: float | None = None,
    min_agreement: float = 0.0,
) -> str | None:
    """Why a record with this best score (and answer agreement) is not kept; ``None`` when it is.

    The rule is ``score >= threshold`` (and ``agreement >= min_agreement`` when there is one), on
    scores rounded as written in scored.jsonl; ``tied``: answers tied for the top count, no majority.
    """
    if score is None:
        return SINGLE_CANDIDATE
    if not has_usable:
        return NO_USABLE
    if not has_answer:
        return NO_ANSWER
    if tied:
        return TIED_ANSWERS
    if score < threshold:
        return BELOW_THRESHOLD
    if agreement is not None and agreement < min_agreement:
        return LOW_AGREEMENT
    return None


def _rejected(
    scores: Sequence[float | None],
    texts: Sequence[str],
    agrees: Sequence[bool],
    best: int,
    rng: random.Random,
    *,
    answers: Sequence[str] | None,
    explicit: Sequence[bool] | None,
) -> int | None:
    """Draw the rejected candidate from the lower half of the ranking (agreeing first, then by score)."""
    n = len(scores)
    ranking = sorted(range(n), key=lambda i: (not agrees[i], -_value(scores[i]), i))
    # An unusable candidate is no answer to prefer the chosen one over: DPO training refuses an empty rejected
    # one and one containing <image>. Nor is a candidate giving the chosen answer, however it reasons: the pair
    # would teach the model to prefer one right answer over the same answer.
    # A caption pair prefers the chosen one for its higher score alone: a candidate scoring as high (both of N = 2
    # always do) would teach a preference for the first sample drawn. A reasoning pair prefers an answer.
    others = [
        i for i in ranking
        if i != best and usable(texts[i]) and texts[i].strip() != texts[best].strip()
        and (_value(scores[i]) < _value(scores[best]) if answers is None else answers[i] != answers[best])
    ]
    lower = [i for i in ranking[n - max(1, n // 2) :] if i in others] or others
    if not lower:
        return None
    return rng.choice(marked_first(lower, explicit, explicit is not None and explicit[best]))


def marked_first(candidates: list[int], explicit: Sequence[bool] | Mapping[int, bool] | None,
                 chosen_marked: bool) -> list[int]:
    """Of ``candidates`` (indices of answers that differ from the chosen one), those whose answer a marker
    introduced (``explicit``), when the chosen answer's was too and there are any; else all. An answer read from a
    last sentence may be the chosen one in other words ("There are three cubes." against "3"), and against an
    unmarked chosen answer every marked one looks different."""
    marked = [i for i in candidates if explicit is not None and explicit[i]] if chosen_marked else []
    return marked or candidates


def _value(score: float | None) -> float:
    return float("-inf") if score is None else score


def record_rng(seed: int, record_id: str) -> random.Random:
    """A generator seeded by the run's seed and the record id: the draw does not depend on record order."""
    return random.Random(f"{seed}:{record_id}")
