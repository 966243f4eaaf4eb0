"""Scoring against the toy world's ground truth: multiple-choice answers, short answers and captions.

Answers are read with the project's one extractor, :mod:`sicog.data.answers` (``extract_choice`` and
``answer_matches`` are re-exported here): the final answer is taken from "The answer is X" (or CoT
step 4, or the whole reply); a choice is accepted as "B", "(B)", "B. red", "Option B" or the option's
text; "A or B" is wrong. Captions are parsed with the toy language's own phrase tables: objects are
(colour, shape) mentions, and the size, position and label said after a mention, up to the next object or
dot, belong to it; a corner dot is named (in any sentence) or denied ("There is no dot").
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from sicog.data.answers import answer_matches, extract_choice
from sicog.data.jsonl import RecordError, iter_records
from sicog.toy.answers import LETTERS
from sicog.toy.language import (
    BACKGROUND_WORDS,
    NO_LABEL_PREDICATES,
    NO_PERIPHERAL,
    POSITION_PHRASES,
    SHAPE_WORDS,
    SIZE_WORDS,
)
from sicog.toy.world import COLORS, CORNERS

ATTRIBUTES = ("size", "position", "label")
__all__ = [
    "answer_matches",
    "extract_choice",
    "load_ground_truth",
    "parse_caption",
    "score_caption",
    "score_captions",
    "summarize_captions",
    "score_mc",
]


def _alternation(words: Iterable[str]) -> str:
    # Longest first, so "in the middle left" wins over "in the middle".
    return "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w)))


def _inverse(table: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return {phrase.lower(): key for key, phrases in table.items() for phrase in phrases}


# A short reply names the middle size by its key ("The red circle is medium.", sicog.toy.questions), which the
# language's caption wordings do not use.
_SIZE = {**_inverse(SIZE_WORDS), "medium": "medium"}
_SHAPE = _inverse(SHAPE_WORDS)
_POSITION = _inverse(POSITION_PHRASES)
_BACKGROUND = _inverse(BACKGROUND_WORDS)
_MENTION = re.compile(
    rf"\b(?:(?P<size>{_alternation(_SIZE)})\s+)?(?P<color>{_alternation(COLORS)})"
    rf"\s+(?P<shape>{_alternation(_SHAPE)})\b",
    re.IGNORECASE,
)
_POSITION_RE = re.compile(rf"\b(?:{_alternation(_POSITION)})\b", re.IGNORECASE)
_SIZE_PREDICATE = re.compile(rf"\bis\s+({_alternation(_SIZE)})\b", re.IGNORECASE)
# The words in front of the digit in every phrase of LABEL_AFTER_NAME and LABEL_PREDICATES.
_LABEL_RE = re.compile(r"\b(?:labell?ed|number|digit|with a|has a)\s+(\d+)\b", re.IGNORECASE)
_NO_LABEL_RE = re.compile(rf"\b(?:{_alternation(NO_LABEL_PREDICATES)}|no number|no label|unlabell?ed)\b", re.IGNORECASE)
_BACKGROUND_RE = re.compile(rf"\b({_alternation(_BACKGROUND)})\s+(?:background|backdrop)\b", re.IGNORECASE)
_DOT_RE = re.compile(rf"\b({_alternation(COLORS)})\s+dot\b", re.IGNORECASE)
# "There is no dot" ("no red dot": none of that colour), and the language's sentences that say so along with
# other things.
_NO_DOT_RE = re.compile(rf"\bno\s+(?:(?P<color>{_alternation(COLORS)})\s+)?dots?\b"
                        rf"|\b(?:{_alternation(s.rstrip('.') for s in NO_PERIPHERAL)})\b", re.IGNORECASE)
_CORNER_RE = re.compile(rf"\b({_alternation(CORNERS)})\s+corner\b", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\n+")


# ----------------------------------------------------------------------------------------- answers


def score_mc(predictions: Mapping[str, str], rows: Sequence[Mapping[str, object]]) -> dict:
    """Accuracy overall and per category of ``predictions`` (index -> reply) on benchmark ``rows``.

    A row without a prediction counts as wrong and is counted in ``missing``.
    """
    items, by_category = [], {}
    for number, row in enumerate(rows, start=1):
        for field in ("index", "answer", "category"):
            if field not in row:
                raise RecordError("benchmark row lacks a column", line=number, record_id=row.get("index"), field=field)
        index = str(row["index"])
        prediction = predictions.get(index)
        options = {k: row.get(k) for k in LETTERS}
        choice = None if prediction is None else extract_choice(prediction, options)
        correct = choice is not None and choice == str(row["answer"]).strip()
        items.append(
            {
                "index": index,
                "category": row["category"],
                "prediction": prediction,
                "choice": choice,
                "answer": row["answer"],
                "correct": correct,
            }
        )
        stats = by_category.setdefault(str(row["category"]), {"correct": 0, "total": 0})
        stats["correct"] += correct
        stats["total"] += 1
    for stats in by_category.values():
        stats["accuracy"] = stats["correct"] / stats["total"]
    correct = sum(item["correct"] for item in items)
    return {
        "accuracy": correct / len(items) if items else 0.0,
        "correct": correct,
        "total": len(items),
        "missing": sum(item["prediction"] is None for item in items),
        "by_category": dict(sorted(by_category.items())),
        "items": items,
    }


# ----------------------------------------------------------------------------------------- captions


def parse_caption(text: str) -> dict:
    """Read a toy caption: ``{"objects": {name: {attribute: [stated values]}}, "background": [...], "mark": [...]}``.

    A stated label of None means the caption said the object has no number. A mark claim is ``(colour, corner,
    present)``: a dot named (``present`` true; corner None when the caption gives none) or denied (false; colour
    None for "no dot" at all, a colour for "no red dot").
    """
    objects: dict[str, dict[str, list]] = {}
    backgrounds, marks = [], []
    for sentence in _SENTENCE_END.split(text):
        backgrounds += [_BACKGROUND[m.lower()] for m in _BACKGROUND_RE.findall(sentence)]
        denials = list(_NO_DOT_RE.finditer(sentence))
        marks += [(d.group("color") and d.group("color").lower(), None, False) for d in denials]
        denied = [d.span() for d in denials]
        mentions = list(_MENTION.finditer(sentence))
        dots = [d for d in _DOT_RE.finditer(sentence) if not any(a <= d.start() < b for a, b in denied)]
        starts = sorted(m.start() for m in (*mentions, *dots))
        for dot in dots:
            # "The top left corner holds a small red dot." names the corner first: read alone, no object's place.
            corner = _CORNER_RE.search(_said_of(dot, sentence, starts)) or (
                None if mentions else _CORNER_RE.search(sentence))
            marks.append((dot.group(1).lower(), corner.group(1).lower() if corner else None, True))
        for mention in mentions:
            name = f"{mention.group('color').lower()} {_SHAPE[mention.group('shape').lower()]}"
            facts = objects.setdefault(name, {a: [] for a in ATTRIBUTES})
            said = _said_of(mention, sentence, starts)
            # Every value said of the object counts: "correct" means all of them are true.
            sizes = [mention.group("size")] if mention.group("size") else []
            facts["size"] += [_SIZE[size.lower()] for size in sizes + _SIZE_PREDICATE.findall(said)]
            facts["position"] += [_POSITION[position.lower()] for position in _POSITION_RE.findall(said)]
            facts["label"] += [int(label) for label in _LABEL_RE.findall(said)]
            if _NO_LABEL_RE.search(said):
                facts["label"].append(None)
    return {"objects": objects, "background": backgrounds, "mark": marks}


def _said_of(match: re.Match, sentence: str, starts: list[int]) -> str:
    """What ``sentence`` says after an object or dot mention, up to the next one (whose ``starts`` are given)."""
    return sentence[match.end():next((s for s in starts if s > match.start()), len(sentence))]


def _mark_true(claim: tuple[str | None, str | None, bool], mark: Mapping | None) -> bool:
    """Whether one mark claim of :func:`parse_caption` is true of the image's ``mark`` (None: it has none)."""
    colour, corner, present = claim
    named = mark is not None and colour in (None, mark["color"]) and corner in (None, mark["corner"])
    return named if present else not named


