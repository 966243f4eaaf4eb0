"""The cycle report from hand-made results: what it shows and claims for what a run measured."""

import json
from pathlib import Path

import pytest

from sicog.cycle.config import CycleConfig
from sicog.cycle.report import (
    NO_LETTER,
    WIN_STANDARD_ERRORS,
    arm_scores,
    baselines,
    check_targets,
    curation_threshold,
    summarize,
    write_report,
)

WIN = f"{WIN_STANDARD_ERRORS:g}"


def arm(accuracy: float, f1: float | None = None, items: int = 640) -> dict:
    """One arm's scores as arm_scores gives them (caption None without ground truth), over ``items`` questions
    (and as many caption images)."""
    caption = None if f1 is None else {"precision": f1, "recall": f1, "f1": f1}
    counts = {kind: {"total": items, "scored": items, "errors": 0} for kind in ("mc", *(() if f1 is None else
                                                                                     ("captions",)))}
    return {"accuracy": accuracy, "by_category": {"x": accuracy}, "caption": caption, "image_use_gap": None,
            "counts": counts}


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
    assert results["summary"]["targets"] == {f"SICOG beats {o} on MC accuracy by more than {WIN} standard errors "
                                             "of the paired difference": True for o in "BC"}


def test_measured_caption_scores_stay_required():
    per_seed = [{"arms": {"B": arm(0.4, f1=0.8), "C": arm(0.4, f1=0.8), "D": arm(0.6 + 0.01 * s, f1=0.7)},
                 "curation": {}} for s in (0, 1)]
    summary = summarize(per_seed, ["B", "C", "D"])
    targets = check_targets(summary, per_seed)
    assert targets == {f"SICOG beats {o} on MC accuracy and on caption F1 by more than {WIN} standard errors of the "
                       "paired difference": False for o in "BC"}


def test_one_seed_claims_no_win_and_lists_sicogs_targets_as_not_checked(tmp_path, bench):
    scored = {"captions": scored_file(tmp_path / "captions", 0.5)}
    arms = {"A": arm(0.40), "B": arm(0.41), "C": arm(0.42), "D": arm(0.60)}
    results = write_report(tmp_path, CycleConfig(arms=("A", "B", "C", "D")), [seed(0, arms, scored, bench)])
    # With one seed the spread is unknown (null, not 0), so no lead passes as a win in either file.
    assert {pair: wins["accuracy"]["beats"] for pair, wins in results["summary"]["verdict"].items()} == {
        "D vs A": None, "D vs B": None, "D vs C": None}
    saved = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert saved["table"]["D"]["accuracy"] == [0.6, None]
    assert "standard deviation" not in (tmp_path / "report.md").read_text()
    assert saved["verdict"]["D vs B"]["accuracy"]["beats"] is None
    assert saved["targets"] == {f"SICOG beats {o} on MC accuracy by more than {WIN} standard errors of the paired "
                                "difference (one seed: no spread to compare with)": None for o in "BC"}
    report = (tmp_path / "report.md").read_text()
    assert "- not checked: SICOG beats B on MC accuracy" in report and "D is ahead of B on accuracy" in report


def test_an_oracle_gain_of_exactly_the_margin_meets_its_target():
    per_seed = [{"arms": {"A": arm(0.55), "E": arm(0.70)}, "curation": {}}]
    assert 0.70 - 0.55 < 0.15  # the float gain falls a rounding error short
    assert check_targets(summarize(per_seed, ["A", "E"]), per_seed) == {
        "the oracle teaches: E >= A + 0.15 on MC accuracy (+0.150)": True}


def test_a_value_near_its_bar_is_shown_on_the_side_its_verdict_puts_it():
    """A gain of 0.1496 was shown as the bar it misses (+0.150, NOT met), 0.5002 vs 0.5 as 0.500 vs 0.500 (met)."""
    per_seed = [{"seed": 0, "arms": {"A": arm(0.55), "E": arm(0.6996)},
                 "curation": {"captions": curation(0.7998, None, 0.5002, 0.5)}}]
    shown = " | ".join(check_targets(summarize(per_seed, ["A", "E"]), per_seed))
    assert "MC accuracy (+0.1496)" in shown and "(seed 0: 0.7998;" in shown and "(seed 0: 0.5002 vs 0.5000)" in shown


def curation(auroc: float | None, every_fact: float | None, curated: float, random_pick: float) -> dict:
    return {"auroc": auroc, "every_fact": {"auroc": every_fact}, "right_share_curated": curated,
            "right_share_random_candidate": random_pick}


