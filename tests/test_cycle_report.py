"""The cycle report from hand-made results: what it shows and claims for what a run measured."""

import json
from pathlib import Path

import pytest

from sicog.cycle.config import CycleConfig
from sicog.cycle.report import check_targets, curation_threshold, summarize, write_report


def arm(accuracy: float, f1: float | None = None) -> dict:
    """One arm's scores as arm_scores gives them (caption None without ground truth)."""
    caption = None if f1 is None else {"precision": f1, "recall": f1, "f1": f1}
    return {"accuracy": accuracy, "by_category": {"x": accuracy}, "caption": caption, "image_use_gap": None}


@pytest.fixture
def bench(tmp_path) -> str:
    path = tmp_path / "bench.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n0\ta.png\tq?\tyes\tno\tA\n1\tb.png\tq?\tyes\tno\tB\n")
    return str(path)


def seed(index: int, arms: dict, scored: dict, bench: str) -> dict:
    return {"seed": index, "arms": arms, "curation": {}, "scored": scored, "lm_reading": None, "benchmark": bench,
            "seconds": {"s": 1.0}, "cpu_seconds": {"s": 1.0}}


def scored_file(folder: Path, threshold: float | None) -> str:
    folder.mkdir()
    (folder / "scored.jsonl").write_text("".join(json.dumps({"id": str(i), "best_score": i / 5}) + "\n"
                                                 for i in range(5)))
    if threshold is not None:
        (folder / "summary.json").write_text(json.dumps({"settings": {"threshold": threshold}}))
    return str(folder / "scored.jsonl")


def row(report: Path, arm_label: str) -> list[str]:
    line = next(line for line in report.read_text().splitlines() if line.startswith(f"| {arm_label} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_a_threshold_left_to_curation_is_read_from_its_summary(tmp_path, bench):
    # caption_threshold: null lets `sicog curate` choose by encoder; the report plots what it chose.
    config = CycleConfig(caption_threshold=None, reasoning_threshold=None)
    scored = {"captions": scored_file(tmp_path / "captions", 0.6),
              "reasoning": scored_file(tmp_path / "reasoning", None)}
    assert curation_threshold(scored["captions"]) == 0.6 and curation_threshold(scored["reasoning"]) is None
    out = tmp_path / "run"
    out.mkdir()
    write_report(out, config, [seed(0, {"A": arm(0.5), "D": arm(0.6)}, scored, bench)])
    assert (out / "report.md").is_file() and (out / "curation_scores.png").is_file()


def test_later_rounds_get_mean_and_spread_over_seeds(tmp_path, bench):
    scored = {"captions": scored_file(tmp_path / "captions", 0.7)}
    per_seed = [seed(s, {"A": arm(0.5), "D": arm(0.6 + 0.2 * s), "round2_D": arm(0.3 + 0.4 * s)}, scored, bench)
                for s in (0, 1)]
    results = write_report(tmp_path, CycleConfig(), per_seed)
    cells = row(tmp_path / "report.md", "round2_D")
    assert cells[1] == "later round of D" and cells[2] == "0.500 ± 0.283"
    assert results["summary"]["table"]["round2_D"]["accuracy"] == pytest.approx((0.5, 0.2828427))
    assert not any(pair.startswith("round2_D") for pair in results["summary"]["verdict"])


def test_without_ground_truth_caption_scores_are_not_measured_nor_required(tmp_path, bench):
    scored = {"captions": scored_file(tmp_path / "captions", 0.85)}
    arms = lambda s: {"A": arm(0.40), "B": arm(0.41 + s * 0.01), "C": arm(0.42), "D": arm(0.60 + s * 0.01)}  # noqa: E731
    config = CycleConfig(toy_size=None, vision_tower="v", language_model="l", data={"unlabeled_web": "w"},
                         arms=("A", "B", "C", "D"))
    results = write_report(tmp_path, config, [seed(s, arms(s), scored, bench) for s in (0, 1)])
    report = (tmp_path / "report.md").read_text()
    assert row(tmp_path / "report.md", "D")[9] == "n/a"  # caption F1
    assert "caption f1" not in report and "captions.png" not in report
    assert "caption_f1" not in results["summary"]["table"]["D"]
    assert results["summary"]["targets"] == {f"SICOG beats {o} on MC accuracy by more than the spread": True
                                             for o in "BC"}


def test_measured_caption_scores_stay_required():
    per_seed = [{"arms": {"B": arm(0.4, f1=0.8), "C": arm(0.4, f1=0.8), "D": arm(0.6 + 0.01 * s, f1=0.7)},
                 "curation": {}} for s in (0, 1)]
    summary = summarize(per_seed, ["B", "C", "D"])
    targets = check_targets(summary, per_seed)
    assert targets == {f"SICOG beats {o} on MC accuracy and on caption F1 by more than the spread": False
                       for o in "BC"}
