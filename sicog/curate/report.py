"""The curation report: counts (``summary.json``), ``report.md`` and a score histogram PNG."""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sicog.curate.score import score_formula
from sicog.curate.select import drop_reason, usable

if TYPE_CHECKING:
    from sicog.curate.records import ScoredRecord

# The thresholds the published scripts were run with (on scores including self-similarity); the report always
# shows these plus the run's own.
REPORT_THRESHOLDS = (0.8, 0.85, 0.9)
HISTOGRAM = "score_histogram.png"
REPORT = "report.md"


def summarize(
    items: Sequence[ScoredRecord],
    errors: Sequence[dict],
    *,
    settings: dict[str, Any],
    encoder: dict[str, Any],
    input_path: str,
) -> dict[str, Any]:
    """Every number the report shows, as a JSON-ready dict."""
    best = [s.selection.best_score for s in items if s.selection.best_score is not None]
    min_agreement = settings["min_agreement"]
    thresholds = sorted({*REPORT_THRESHOLDS, settings["threshold"]})
    kept_at = {
        str(t): sum(
            drop_reason(
                s.selection.best_score, t,
                has_usable=any(usable(c) for c in s.item.candidates),
                has_answer=s.answers is None or s.selection.majority_answer is not None,
                agreement=s.selection.agreement, min_agreement=min_agreement,
            ) is None
            for s in items
        )
        for t in thresholds
    }
    candidates = [e for s in items for e in s.extractions]
    summary: dict[str, Any] = {
        "task": settings["task"],
        "input": input_path,
        "settings": settings,
        "encoder": encoder,
        "records_read": len(items) + len(errors),
        "errors": len(errors),
        "errors_by_field": dict(Counter(re.sub(r"\[\d+\]", "[]", str(e.get("field"))) for e in errors)),
        "scored": len(items),
        "kept": sum(s.selection.kept for s in items),
        "drop_reasons": dict(Counter(s.selection.drop_reason for s in items if not s.selection.kept)),
        "kept_at_threshold": kept_at,
        "candidates": len(candidates),
        "candidates_per_record": {str(k): v for k, v in sorted(Counter(len(s.extractions) for s in items).items())},
        "extraction_fallbacks": sum(e.fallback for e in candidates),
        "records_with_fallback": sum(any(e.fallback for e in s.extractions) for s in items),
        "best_score": _stats(best),
        "generation_temperatures": dict(Counter(_temperature(s.item.record) for s in items)),
        "warnings": [],
    }
    if settings["task"] == "reasoning":
        answers = [a for s in items for a in (s.answers or [])]
        agreements = [s.selection.agreement for s in items if s.selection.agreement is not None]
        summary["answers"] = {
            "explicit": sum(a.explicit and bool(a.normalized) for a in answers),
            "last_sentence": sum(not a.explicit and bool(a.normalized) for a in answers),
            "empty": sum(not a.normalized for a in answers),
        }
        summary["agreement"] = _stats(agreements)
    return summary


def _temperature(record: dict) -> str:
    value = record.get("generation", {}).get("temperature")
    return repr(float(value)) if isinstance(value, (int, float)) and not isinstance(value, bool) else "unknown"


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {
        "mean": round(statistics.fmean(values), 6),
        "median": round(statistics.median(values), 6),
        "min": min(values),
        "max": max(values),
    }