def test_curation_targets_hold_only_when_met_on_every_seed_and_name_what_right_means():
    def targets(second: dict) -> dict:
        per_seed = [{"seed": s, "arms": {"D": arm(0.5)}, "curation": {"captions": q}}
                    for s, q in ((0, curation(0.85, 0.6, 0.6, 0.2)), (1, second))]
        return check_targets(summarize(per_seed, ["D"]), per_seed)

    right = "(right: it names every object and nothing else; its other facts are not checked)"
    assert targets(curation(0.7, 0.5, 0.1, 0.2)) == {
        f"captions curation ranks right candidates first {right}: AUROC >= 0.8 on every seed (seed 0: 0.850, "
        "seed 1: 0.700; right in every fact, not a target: 0.600, 0.500)": False,
        f"curated captions right more often than a random pick {right} on every seed (seed 0: 0.600 vs 0.200, "
        "seed 1: 0.100 vs 0.200)": False}
    assert list(targets(curation(0.8, None, 0.5, 0.2)).values()) == [True, True]
    # A seed whose candidates were all wrong has no AUROC: the target is not checked rather than met.
    assert list(targets(curation(None, None, 0.5, 0.2)).values()) == [None, True]
    # An AUROC a rounding error under its bar reaches it, shown as the bar.
    assert "seed 1: 0.800" in next(iter(targets(curation(0.8 - 1e-12, None, 0.5, 0.2))))
    assert list(targets(curation(0.8 - 1e-12, None, 0.5, 0.2)).values()) == [True, True]
    # A tie is no win, nor is a lead within the rounding tolerance (0.1 + 0.2 against 0.3 in floats).
    assert list(targets(curation(0.8, None, 0.3, 0.3)).values()) == [True, False]
    assert list(targets(curation(0.8, None, 0.1 + 0.2, 0.3)).values()) == [True, False]


def test_the_curation_plot_counts_what_curation_kept(tmp_path, monkeypatch):
    import matplotlib.axes

    from sicog.cycle import report

    folder = tmp_path / "reasoning"
    folder.mkdir()
    # Every record clears the threshold, but answer agreement dropped eight of them.
    (folder / "scored.jsonl").write_text("".join(json.dumps({"id": str(i), "best_score": 0.9, "kept": i < 2}) + "\n"
                                                 for i in range(10)))
    (folder / "summary.json").write_text(json.dumps({"settings": {"threshold": 0.5}}))
    titles = []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, text, *a, **k: titles.append(text))
    report._plot_curation({"reasoning": str(folder / "scored.jsonl")}, tmp_path / "plot.png")
    assert titles == ["reasoning: best MBR score (kept 2 of 10, 20%)"]


def eval_results(folder: Path, benchmark: Path, predictions: list[str], accuracy: float | None, errors: int) -> str:
    """An eval's results.json and predictions.jsonl as `sicog eval` writes them (the fields the report reads)."""
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps({"id": str(i), "prediction": p}) + "\n"
                                                      for i, p in enumerate(predictions)))
    results = {"benchmark": str(benchmark), "accuracy": accuracy, "total": len(predictions) + errors,
               "scored": len(predictions), "errors": errors, "by_category": {"x": {"accuracy": accuracy}},
               "files": {"predictions.jsonl": str(folder / "predictions.jsonl")}}
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder / "results.json")


def test_an_image_use_gap_of_a_diverged_model_is_not_measured(tmp_path):
    """A NaN gap was shown as "nan" and written to results.json as a bare NaN, which strict JSON readers refuse."""
    path = tmp_path / "bench.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n0\ta.png\tWhat colour?\tred\tblue\tB\n")
    mc = eval_results(tmp_path / "mc", path, ["B"], 1.0, 0)
    (tmp_path / "image_use.json").write_text('{"gap": NaN, "records": 4, "compared": 4, "errors": []}')
    scores = arm_scores({"mc": mc, "image_use": str(tmp_path / "image_use.json")}, None, None, path)
    assert scores["image_use_gap"] is None and scores["counts"]["image_use"]["scored"] == 4


