"""Choosing, per record, the best candidate, whether it is kept, and the rejected one of a DPO pair."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from sicog.curate.score import best_index, majority_answer
from sicog.data.prompts import IMAGE_TOKEN

SINGLE_CANDIDATE = "single candidate (no other candidate to agree with)"
BELOW_THRESHOLD = "best score below threshold"
LOW_AGREEMENT = "answer agreement below min-agreement"
NO_ANSWER = "no answer could be extracted"
NO_USABLE = f"every candidate is empty or contains {IMAGE_TOKEN}"


def usable(text: str) -> bool:
    """Whether a candidate can be a training answer: not blank, and free of the image placeholder.

    A literal ``<image>`` in an assistant turn breaks the LLaVA record rules (one placeholder per image,
    human turns only), so training and ``curate mix`` would reject the record.
    """
    return bool(text.strip()) and IMAGE_TOKEN not in text


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
    min_agreement: float = 0.0,
) -> Selection:
    """Decide one record: best candidate, kept or not (and why), and a rejected candidate for a pair.

    Captions (``answers`` is None): best = highest MBR score, kept when ``score >= threshold``.
    Reasoning: best = highest MBR score among the candidates giving the majority answer, kept when
    also ``agreement >= min_agreement``. A rejected candidate is drawn (with ``rng``) from the
    lower-scoring half, preferring candidates whose answer differs from the majority, and never an
    unusable text (see :func:`usable`) or one identical to the chosen one; only kept records get one. An
    unusable candidate (empty, whitespace-only, or containing ``<image>``) is never the best one and its
    answer does not count toward the majority; a record without a usable candidate is not kept.
    """
    # An unusable candidate is never a training answer, whatever its score or the threshold.
    allowed = [usable(text) for text in texts]
    if answers is not None:
        # Its answer is no vote either: a majority carried by unusable candidates would let a usable
        # candidate with another answer be chosen for it.
        answers = [answer if ok else "" for answer, ok in zip(answers, allowed)]
    majority, agreement = (None, None) if answers is None else majority_answer(answers, scores)
    agrees = allowed if answers is None else [ok and a == majority and a != "" for ok, a in zip(allowed, answers)]
    best = best_index(scores, agrees if any(agrees) else allowed)
    score = scores[best]
    reason = drop_reason(
        score, threshold, has_usable=any(allowed),
        has_answer=answers is None or majority is not None, agreement=agreement, min_agreement=min_agreement,
    )
    kept = reason is None
    rejected = _rejected(scores, texts, agrees, best, rng) if kept else None
    return Selection(best, score, kept, reason, rejected, majority, agreement)


def drop_reason(
    score: float | None,
    threshold: float,
    *,
    has_usable: bool = True,
    has_answer: bool = True,
    agreement: float | None = None,
    min_agreement: float = 0.0,
) -> str | None:
    """Why a record with this best score (and answer agreement) is not kept; ``None`` when it is.

    The rule is ``score >= threshold`` (and ``agreement >= min_agreement`` when there is one), on
    scores rounded as written in scored.jsonl.
    """
    if score is None:
        return SINGLE_CANDIDATE
    if not has_usable:
        return NO_USABLE
    if not has_answer:
        return NO_ANSWER
    if score < threshold:
        return BELOW_THRESHOLD
    if agreement is not None and agreement < min_agreement:
        return LOW_AGREEMENT
    return None


def _rejected(
    scores: Sequence[float | None], texts: Sequence[str], agrees: Sequence[bool], best: int, rng: random.Random
) -> int | None:
    """Draw the rejected candidate from the lower half of the ranking (agreeing first, then by score)."""
    n = len(scores)
    ranking = sorted(range(n), key=lambda i: (not agrees[i], -_value(scores[i]), i))
    # An unusable candidate is no answer to prefer the chosen one over: DPO training refuses an empty rejected
    # one and one containing <image>.
    others = [i for i in ranking if i != best and usable(texts[i]) and texts[i].strip() != texts[best].strip()]
    lower = [i for i in ranking[n - max(1, n // 2) :] if i in others] or others
    if not lower:
        return None
    disagreeing = [i for i in lower if not agrees[i]]
    return rng.choice(disagreeing or lower)


def _value(score: float | None) -> float:
    return float("-inf") if score is None else score


def record_rng(seed: int, record_id: str) -> random.Random:
    """A generator seeded by the run's seed and the record id: the draw does not depend on record order."""
    return random.Random(f"{seed}:{record_id}")
