"""What only the toy world can tell: is the self-consistency score a good judge of correctness?

For every generated candidate the ground truth says whether it is right. A caption is judged by the
description it ends with (the step curation reads): right when it names every object and nothing else,
and, stricter, right in every fact when every size, place, label, background and mark it states is true
too. A reasoning candidate is right when its final answer is. From that: how well the MBR score ranks
right above wrong candidates (AUROC), how often the data each arm trains on is right, and how much of
what the caption candidates say is true, fact by fact: all of them, the random pick and the curated ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sicog.curate.extract import extract
from sicog.curate.random_pick import random_index
from sicog.curate.select import usable
from sicog.data.answers import normalize_answer
from sicog.data.jsonl import iter_records
from sicog.toy.score import score_caption, summarize_captions


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Probability that a random right candidate outscores a random wrong one (ties count half)."""
    pos = np.array([s for s, y in zip(scores, labels) if y], dtype=float)
    neg = np.array([s for s, y in zip(scores, labels) if not y], dtype=float)
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def objects_right(check: dict) -> bool:
    """Whether a caption scored by :func:`sicog.toy.score.score_caption` names every object and nothing else."""
    return check["f1"] == 1.0 and check["hallucinated"] == 0


def caption_right(check: dict) -> bool:
    """Whether a scored caption is wholly true: :func:`objects_right`, and every attribute, the background and
    the mark it states are the image's."""
    return (objects_right(check) and all(a["correct"] == a["stated"] for a in check["attributes"].values())
            and check["background"] is not False and check["mark"] is not False)


def _share(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def _ranking(records: list[dict], right: list[list[bool]], seed: int) -> dict:
    """AUROC of the MBR score and the share of right texts among all, random, best and curated candidates."""
    scores, labels, kept, random_pick, chosen_any = [], [], [], [], []
    for record, ok in zip(records, right, strict=True):
        for score, good in zip(record["scores"], ok):
            if score is not None:
                scores.append(score)
                labels.append(good)
        pick = random_index(record["candidates"], record["id"], seed)
        if pick is not None:  # arm C skips a record without a usable candidate
            random_pick.append(ok[pick])
        if record.get("best_index") is not None:
            chosen_any.append(ok[record["best_index"]])
        if record.get("kept"):
            kept.append(ok[record["best_index"]])
    return {
        "auroc": auroc(scores, labels),
        "candidates": len(labels),
        "right_share_all_candidates": _share(labels),
        "right_share_random_candidate": _share(random_pick),
        "right_share_best_candidate": _share(chosen_any),
        "right_share_curated": _share(kept),
        "kept": len(kept),
        "records": len(records),
    }


def curation_quality(scored: Path, task: str, truth: dict[str, dict], seed: int) -> dict:
    """:func:`_ranking` of a curation step's scored records; for captions (right: every object named and
    nothing else) also ``every_fact`` (right in every fact) and :func:`candidate_facts` of all candidates
    (``candidate_facts``) and, in ``candidate_facts_by_pick``, of a random pick per record and of the curated
    ones: which facts curation makes more often true."""
    records = [record for _, record in iter_records(scored)]
    if task != "captions":
        right = [[a == normalize_answer(str(r["answer"])) for a in r["candidate_answers"]] for r in records]
        return _ranking(records, right, seed)
    checks = [[score_caption(extract(c, "captions").text, truth[r["image"]]) for c in r["candidates"]]
              for r in records]
    quality = _ranking(records, [[objects_right(c) for c in cs] for cs in checks], seed)
    quality["every_fact"] = _ranking(records, [[caption_right(c) for c in cs] for cs in checks], seed)
    # Over the usable candidates, as the random pick is: a blank or unusable candidate states no fact.
    quality["candidate_facts"] = _facts([c for r, cs in zip(records, checks, strict=True)
                                         for c, text in zip(cs, r["candidates"], strict=True) if usable(text)])
    quality["candidate_facts_by_pick"] = {
        "random": _facts([cs[pick] for r, cs in zip(records, checks, strict=True)
                          if (pick := random_index(r["candidates"], r["id"], seed)) is not None]),
        "curated": _facts([cs[r["best_index"]] for r, cs in zip(records, checks, strict=True) if r.get("kept")])}
    return quality


def candidate_facts(pairs: list[tuple[str, dict]]) -> dict | None:
    """How much of what the generator's candidates say is true, fact by fact: the perception model's accuracy."""
    return _facts([score_caption(text, truth) for text, truth in pairs])


def _facts(checks: list[dict]) -> dict | None:
    """:func:`candidate_facts` of captions already scored by :func:`~sicog.toy.score.score_caption`; None for
    none (not measured, shown as n/a)."""
    if not checks:
        return None
    scores = summarize_captions(checks)
    return {"object_precision": scores["precision"], "object_recall": scores["recall"],
            **{k: v for k, v in scores["attribute_accuracy"].items() if v is not None},
            "background": scores["background_accuracy"]}