def test_same_letter_counts_the_letter_each_reply_chose(tmp_path):
    path = tmp_path / "bench.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n"
                    + "".join(f"{i}\ta.png\tWhat colour?\tred\tblue\tB\n" for i in range(4)))
    replies = ["B", "(B)", "The answer is blue.", "I cannot tell."]
    letters = eval_results(tmp_path / "letters", path, replies, 0.75, 0)
    # A moved run: its evals' results.json still name the folder they ran in, which is gone.
    (tmp_path / "letters").rename(tmp_path / "moved")
    letters = str(tmp_path / "moved" / "results.json")
    scores = arm_scores({"mc": letters, "letters": letters}, None, None, path)
    # Three differently worded replies chose B; the fourth chose no letter, a bucket of its own.
    assert scores["letter_counts"] == {"B": 3, NO_LETTER: 1}
    assert (scores["top_reply"], scores["top_reply_share"]) == ("B", 0.75)
    unread = eval_results(tmp_path / "unread", path, ["...", "B or A", "I cannot tell.", "B"], 0.25, 0)
    scores = arm_scores({"mc": unread, "letters": unread}, None, None, path)
    assert (scores["top_reply"], scores["top_reply_share"]) == (NO_LETTER, 0.75)
    scored = {"captions": scored_file(tmp_path / "curation", 0.5)}
    write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(0, {"A": arm(0.5), "D": scores}, scored, str(path))])
    assert row(tmp_path / "report.md", "D")[6] == "75% no letter"


def test_failed_captions_score_zero_and_unscored_rows_stay_unscored(tmp_path, bench):
    truth = {f"{i}.png": {"image": f"{i}.png", "background": "white", "objects": [
        {"name": "red circle", "shape": "circle", "color": "red", "size": "small", "position": "center",
         "label": None}]} for i in range(4)}
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"id": "c0", "image": "0.png", "candidates": ["A red circle."]}) + "\n")
    caption_benchmark = [{"id": f"c{i}", "image": f"{i}.png"} for i in range(4)]
    # Every MC row failed: nothing was scored, which is not an accuracy of 0.
    mc = eval_results(tmp_path / "mc", Path(bench), [], None, 2)
    scores = arm_scores({"mc": mc, "captions": str(captions)}, truth, caption_benchmark, bench)
    assert scores["caption"] == {"precision": 0.25, "recall": 0.25, "f1": 0.25}  # three images never captioned
    assert scores["accuracy"] is None and scores["by_category"] == {"x": None}
    assert scores["counts"] == {"mc": {"total": 2, "scored": 0, "errors": 2},
                                "captions": {"total": 4, "scored": 1, "errors": 3}}
    other = {**scores, "accuracy": 0.5, "by_category": {"x": 0.5}}
    scored = {"captions": scored_file(tmp_path / "curation", 0.5)}
    results = write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(0, {"A": other, "D": scores}, scored, bench)])
    assert "accuracy" not in results["summary"]["table"]["D"]
    assert row(tmp_path / "report.md", "D")[2] == "n/a"
    counted = next(line for line in (tmp_path / "report.md").read_text().splitlines()
                   if line.startswith("| D |") and "errors" in line)
    cells = [cell.strip() for cell in counted.strip("|").split("|")]
    assert (cells[1], cells[6]) == ("0/2 (2 errors)", "1/4 (3 errors)")  # the MC and captions columns
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["per_seed"][0]["arms"]["D"]["counts"]["captions"] == {"total": 4, "scored": 1, "errors": 3}


def two_seeds(d: tuple[float, float], other: tuple[float, float], items: int) -> list[dict]:
    return [{"seed": s, "arms": {"C": arm(other[s], items=items), "D": arm(d[s], items=items)}, "curation": {}}
            for s in (0, 1)]


def test_a_lead_within_the_benchmarks_sampling_error_is_no_win_even_with_zero_spread():
    # Both seeds at the same accuracies, one question of ten apart: no spread over seeds, but the benchmark's
    # sampling error of the difference is about 0.19, so +0.1 is noise (the old rule called it a win).
    verdict = summarize(two_seeds((0.3, 0.3), (0.2, 0.2), items=10), ["C", "D"])["verdict"]["D vs C"]["accuracy"]
    assert verdict["difference"] == pytest.approx(0.1) and verdict["se_seeds"] == 0
    assert verdict["se_sampling"] == pytest.approx((0.3 * 0.7 / 10 + 0.2 * 0.8 / 10) ** 0.5)
    assert verdict["se"] == verdict["se_sampling"] and verdict["beats"] is False
    # The same lead on 6,400 questions clears the sampling error.
    assert summarize(two_seeds((0.3, 0.3), (0.2, 0.2), items=6400), ["C", "D"])["verdict"]["D vs C"]["accuracy"][
        "beats"] is True