def plot_histogram(
    path: Path, items: Sequence[ScoredRecord], thresholds: Sequence[float], task: str, *, include_self: bool
) -> None:
    """Histogram of best-candidate and all-candidate scores (and of agreement for reasoning); ``include_self``
    names the score's formula on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = [s.selection.best_score for s in items if s.selection.best_score is not None]
    every = [x for s in items for x in s.scores if x is not None]
    panels = 2 if task == "reasoning" else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    ax = axes[0][0]
    # Shared bins from 0 (or the lowest score) to 1 so that runs are comparable at a glance.
    low = min([0.0, *every])
    bins = [low + (1.0 - low) * i / 40 for i in range(41)]
    ax.hist(every, bins=bins, alpha=0.5, label="all candidates")
    ax.hist(best, bins=bins, alpha=0.7, label="best candidate per record")
    for t in thresholds:
        ax.axvline(t, linestyle="--", linewidth=1, color="black")
        ax.annotate(f"{t:g}", (t, 1), xycoords=("data", "axes fraction"), fontsize=8, ha="right", va="top")
    ax.set_xlabel(f"MBR score ({score_formula(include_self)})")
    ax.set_ylabel("count")
    ax.legend()
    if task == "reasoning":
        agreements = [s.selection.agreement for s in items if s.selection.agreement is not None]
        axes[0][1].hist(agreements, bins=20, range=(0, 1))
        axes[0][1].set_xlabel("answer agreement (share of candidates with the majority answer)")
        axes[0][1].set_ylabel("records")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def _scale_note(include_self: bool) -> str:
    """Which scale the thresholds table is on, and how it relates to the published runs' thresholds."""
    published = ", ".join(f"{t:g}" for t in REPORT_THRESHOLDS)
    if include_self:
        return (f"Scores include each candidate's similarity with itself (the published scripts' formula): "
                f"{published} are the paper's thresholds on the paper's scale.")
    return (f"Scores exclude each candidate's similarity with itself. The published scripts averaged over all N "
            f"candidates, itself included (their score = (1 + (N - 1) x this score) / N), so {published} on this "
            f"scale are stricter than the paper's {published} (--include-self scores on the paper's scale).")


def write_report(output_dir: Path, summary: dict[str, Any], items: Sequence[ScoredRecord]) -> None:
    """Write ``report.md`` and the histogram next to the other outputs."""
    settings = summary["settings"]
    thresholds = [float(t) for t in summary["kept_at_threshold"]]
    plot_histogram(output_dir / HISTOGRAM, items, thresholds, summary["task"], include_self=settings["include_self"])
    lines = [
        f"# Self-consistency curation: {summary['task']}",
        "",
        f"Input `{summary['input']}`; encoder `{summary['encoder']['name_or_path']}`; "
        f"threshold {settings['threshold']}"
        + (f", min agreement {settings['min_agreement']}" if summary["task"] == "reasoning" else "")
        + f"; self-similarity {'included' if settings['include_self'] else 'excluded'}; seed {settings['seed']}.",
    ]
    if settings.get("generator"):
        lines.append(f"Candidates generated by `{settings['generator']}`.")
    lines += [
        "",
        "| records | count |",
        "|---|---|",
        f"| read | {summary['records_read']} |",
        f"| errors (errors.jsonl) | {summary['errors']} |",
        f"| scored (scored.jsonl) | {summary['scored']} |",
        f"| kept (curated.jsonl) | {summary['kept']} |",
        f"| chosen/rejected pairs (pairs.jsonl) | {summary.get('pairs', 0)} |",
        "",
        "## Kept records by threshold",
        "",
        _scale_note(settings["include_self"]),
        "",
        "| threshold | kept | share of scored |",
        "|---|---|---|",
    ]
    for t, n in summary["kept_at_threshold"].items():
        share = n / summary["scored"] if summary["scored"] else 0.0
        marker = " (this run)" if float(t) == settings["threshold"] else ""
        lines.append(f"| {t}{marker} | {n} | {share:.1%} |")
    best = summary["best_score"]
    lines += ["", f"Best-candidate score: mean {best['mean']}, median {best['median']}, "
                  f"min {best['min']}, max {best['max']}."]
    lines += ["", "## Extraction", ""]
    lines.append(
        f"{summary['extraction_fallbacks']} of {summary['candidates']} candidates had no "
        f"{'CoD step 5' if summary['task'] == 'captions' else 'CoT step 4'} and were compared as a whole "
        f"({summary['records_with_fallback']} records affected)."
    )
    if "answers" in summary:
        answers = summary["answers"]
        lines.append(
            f"Answers: {answers['explicit']} from an explicit answer phrase, {answers['last_sentence']} from the last "
            f"sentence, {answers['empty']} empty. Agreement: mean {summary['agreement']['mean']}."
        )
    lines += ["", "## Not kept", "", "| reason | records |", "|---|---|"]
    lines += [f"| {reason} | {n} |" for reason, n in summary["drop_reasons"].items()] or ["| - | 0 |"]
    lines += ["", "## Errors by field", "", "| field | records |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in summary["errors_by_field"].items()] or ["| - | 0 |"]
    lines += ["", f"Candidates per record: {summary['candidates_per_record']}. "
              f"Generation temperatures: {summary['generation_temperatures']}."]
    if summary["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    lines += ["", f"![score histogram]({HISTOGRAM})", ""]
    tmp = output_dir / f".{REPORT}.tmp"
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(output_dir / REPORT)
