"""What only the toy world can tell: is the self-consistency score a good judge of correctness?

For every generated candidate the ground truth says whether it is right (captions: every object named
and nothing invented; reasoning: the right final answer). From that: how well the MBR score ranks right
above wrong candidates (AUROC), how often the data each arm trains on is right, and how much of what the
caption candidates say is true, fact by fact.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from sicog.data.answers import normalize_answer
from sicog.data.jsonl import iter_records
from sicog.toy.score import score_caption, score_captions


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Probability that a random right candidate outscores a random wrong one (ties count half)."""
    pos = np.array([s for s, y in zip(scores, labels) if y], dtype=float)
    neg = np.array([s for s, y in zip(scores, labels) if not y], dtype=float)
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def curation_quality(scored: Path, task: str, truth: dict[str, dict], seed: int) -> dict:
    """AUROC of the MBR score and the share of right texts among curated, random and all candidates."""
    scores, labels, kept, random_pick, chosen_any, pairs = [], [], [], [], [], []
    for _, record in iter_records(scored):
        if task == "captions":
            gt = truth[record["image"]]
            pairs += [(c, gt) for c in record["candidates"]]
            checks = [score_caption(c, gt) for c in record["candidates"]]
            right = [c["f1"] == 1.0 and c["hallucinated"] == 0 for c in checks]
        else:
            target = normalize_answer(str(record["answer"]))
            right = [a == target for a in record["answers"]]
        for score, ok in zip(record["scores"], right):
            if score is not None:
                scores.append(score)
                labels.append(ok)
        pick = random.Random(f"{seed}/{record['id']}").randrange(len(record["candidates"]))
        random_pick.append(right[pick])
        if record.get("best_index") is not None:
            chosen_any.append(right[record["best_index"]])
        if record.get("kept"):
            kept.append(right[record["best_index"]])
    quality = {
        "auroc": auroc(scores, labels),
        "candidates": len(labels),
        "right_share_all_candidates": _share(labels),
        "right_share_random_candidate": _share(random_pick),
        "right_share_best_candidate": _share(chosen_any),
        "right_share_curated": _share(kept),
        "kept": len(kept),
        "records": len(random_pick),
    }
    if pairs:
        quality["candidate_facts"] = candidate_facts(pairs)
    return quality


def candidate_facts(pairs: list[tuple[str, dict]]) -> dict:
    """How much of what the generator's candidates say is true, fact by fact: the perception model's accuracy."""
    scores = score_captions(pairs)
    return {"object_precision": scores["precision"], "object_recall": scores["recall"],
            **{k: v for k, v in scores["attribute_accuracy"].items() if v is not None},
            "background": scores["background_accuracy"]}
