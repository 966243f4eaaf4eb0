"""The built-in runner's numbers where VLMEvalKit rates a benchmark otherwise than by plain accuracy: POPE (F1,
each row once per split) and MMBench-style circular evaluation. The expected values are VLMEvalKit's
``POPE_rating`` and ``mcq_circular_eval`` + ``report_acc`` on the same rows and replies."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from openpyxl import load_workbook

from sicog.data.jsonl import write_jsonl
from sicog.eval.cli import _report
from sicog.eval.runner import ERRORS, PREDICTIONS, RESULTS, SHEET, merge_and_score
from sicog.eval.scoring import evaluated_circularly, rated_as_pope, score_items, summarize
from sicog.eval.tsv import read_benchmark

# index, category, answer, reply: two rows are asked in several POPE splits.
POPE_ROWS = [
    ("0", "adversarial,popular,random", "Yes", "No"),
    ("1", "adversarial", "No", "Yes"),
    ("2", "popular", "No", "No"),
    ("3", "random", "No", "No"),
    ("4", "adversarial,popular", "Yes", "No"),
    ("5", "random", "Yes", "Yes"),
]


def write_tsv(path: Path, columns: list[str], rows: list[list]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    return path


def yes_no_bench(path: Path):
    rows = [[index, "x", "Is there a dog in the image?", answer, category] for index, category, answer, _ in POPE_ROWS]
    bench = read_benchmark(write_tsv(path, ["index", "image", "question", "answer", "category"], rows))
    return bench, {index: reply for index, _, _, reply in POPE_ROWS}


def mmbench_bench(path: Path):
    """Two questions with their three circular copies each (options rotated), and a copy of a question the file
    does not hold. Question 0 is right in every copy; question 1 is wrong in its last copy."""
    texts = ["red", "blue", "green", "yellow"]
    rows, replies = [], {}
    for question in range(2):
        for k in range(4):
            index = question + k * 1_000_000
            options = texts[k:] + texts[:k]
            answer = "ABCD"[options.index("red")]
            rows.append([index, "x", f"Q{question}: which colour?", *options, answer, "attribute", "perception"])
            replies[str(index)] = answer if question == 0 or k < 3 else "A"
    rows.append([5_000_007, "x", "Q7?", *texts, "A", "attribute", "perception"])
    replies["5000007"] = "A"
    columns = ["index", "image", "question", "A", "B", "C", "D", "answer", "category", "l2-category"]
    return read_benchmark(write_tsv(path, columns, rows)), replies


def test_pope_counts_a_row_once_per_split_and_reports_f1_first(tmp_path: Path) -> None:
    bench, replies = yes_no_bench(tmp_path / "POPE.tsv")
    summary = summarize(bench, score_items(bench, replies, {}))
    # Each row once: 3 of 6 right (the accuracy key keeps its meaning).
    assert (summary["correct"], summary["scored"], summary["accuracy"]) == (3, 6, 0.5)
    # VLMEvalKit's POPE_rating: Overall (F1) 25.0, acc 33.3, precision 50.0, recall 16.7 over 9 split rows.
    assert summary["by_category"] == {
        "adversarial": {"correct": 0, "scored": 3, "accuracy": 0.0},
        "popular": {"correct": 1, "scored": 3, "accuracy": 1 / 3},
        "random": {"correct": 2, "scored": 3, "accuracy": 2 / 3},
    }
    assert summary["headline"] == {"metric": "f1", "value": pytest.approx(0.25)}
    yes_no = summary["yes_no"]
    assert (yes_no["correct"], yes_no["scored"]) == (3, 9)
    assert (yes_no["accuracy"], yes_no["precision"], yes_no["recall"], yes_no["f1"]) == pytest.approx(
        (1 / 3, 0.5, 1 / 6, 0.25))
    random = yes_no["by_category"]["random"]
    assert (random["f1"], random["precision"], random["recall"]) == pytest.approx((2 / 3, 1.0, 0.5))
    assert yes_no["by_category"]["adversarial"]["f1"] == 0.0  # no right "yes": 0, as in VLMEvalKit


def test_other_yes_no_benchmarks_keep_accuracy_first_and_their_categories(tmp_path: Path) -> None:
    bench, replies = yes_no_bench(tmp_path / "dogs.tsv")
    summary = summarize(bench, score_items(bench, replies, {}))
    assert summary["headline"] == {"metric": "accuracy", "value": 0.5}
    # VLMEvalKit's default rating does not split categories: nor does the runner, but it adds the rates.
    assert "adversarial,popular" in summary["by_category"] and summary["yes_no"]["scored"] == 6
    assert (summary["yes_no"]["precision"], summary["yes_no"]["recall"]) == pytest.approx((0.5, 1 / 3))


@pytest.mark.parametrize("name, pope", [("POPE", True), ("POPE_adversarial", True), ("my_POPE_copy", True),
                                        ("pope", False), ("MME_POPE", False), ("HallusionBench", False)])
def test_pope_is_known_by_name_as_vlmevalkit_knows_it(name: str, pope: bool) -> None:
    assert rated_as_pope(name) is pope


@pytest.mark.parametrize("name, circular", [("MMBench_DEV_EN", True), ("MMBench_TEST_CN_V11", True),
                                            ("CCBench", True), ("BLINK_circular", True), ("MMStar", False),
                                            ("AI2D_TEST", False)])
def test_circular_evaluation_is_known_by_name_as_vlmevalkit_knows_it(name: str, circular: bool) -> None:
    assert evaluated_circularly(name) is circular


def test_mmbench_counts_a_question_right_only_in_every_copy(tmp_path: Path) -> None:
    bench, replies = mmbench_bench(tmp_path / "MMBench_DEV_EN.tsv")
    summary = summarize(bench, score_items(bench, replies, {}))
    assert (summary["correct"], summary["scored"]) == (8, 9)  # every row on its own
    # VLMEvalKit: Overall 0.5; the copy of a question the file lacks is left out.
    circular = summary["circular"]
    assert (circular["questions"], circular["correct"], circular["scored"], circular["accuracy"]) == (2, 1, 2, 0.5)
    assert circular["by_category"] == {"attribute": {"correct": 1, "scored": 2, "accuracy": 0.5}}
    assert circular["by_l2_category"] == {"perception": {"correct": 1, "scored": 2, "accuracy": 0.5}}
    assert summary["headline"] == {"metric": "circular_accuracy", "value": 0.5}


def test_a_g_index_column_groups_the_copies_as_vlmevalkit_groups_them(tmp_path: Path) -> None:
    """`vlmutil circular` numbers copies of indices from 1e6 on 1e7 apart and writes g_index: read by index % 1e6,
    such a file had no question (circular accuracy None)."""
    texts = ["red", "blue", "green", "yellow"]
    rows, replies = [], {}
    for question in (2_000_000, 2_000_001):
        for k in range(4):
            index = question + k * 10_000_000
            options = texts[k:] + texts[:k]
            answer = "ABCD"[options.index("red")]
            rows.append([index, question, "x", "Which colour?", *options, answer, "attribute"])
            replies[str(index)] = answer if question == 2_000_000 or k < 3 else "A"
    columns = ["index", "g_index", "image", "question", "A", "B", "C", "D", "answer", "category"]
    bench = read_benchmark(write_tsv(tmp_path / "MMBench_DEV_EN.tsv", columns, rows))
    circular = summarize(bench, score_items(bench, replies, {}))["circular"]
    assert (circular["questions"], circular["correct"], circular["scored"], circular["accuracy"]) == (2, 1, 2, 0.5)
    # As pandas writes a column with a gap: "2000000.0" is the question 2000000 (it made every row a question).
    for row in rows:
        row[1] = f"{row[1]}.0"
    bench = read_benchmark(write_tsv(tmp_path / "MMBench_DEV_EN.tsv", columns, rows))
    assert summarize(bench, score_items(bench, replies, {}))["circular"]["questions"] == 2


def test_counts_tell_unanswered_replies_from_rows_without_a_prediction(tmp_path: Path) -> None:
    """A row that failed (no prediction) is an error, not a reply without an answer."""
    bench, replies = mmbench_bench(tmp_path / "rotated.tsv")
    replies["0"] = "I cannot tell."
    del replies["1"]
    summary = summarize(bench, score_items(bench, replies, {"1": "cannot read the decoded image"}))
    assert (summary["predicted"], summary["no_answer"], summary["errors"]) == (8, 1, 1)


def test_a_question_with_an_unscored_copy_is_not_scored(tmp_path: Path) -> None:
    bench, replies = mmbench_bench(tmp_path / "MMBench_DEV_EN.tsv")
    del replies["1000000"]  # question 0's first copy failed (an unusable image, say)
    items = score_items(bench, replies, {"1000000": "cannot read the decoded image"})
    circular = summarize(bench, items)["circular"]
    assert (circular["questions"], circular["correct"], circular["scored"]) == (2, 0, 1)


def test_a_benchmark_not_named_so_is_scored_row_by_row(tmp_path: Path) -> None:
    bench, replies = mmbench_bench(tmp_path / "rotated.tsv")
    summary = summarize(bench, score_items(bench, replies, {}))
    assert "circular" not in summary and summary["headline"] == {"metric": "accuracy", "value": 8 / 9}


def answered(bench, replies: dict[str, str], out: Path) -> None:
    """Prediction files as the runner leaves them, so that merge_and_score scores them."""
    out.mkdir()
    settings = {"model": "m", "prompt_style": "direct", "max_new_tokens": 64, "mc_scoring": "generate",
                "blind_seed": None, "short_answer": True}
    write_jsonl(out / PREDICTIONS, [{"id": index, "prompt": "?", "prediction": replies[index],
                                     "row_hash": bench.row_hashes[index], "settings": settings}
                                    for index in bench.indices])
    (out / ERRORS).write_text("")


def table(path: Path, sheet: str) -> list[list]:
    return [[cell.value for cell in row] for row in load_workbook(path)[sheet].iter_rows()]


def test_pope_numbers_reach_the_results_files_and_the_report(tmp_path: Path) -> None:
    bench, replies = yes_no_bench(tmp_path / "POPE.tsv")
    answered(bench, replies, tmp_path / "out")
    summary = merge_and_score(bench, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert saved["headline"] == {"metric": "f1", "value": pytest.approx(0.25)} and saved["accuracy"] == 0.5
    assert saved["yes_no"]["recall"] == pytest.approx(1 / 6) and set(saved["yes_no"]["by_category"]) == {
        "adversarial", "popular", "random"}
    assert table(tmp_path / "out" / SHEET, "headline") == [["metric", "value"], ["f1", pytest.approx(0.25)]]
    rates = table(tmp_path / "out" / SHEET, "yes_no")
    assert rates[0] == ["split", "name", "correct", "scored", "accuracy", "precision", "recall", "f1"]
    assert rates[1] == ["overall", "all", 3, 9, pytest.approx(1 / 3), 0.5, pytest.approx(1 / 6), pytest.approx(0.25)]
    assert [line[1] for line in rates[2:]] == ["adversarial", "popular", "random"]
    report = _report(summary)
    assert report.splitlines()[0] == (
        f"{bench.path}: F1 0.2500 (VLMEvalKit's POPE number: yes as positive, each row once per split; precision "
        "0.5000, recall 0.1667); accuracy 0.5000 (3/6 scored rows)")
    assert "  random: 0.6667 (2/3), F1 0.6667" in report


def test_circular_numbers_reach_the_results_files_and_the_report(tmp_path: Path) -> None:
    bench, replies = mmbench_bench(tmp_path / "MMBench_DEV_EN.tsv")
    answered(bench, replies, tmp_path / "out")
    summary = merge_and_score(bench, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert saved["headline"] == {"metric": "circular_accuracy", "value": 0.5} and saved["accuracy"] == 8 / 9
    assert saved["circular"]["questions"] == 2
    assert table(tmp_path / "out" / SHEET, "circular")[1] == ["overall", "all", 1, 2, 0.5]
    report = _report(summary)
    assert report.splitlines()[0] == (f"{bench.path}: circular accuracy 0.5000 (1/2 questions right in every "
                                      "circular copy); accuracy 0.8889 (8/9 scored rows)")
    assert "  attribute: 0.8889 (8/9), circular 0.5000 (1/2)" in report