def test_the_verdict_pairs_seeds_and_uses_the_standard_error_of_the_difference():
    # Paired per seed, D leads by 0.10 and 0.30: the mean 0.20 is one standard error of the differences
    # (0.1) from 0, not a win, although the old rule (difference of means above the sum of the arms' SDs) saw
    # 0.20 > 0.0 + 0.141.
    wins = summarize(two_seeds((0.60, 0.70), (0.50, 0.40), items=100_000), ["C", "D"])["verdict"]["D vs C"]["accuracy"]
    assert wins["per_seed"] == pytest.approx([0.1, 0.3]) and wins["se_seeds"] == pytest.approx(0.1)
    assert wins["se"] == pytest.approx(0.1) and wins["beats"] is False
    # Differences that agree (0.20 and 0.21) are a win although each arm's own spread is wide.
    wins = summarize(two_seeds((0.60, 0.81), (0.40, 0.60), items=100_000), ["C", "D"])["verdict"]["D vs C"]["accuracy"]
    assert wins["se_seeds"] == pytest.approx(0.005) and wins["beats"] is True


def test_standard_errors_are_in_the_report_and_results(tmp_path, bench):
    scored = {"captions": scored_file(tmp_path / "captions", 0.5)}
    per_seed = [seed(s, {"C": arm(0.2, items=10), "D": arm(0.3, items=10)}, scored, bench) for s in (0, 1)]
    results = write_report(tmp_path, CycleConfig(arms=("C", "D")), per_seed)
    saved = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert saved["standard_errors"]["D"]["accuracy"] == {"seeds": 0.0, "sampling": pytest.approx((0.21 / 10) ** 0.5),
                                                         "items": 10}
    assert saved["verdict"]["D vs C"]["accuracy"]["beats"] is False
    report = (tmp_path / "report.md").read_text()
    assert "### Standard errors" in report and "| D | 0.000 / 0.145 (N 10) |" in report
    assert "- D is ahead of C on accuracy: +0.100 (standard error over seeds 0.000, of sampling 0.192; a win needs " \
           "more than +0.385)." in report
    assert results["summary"]["verdict"]["D vs C"]["accuracy"]["se"] == pytest.approx(0.037 ** 0.5)


def test_a_report_over_the_seeds_that_finished_names_the_incomplete_ones(tmp_path, bench):
    scored = {"captions": scored_file(tmp_path / "captions", 0.5)}
    results = write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(0, {"A": arm(0.5), "D": arm(0.6)}, scored,
                                                                         bench)],
                           incomplete={1: ["D_stage2", "eval_D"]})
    assert results["seeds"] == 1 and results["incomplete_seeds"] == {"1": ["D_stage2", "eval_D"]}
    report = (tmp_path / "report.md").read_text()
    assert "**Incomplete: seed 1 did not finish; every number below is over seed 0 only.**" in report
    assert "- seed 1: failed or not run: D_stage2, eval_D" in report


def test_an_earlier_runs_figures_are_not_left_beside_a_report_that_does_not_draw_them(tmp_path, bench):
    (tmp_path / "captions.png").write_bytes(b"an earlier run's figure")
    scored = {"captions": scored_file(tmp_path / "captions", 0.5)}
    no_truth = {"A": arm(0.5), "D": arm(0.6)}  # no caption F1: no captions figure
    write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(0, no_truth, scored, bench)])
    assert not (tmp_path / "captions.png").exists() and (tmp_path / "report.md").is_file()


