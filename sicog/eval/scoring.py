"""Scoring predictions on a benchmark: one scored item per row, accuracy overall and by category.

Accuracy is over the rows that have both a prediction and a ground-truth answer. Rows that could not
be evaluated (an unusable image, an answer that is not an option) are counted in ``errors`` and
listed with their reasons, never silently scored as wrong or dropped; a prediction from which no
answer can be read counts as wrong and is counted in ``no_answer``. Multiple-choice rows asked without
their options are scored as open short answers (:mod:`sicog.eval.short_answers`).
"""

from __future__ import annotations

from collections.abc import Mapping

from sicog.data.answers import extract_choice, extract_yes_no
from sicog.eval.short_answers import ShortAnswers
from sicog.eval.tsv import MULTIPLE_CHOICE, Benchmark, is_missing, row_options

UNCATEGORIZED = "(none)"


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


def _accuracy(items: list[dict]) -> dict:
    scored = [item for item in items if item["correct"] is not None]
    correct = sum(item["correct"] for item in scored)
    return {"correct": correct, "scored": len(scored), "accuracy": correct / len(scored) if scored else None}


def _grouped(items: list[dict], column: str) -> dict[str, dict]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        name = UNCATEGORIZED if is_missing(item.get(column)) else str(item[column]).strip()
        groups.setdefault(name, []).append(item)
    return {name: _accuracy(group) for name, group in sorted(groups.items())}


def summarize(benchmark: Benchmark, items: list[dict]) -> dict:
    """Accuracy overall and by ``category`` (and ``l2-category`` when the benchmark has it), counts, and
    the failed rows with their reasons."""
    columns = benchmark.rows[0].keys() if benchmark.rows else ()
    summary = {
        "benchmark": str(benchmark.path),
        "kind": benchmark.kind,
        "total": len(items),
        **_accuracy(items),
        "predicted": sum(item["prediction"] is not None for item in items),
        "no_answer": sum(item["prediction"] is not None and item["extracted"] is None for item in items),
        "no_ground_truth": sum(item["prediction"] is not None and item["answer"] is None for item in items),
        "errors": sum(item["error"] is not None for item in items),
        "by_category": _grouped(items, "category"),
    }
    if "l2-category" in columns:
        summary["by_l2_category"] = _grouped(items, "l2-category")
    summary["error_rows"] = [{"index": item["index"], "reason": item["error"]} for item in items if item["error"]]
    return summary
