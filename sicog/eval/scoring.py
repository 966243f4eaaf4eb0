"""Scoring predictions on a benchmark: one scored item per row, accuracy overall and by category, and the
number VLMEvalKit reports for the benchmark (the ``headline``).

Accuracy is over the rows that have both a prediction and a ground-truth answer. Rows that could not
be evaluated (an unusable image, an answer that is not an option) are counted in ``errors`` and
listed with their reasons, never silently scored as wrong or dropped; a prediction from which no
answer can be read counts as wrong and is counted in ``no_answer``. Multiple-choice rows asked without
their options are scored as open short answers (:mod:`sicog.eval.short_answers`).

Where VLMEvalKit rates a benchmark otherwise, its way is followed, the benchmark known by its name (the file
name without extension) as VLMEvalKit knows a dataset by its name:

- yes/no benchmarks also get precision, recall and F1 with "yes" as the positive answer. A POPE benchmark
  stores a question asked in several of its splits once, its ``category`` naming them comma-separated
  (``adversarial,popular``): as VLMEvalKit's ``POPE_rating`` does, each such row counts once in each of its
  splits, in ``by_category`` and in these rates, and F1 is the headline;
- MMBench-style benchmarks hold each question with its CircularEval copies (the options rotated, index
  ``i + k * 1e6``): as VLMEvalKit's ``mcq_circular_eval`` does, a question is right only when it and every
  copy are right, and this circular accuracy is the headline.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping

from sicog.data.answers import extract_choice, extract_yes_no
from sicog.eval.short_answers import ShortAnswers
from sicog.eval.tsv import MULTIPLE_CHOICE, YES_NO, Benchmark, is_missing, row_options

UNCATEGORIZED = "(none)"
YES = "yes"
# VLMEvalKit numbers a question's CircularEval copies index + k * 1e6 and groups rows by their g_index column, or
# where there is none by index % 1e6 (its `vlmutil circular` writes g_index, with copies 1e7 apart for larger indices).
CIRCULAR_OFFSET = 1_000_000
# VLMEvalKit evaluates a multiple-choice dataset circularly when its name holds one of these, in any case
# (ImageMCQDataset.evaluate_heuristic); nothing in the rows says so.
CIRCULAR_NAMES = ("mmbench", "ccbench", "circular", "mmcr")


def _extracted(prediction: str, row: Mapping[str, str], kind: str) -> str | None:
    if kind == MULTIPLE_CHOICE:
        return extract_choice(prediction, row_options(dict(row)))
    return extract_yes_no(prediction)


def _truth(row: Mapping[str, str], kind: str) -> str | None:
    answer = row.get("answer")
    if is_missing(answer):
        return None
    return answer.strip() if kind == MULTIPLE_CHOICE else answer.strip().lower()


def score_items(benchmark: Benchmark, predictions: Mapping[str, str], errors: Mapping[str, str],
                short_answers: ShortAnswers | None = None) -> list[dict]:
    """One item per benchmark row, in file order: the row's text fields, its prediction, the answer read
    from it (``extracted``), ``correct`` (None when unscored) and ``error`` (the reason, for failed rows).

    With ``short_answers`` the predictions are open short answers: ``answer`` and ``extracted`` are then the
    canonical texts of the right option and of the reply."""
    items = []
    for row in benchmark.rows:
        index = row["index"]
        prediction = predictions.get(index)
        if short_answers is None:
            truth = _truth(row, benchmark.kind)
            extracted = None if prediction is None else _extracted(prediction, row, benchmark.kind)
        else:
            truth = short_answers.truth(row)
            extracted = None if prediction is None else short_answers.reply(prediction)
        correct = None if prediction is None or truth is None else extracted == truth
        item = {k: v for k, v in row.items() if k not in ("image", "answer")}
        item.update(
            answer=truth,
            prediction=prediction,
            extracted=extracted,
            correct=correct,
            error=errors.get(index),
        )
        items.append(item)
    return items


def rated_as_pope(name: str) -> bool:
    """Whether VLMEvalKit rates a yes/no benchmark of this name with ``POPE_rating``: its name holds "POPE"
    (in that case) and neither "MME" nor "Hallusion", whose ratings VLMEvalKit tries first."""
    return "POPE" in name and "MME" not in name and "Hallusion" not in name


def evaluated_circularly(name: str) -> bool:
    """Whether VLMEvalKit evaluates a multiple-choice benchmark of this name circularly (MMBench, CCBench, ...)."""
    return any(part in name.lower() for part in CIRCULAR_NAMES)


def _accuracy(items: Iterable[dict]) -> dict:
    scored = [item for item in items if item["correct"] is not None]
    correct = sum(item["correct"] for item in scored)
    return {"correct": correct, "scored": len(scored), "accuracy": correct / len(scored) if scored else None}


def _yes_no_rates(items: list[dict]) -> dict:
    """Accuracy, and precision, recall and F1 with "yes" as positive, over the scored items (None when none
    is scored). An undefined precision or recall (nothing predicted or labelled yes) is 0, as in VLMEvalKit."""
    scored = [item for item in items if item["correct"] is not None]
    rates = {"precision": None, "recall": None, "f1": None}
    if scored:
        pairs = [(item["answer"] == YES, item["extracted"] == YES) for item in scored]
        hits = sum(truth and said for truth, said in pairs)
        said_yes, truly_yes = sum(said for _, said in pairs), sum(truth for truth, _ in pairs)
        precision = hits / said_yes if said_yes else 0.0
        recall = hits / truly_yes if truly_yes else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rates = {"precision": precision, "recall": recall, "f1": f1}
    return {**_accuracy(scored), **rates}


def _categories(item: Mapping, column: str, per_split: bool) -> list[str]:
    """The groups an item counts in: its ``column`` value, or with ``per_split`` each comma-separated part."""
    value = item.get(column)
    if is_missing(value):
        return [UNCATEGORIZED]
    name = str(value).strip()
    if not per_split:
        return [name]
    return [part.strip() for part in name.split(",") if part.strip()] or [UNCATEGORIZED]


def _groups(items: list[dict], column: str, per_split: bool = False) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        for name in _categories(item, column, per_split):
            groups.setdefault(name, []).append(item)
    return dict(sorted(groups.items()))


def _grouped(items: list[dict], column: str, per_split: bool = False) -> dict[str, dict]:
    return {name: _accuracy(group) for name, group in _groups(items, column, per_split).items()}


def _circular_key(item: Mapping[str, str]) -> tuple[int | str, bool]:
    """The question a row belongs to (its ``g_index``, else ``index % 1e6``) and whether the row is the question
    itself rather than a copy (its index is the question's). VLMEvalKit requires integer indices; a row with another
    index is a question without copies."""
    try:
        number = int(item["index"])
    except ValueError:
        return item["index"], True
    key, group = number % CIRCULAR_OFFSET, item.get("g_index")
    if not is_missing(group):
        with contextlib.suppress(ValueError):  # a whole number, also as pandas writes a column with gaps ("1.0")
            value = float(group)
            key = int(value) if value.is_integer() else key
    return key, number == key


def circular_questions(items: list[dict]) -> list[dict]:
    """One item per question, as VLMEvalKit's circular evaluation groups rows: a row whose index is its question's
    (:func:`_circular_key`) and every other row of that question (its copies); copies of no such row are left out,
    as there.
    ``correct``: whether every row of the group is right; None when one of them is unscored (no prediction, an
    error, no answer key), since the question's result is then unknown. The question row's ``index``,
    ``category`` and ``l2-category`` are kept."""
    groups: dict[int | str, list[dict]] = {}
    keyed = [(item, *_circular_key(item)) for item in items]
    for item, key, own in keyed:
        if own:
            groups.setdefault(key, []).append(item)
    for item, key, own in keyed:
        if not own and key in groups:
            groups[key].append(item)
    questions = []
    for group in groups.values():
        results = [item["correct"] for item in group]
        question = {k: group[0][k] for k in ("index", "category", "l2-category") if k in group[0]}
        question["correct"] = None if None in results else all(results)
        questions.append(question)
    return questions


def _yes_no(items: list[dict], pope: bool) -> dict:
    """Accuracy, precision, recall and F1 overall and by category, each item counted once in each group it
    is in (once per split for POPE, else once)."""
    groups = _groups(items, "category", per_split=pope)
    counted = [item for group in groups.values() for item in group]
    return {**_yes_no_rates(counted), "by_category": {name: _yes_no_rates(group) for name, group in groups.items()}}


def _circular(items: list[dict], l2: bool) -> dict:
    """Circular accuracy over :func:`circular_questions`, overall and by category (and l2-category)."""
    questions = circular_questions(items)
    result = {"questions": len(questions), **_accuracy(questions), "by_category": _grouped(questions, "category")}
    if l2:
        result["by_l2_category"] = _grouped(questions, "l2-category")
    return result


def summarize(benchmark: Benchmark, items: list[dict]) -> dict:
    """Accuracy overall and by ``category`` (and ``l2-category`` when the benchmark has it), counts, the
    failed rows with their reasons, and the ``headline``: the metric VLMEvalKit reports for the benchmark
    and its value. Yes/no benchmarks add ``yes_no`` (accuracy, precision, recall and F1 overall and by
    category; a POPE benchmark's rows counted once per split), circularly evaluated ones ``circular``."""
    columns = benchmark.rows[0].keys() if benchmark.rows else ()
    pope = benchmark.kind == YES_NO and rated_as_pope(benchmark.name)
    extra = {}
    if benchmark.kind == YES_NO:
        extra["yes_no"] = _yes_no(items, pope)
    elif evaluated_circularly(benchmark.name):
        extra["circular"] = _circular(items, "l2-category" in columns)
    accuracy = _accuracy(items)
    if pope:
        headline = {"metric": "f1", "value": extra["yes_no"]["f1"]}
    elif "circular" in extra:
        headline = {"metric": "circular_accuracy", "value": extra["circular"]["accuracy"]}
    else:
        headline = {"metric": "accuracy", "value": accuracy["accuracy"]}
    summary = {
        "benchmark": str(benchmark.path),
        "kind": benchmark.kind,
        "headline": headline,
        "total": len(items),
        **accuracy,
        "predicted": sum(item["prediction"] is not None for item in items),
        "no_answer": sum(item["prediction"] is not None and item["extracted"] is None for item in items),
        "no_ground_truth": sum(item["prediction"] is not None and item["answer"] is None for item in items),
        "errors": sum(item["error"] is not None for item in items),
        "by_category": _grouped(items, "category", per_split=pope),
    }
    if "l2-category" in columns:
        summary["by_l2_category"] = _grouped(items, "l2-category")
    summary.update(extra)
    summary["error_rows"] = [{"index": item["index"], "reason": item["error"]} for item in items if item["error"]]
    return summary