def test_caption_f1_scores_the_description_a_caption_ends_with(tmp_path, bench):
    from sicog.data.prompts import COD_STEPS
    from sicog.data.steps import format_steps

    truth = {"0.png": {"image": "0.png", "background": "white", "objects": [
        {"name": "red circle", "shape": "circle", "color": "red", "size": "small", "position": "center",
         "label": None}]}}
    # Step 2 names a blue square that is not there; step 5, what curation reads, names the image's objects only.
    text = format_steps(COD_STEPS, ["A red circle.", "The blue square is large.", "The red circle is in the center.",
                                    "There is no dot and no border.", "A small red circle in the center."])
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"id": "c0", "image": "0.png", "candidates": [text]}) + "\n")
    mc = eval_results(tmp_path / "mc", Path(bench), ["A", "B"], 0.5, 0)
    scores = arm_scores({"mc": mc, "captions": str(captions)}, truth, [{"id": "c0", "image": "0.png"}], bench)
    assert scores["caption"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    # A reply without steps is its own description.
    captions.write_text(json.dumps({"id": "c0", "image": "0.png", "candidates": ["A blue square."]}) + "\n")
    assert arm_scores({"mc": mc, "captions": str(captions)}, truth, [{"id": "c0", "image": "0.png"}],
                      bench)["caption"]["f1"] == 0.0


def test_chance_and_constant_answer_count_the_rows_the_eval_scores(tmp_path):
    """A yes/no row is a coin flip; in a multiple-choice benchmark a row with fewer than two options, without
    an answer, or with a literal <image> in its text is not scored by the eval and counts in neither."""
    yes_no = tmp_path / "pope.tsv"
    yes_no.write_text("index\timage_path\tquestion\tanswer\n0\ta.png\tA cat?\tyes\n1\ta.png\tA dog?\tNo\n"
                      "2\ta.png\tA cow?\tno\n")
    assert baselines(yes_no)["chance_accuracy"] == 0.5
    assert baselines(yes_no)["constant_answer_accuracy"] == pytest.approx(2 / 3)
    mixed = tmp_path / "mixed.tsv"
    mixed.write_text("index\timage_path\tquestion\tA\tB\tC\tD\tanswer\n"
                     "0\ta.png\tColour?\tred\tblue\tgreen\tblack\tA\n"
                     "1\ta.png\tShape?\tsquare\tcircle\t\t\tB\n"
                     "2\ta.png\tA cat?\t\t\t\t\tyes\n"
                     "3\ta.png\tSize?\tsmall\tlarge\t\t\t\n"
                     "4\ta.png\t<image> Colour?\tred\tblue\t\t\tB\n")  # an error row of the eval
    found = baselines(mixed)
    assert found["chance_accuracy"] == pytest.approx((1 / 4 + 1 / 2) / 2)
    assert found["constant_answer_accuracy"] == 0.5
    # Preferring "red" wins the colour question and, not offered on the shape one, picks there at random.
    assert found["constant_option_accuracy"] == pytest.approx((1 + 1 / 2) / 2)


def test_a_likelihood_score_is_held_against_texts_not_letters(tmp_path):
    """MC by likelihood scores option texts: a benchmark whose answers are mostly one letter, each letter a
    different text, gives it no answer to repeat; the letters' baseline is not its floor."""
    texts = ["red", "blue", "green", "black"]
    rows = "".join(f"{i}\ta.png\tColour?\t" + "\t".join(texts[i % 4:] + texts[:i % 4]) + f"\t{'D' if i < 6 else 'A'}\n"
                   for i in range(10))
    path = tmp_path / "bench.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tC\tD\tanswer\n" + rows)
    assert baselines(path)["constant_answer_accuracy"] == 0.6
    assert baselines(path)["constant_option_accuracy"] == pytest.approx(0.3)
    arms, scored = {"A": arm(0.4), "D": arm(0.55)}, {"captions": scored_file(tmp_path / "captions", 0.7)}
    results = write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(s, arms, scored, str(path)) for s in (0, 1)])
    assert results["summary"]["constant_option_accuracy"] == pytest.approx(0.3)
    assert "not skills" not in (tmp_path / "report.md").read_text()
    arms = {"A": arm(0.25), "D": arm(0.28)}
    write_report(tmp_path, CycleConfig(arms=("A", "D")), [seed(s, arms, scored, str(path)) for s in (0, 1)])
    assert "No arm's mean MC accuracy exceeds 0.300" in (tmp_path / "report.md").read_text()


def test_a_benchmark_without_answers_reports_its_baselines_as_not_measured(tmp_path):
    path = tmp_path / "test_split.tsv"
    path.write_text("index\timage_path\tquestion\tA\tB\tanswer\n0\ta.png\tq?\tyes\tno\t\n")
    assert baselines(path) == dict.fromkeys(("constant_answer_accuracy", "constant_option_accuracy", "chance_accuracy"))
    scored = {"captions": scored_file(tmp_path / "captions", 0.7)}
    results = write_report(tmp_path, CycleConfig(arms=("A", "D")),
                           [seed(0, {"A": arm(0.5), "D": arm(0.6)}, scored, str(path))])
    assert results["summary"]["chance_accuracy"] is None
    report = (tmp_path / "report.md").read_text()
    assert "most common answer (letter) scores n/a" in report and "not skills" not in report