def score_caption(text: str, ground_truth: Mapping) -> dict:
    """Score one caption against one ground-truth record (a line of ground_truth.jsonl).

    Object precision and recall are over distinct (colour, shape) names; ``hallucinated`` counts
    named objects that are not in the image. An attribute of a found object is "stated" when the
    caption says it, and "correct" when everything it says about it is true. For a CoD caption,
    score step 5 alone with ``sicog.data.steps.final_step`` if the description itself is wanted.
    """
    parsed = parse_caption(text)
    truth = {o["name"]: o for o in ground_truth["objects"]}
    mentioned = set(parsed["objects"])
    matched = mentioned & set(truth)
    precision = len(matched) / len(mentioned) if mentioned else 0.0
    recall = len(matched) / len(truth) if truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    attributes = {a: {"stated": 0, "correct": 0} for a in ATTRIBUTES}
    for name in sorted(matched):
        for attribute, values in parsed["objects"][name].items():
            if values:
                attributes[attribute]["stated"] += 1
                attributes[attribute]["correct"] += all(v == truth[name][attribute] for v in values)
    backgrounds = parsed["background"]
    mark = ground_truth.get("mark")
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "objects": len(truth),
        "mentioned": len(mentioned),
        "matched": len(matched),
        "hallucinated": len(mentioned - set(truth)),
        "attributes": attributes,
        "attribute_accuracy": {a: (s["correct"] / s["stated"] if s["stated"] else None) for a, s in attributes.items()},
        "background": None if not backgrounds else all(b == ground_truth["background"] for b in backgrounds),
        "mark": None if not parsed["mark"] else all(_mark_true(m, mark) for m in parsed["mark"]),
    }


