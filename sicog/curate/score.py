"""Self-consistency scores: MBR (mean cosine similarity to the other candidates) and answer agreement."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

# Scores are written and compared with this many decimals, so that the threshold decision is exactly
# the one a reader can reproduce from scored.jsonl (no 0.8999999 vs 0.9 surprises).
SCORE_DECIMALS = 6


def mbr_scores(embeddings: np.ndarray, *, include_self: bool = False) -> list[float | None]:
    """Each candidate's mean cosine similarity to the other candidates of its record.

    ``embeddings`` is ``(n_candidates, dim)``; rows are L2-normalised here in float64 (zero rows stay
    zero and score 0 against everything). With ``include_self`` the mean runs over all candidates,
    itself included, as the published scripts did. A record with a single candidate has no other
    candidate to agree with: its score is ``None`` unless ``include_self`` (then 1.0).
    """
    vectors = np.asarray(embeddings, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"expected a non-empty (n_candidates, dim) matrix, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    similarity = unit @ unit.T
    n = len(unit)
    if include_self:
        means = similarity.sum(axis=1) / n
    elif n == 1:
        return [None]
    else:
        means = (similarity.sum(axis=1) - np.diag(similarity)) / (n - 1)
    return [round(float(value), SCORE_DECIMALS) for value in means]


def score_formula(include_self: bool) -> str:
    """What a score of :func:`mbr_scores` averages, in words (for the report and the command's summary line)."""
    return ("mean cosine similarity to all candidates, itself included" if include_self
            else "mean cosine similarity to the other candidates")


def best_index(scores: Sequence[float | None], eligible: Sequence[bool] | None = None) -> int:
    """Index of the highest score among eligible candidates (first one on ties; ``None`` ranks lowest)."""
    allowed = [i for i in range(len(scores)) if eligible is None or eligible[i]] or list(range(len(scores)))
    return max(allowed, key=lambda i: (_rank_value(scores[i]), -i))


def _rank_value(score: float | None) -> float:
    return float("-inf") if score is None else score


def majority_answer(answers: Sequence[str]) -> tuple[str | None, float]:
    """The most frequent non-empty normalised answer and its share of all candidates.

    When two answers tie for the top count the candidates did not settle on an answer: the majority is
    ``None`` (the share is still the top count's). Empty answers (nothing could be extracted) never win but
    count in the denominator.
    """
    counts = Counter(answer for answer in answers if answer)
    if not counts:
        return None, 0.0
    (winner, top), *rest = counts.most_common()
    share = round(top / len(answers), SCORE_DECIMALS)
    return (None if rest and rest[0][1] == top else winner), share