def score_captions(pairs: Iterable[tuple[str, Mapping]]) -> dict:
    """Aggregate :func:`score_caption` over ``(caption, ground_truth)`` pairs.

    Precision, recall and F1 are averaged over captions; attribute accuracy pools every stated
    attribute; background and mark accuracy are over the captions that state them.
    """
    return summarize_captions([score_caption(text, truth) for text, truth in pairs])


def summarize_captions(scores: Sequence[Mapping]) -> dict:
    """What :func:`score_captions` gives, from captions already scored by :func:`score_caption`."""
    n = len(scores)
    pooled = {a: {k: sum(s["attributes"][a][k] for s in scores) for k in ("stated", "correct")} for a in ATTRIBUTES}

    def rate(key: str) -> float | None:
        stated = [s[key] for s in scores if s[key] is not None]
        return sum(stated) / len(stated) if stated else None

    return {
        "captions": n,
        "precision": sum(s["precision"] for s in scores) / n if n else 0.0,
        "recall": sum(s["recall"] for s in scores) / n if n else 0.0,
        "f1": sum(s["f1"] for s in scores) / n if n else 0.0,
        "hallucinated": sum(s["hallucinated"] for s in scores),
        "hallucinated_per_caption": sum(s["hallucinated"] for s in scores) / n if n else 0.0,
        "attribute_accuracy": {a: (p["correct"] / p["stated"] if p["stated"] else None) for a, p in pooled.items()},
        "attributes": pooled,
        "background_accuracy": rate("background"),
        "mark_accuracy": rate("mark"),
    }


def load_ground_truth(path: str | os.PathLike) -> dict[str, dict]:
    """ground_truth.jsonl as a dict: image path (relative to the image folder) -> record.

    A record without the fields scoring needs raises :class:`RecordError` naming file, line and field.
    """
    truth = {}
    for line, record in iter_records(path):
        for field in ("image", "background", "objects"):
            if field not in record:
                raise RecordError("missing ground-truth field", path=path, line=line, field=field)
        truth[record["image"]] = record
    return truth
