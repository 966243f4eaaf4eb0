"""report.md, results.json and the plots: every arm's numbers, curation quality and wall time."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sicog.cycle.analysis import curation_quality  # noqa: E402
from sicog.cycle.arms import ARMS, arm_name  # noqa: E402
from sicog.cycle.config import CycleConfig  # noqa: E402
from sicog.cycle.engine import Engine  # noqa: E402
from sicog.cycle.plan import SeedPlan  # noqa: E402
from sicog.cycle.world import World  # noqa: E402
from sicog.data.jsonl import iter_records, write_json  # noqa: E402
from sicog.toy.model import PARTS_RECORD  # noqa: E402
from sicog.toy.score import load_ground_truth, score_captions  # noqa: E402


def _accuracy(path: str) -> tuple[dict, float, dict[str, float]]:
    results = json.loads(Path(path).read_text())
    by_category = {k: v["accuracy"] or 0.0 for k, v in results.get("by_category", {}).items()}
    return results, results["accuracy"] or 0.0, by_category


def arm_scores(evaluation: dict[str, str], truth: dict[str, dict] | None) -> dict:
    """One model's multiple-choice accuracy by option likelihood (the primary score), its blind, generated-letter
    and open short-answer accuracies (overall and by category), and with ground truth its caption scores."""
    _, accuracy, by_category = _accuracy(evaluation["mc"])
    scores = {"accuracy": accuracy, "by_category": by_category}
    if "blind" in evaluation:
        _, scores["blind"], scores["blind_by_category"] = _accuracy(evaluation["blind"])
    if "perception" in evaluation:
        _, scores["perception"], scores["perception_by_fact"] = _accuracy(evaluation["perception"])
    if "letters" in evaluation:
        letters, scores["letters"], _ = _accuracy(evaluation["letters"])
        replies = Counter(r["prediction"].strip() for _, r in iter_records(letters["files"]["predictions.jsonl"]))
        # A model that gives one reply to most questions scores what that letter's share of answers is.
        scores["top_reply_share"] = replies.most_common(1)[0][1] / sum(replies.values()) if replies else None
    if "open" in evaluation:
        _, scores["open"], scores["open_by_category"] = _accuracy(evaluation["open"])
    scores["caption"] = None
    if truth is not None and "captions" in evaluation:
        pairs = [(r["candidates"][0], truth[r["image"]]) for _, r in iter_records(evaluation["captions"])]
        caption = score_captions(pairs)
        scores["caption"] = {k: caption[k] for k in ("precision", "recall", "f1")}
    scores["image_use_gap"] = (json.loads(Path(evaluation["image_use"]).read_text())["gap"]
                               if "image_use" in evaluation else None)
    return scores


def seed_results(engine: Engine, seed_plan: SeedPlan, world: World, seed: int) -> dict:
    """One seed's scores per arm, the curation analysis (with ground truth), and its steps' wall and CPU time."""
    truth = load_ground_truth(world.ground_truth) if world.ground_truth else None
    evals = {arm: {k: str(engine.path(ref)) for k, ref in refs.items()} for arm, refs in seed_plan.evals.items()}
    scored = {task: str(engine.path(ref) / "scored.jsonl") for task, ref in seed_plan.curation[1].items()}
    steps = engine.manifest["steps"]
    return {
        "seed": seed,
        "arms": {arm: arm_scores(evaluation, truth) for arm, evaluation in evals.items()},
        "curation": ({task: curation_quality(Path(path), task, truth, seed) for task, path in scored.items()}
                     if truth else {}),
        "scored": scored,
        "lm_reading": _lm_reading(engine, world),
        "benchmark": json.loads(Path(next(iter(evals.values()))["mc"]).read_text())["benchmark"],
        "seconds": {name: steps[name]["seconds"] for name in seed_plan.plan.steps},
        "cpu_seconds": {name: steps[name]["cpu_seconds"] for name in seed_plan.plan.steps},
    }


def _lm_reading(engine: Engine, world: World) -> dict | None:
    """The toy LM's reading check from its parts' record (:func:`sicog.toy.pretrain.reading_check`), if any."""
    if world.toy_root is None:
        return None
    record = engine.path(world.language_model).parent / PARTS_RECORD
    return json.loads(record.read_text())["lm"].get("reading") if record.is_file() else None


def constant_answer_accuracy(benchmark: str | Path) -> float:
    """The best accuracy a model gets by giving the same answer to every question of ``benchmark``."""
    from sicog.eval.tsv import read_benchmark

    answers = Counter(row["answer"].strip() for row in read_benchmark(benchmark).rows)
    return answers.most_common(1)[0][1] / sum(answers.values())


def check_targets(summary: dict, per_seed: list[dict]) -> dict[str, bool]:
    """The demo's claims, each checked on this run: the oracle teaches, SICOG beats its baselines by more
    than the spread, and self-consistency ranks right candidates first (only what this run measured)."""
    table, verdict, targets = summary["table"], summary["verdict"], {}
    if {"A", "E"} <= set(table):
        gain = table["E"]["accuracy"][0] - table["A"]["accuracy"][0]
        targets[f"the oracle teaches: E >= A + 0.15 on MC accuracy ({gain:+.3f})"] = gain >= 0.15
        if "above_blind" in table["E"]:
            seen = table["E"]["above_blind"][0]
            targets[f"the oracle reads the image: E's accuracy minus blind >= 0.15 ({seen:+.3f})"] = seen >= 0.15
    for other in ("B", "C"):
        wins = verdict.get(f"D vs {other}")
        if wins and len(per_seed) > 1:
            # Perception counts where it was measured (caption F1 needs ground truth, the check a benchmark).
            measured = {m: text for m, text in (("caption_f1", "caption F1"), ("perception", "the perception check"))
                        if m in wins}
            also = f" and on {' or '.join(measured.values())}" if measured else ""
            perceives = not measured or any(wins[m]["beats"] for m in measured)
            targets[f"SICOG beats {other} on MC accuracy{also} by more than the spread"] = (
                wins["accuracy"]["beats"] and perceives)
    for task, quality in per_seed[0]["curation"].items():
        if quality["auroc"] is not None:
            targets[f"{task} curation ranks right candidates first: AUROC >= 0.8 ({quality['auroc']:.3f})"] = (
                quality["auroc"] >= 0.8)
        curated, random_pick = quality["right_share_curated"], quality["right_share_random_candidate"]
        if curated is not None and random_pick is not None:
            targets[f"curated {task} right more often than a random pick ({curated:.3f} vs {random_pick:.3f})"] = (
                curated > random_pick)
    return targets


def chance_accuracy(benchmark: str | Path) -> float:
    """The expected accuracy of picking one of each question's options at random."""
    from sicog.eval.tsv import read_benchmark, row_options

    rows = read_benchmark(benchmark).rows
    return statistics.fmean(1 / max(len(row_options(row)), 1) for row in rows)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(per_seed: list[dict], arms: list[str]) -> dict:
    """Mean and spread over seeds of every measured score per arm, and the verdict on every comparison the
    arms table asks for (D against A, B and C), on the scores both arms have."""
    table = {}
    for arm in arms:
        runs = [s["arms"][arm] for s in per_seed]
        table[arm] = {"accuracy": _mean_std([r["accuracy"] for r in runs])}
        # Caption scores need ground truth (the toy world); without it they are not measured, not zero.
        if all(r.get("caption") is not None for r in runs):
            table[arm]["caption_f1"] = _mean_std([r["caption"]["f1"] for r in runs])
        if all("blind" in r for r in runs):
            table[arm]["blind"] = _mean_std([r["blind"] for r in runs])
            table[arm]["above_blind"] = _mean_std([r["accuracy"] - r["blind"] for r in runs])
        for metric in ("letters", "open"):
            if all(metric in r for r in runs):
                table[arm][metric] = _mean_std([r[metric] for r in runs])
        if all("perception" in r for r in runs):
            table[arm]["perception"] = _mean_std([r["perception"] for r in runs])
    verdict = {}
    for arm in (a for a in table if a in ARMS):
        for other in (o for o in ARMS[arm].beats if o in table):
            wins = {}
            for metric in ("accuracy", "caption_f1", "perception"):
                if metric not in table[arm] or metric not in table[other]:
                    continue
                (ma, sa), (mo, so) = table[arm][metric], table[other][metric]
                wins[metric] = {"difference": ma - mo, "spread": sa + so, "beats": ma - mo > sa + so}
            verdict[f"{arm} vs {other}"] = wins
    return {"table": table, "verdict": verdict}


def _plot_categories(per_seed: list[dict], arms: list[str], path: Path) -> None:
    categories = sorted(per_seed[0]["arms"][arms[0]]["by_category"])
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        values = [statistics.fmean(s["arms"][arm]["by_category"].get(c, 0.0) for s in per_seed) for c in categories]
        ax.bar([x + i * width for x in range(len(categories))], values, width, label=f"{arm}: {arm_name(arm)[:28]}")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(categories))], categories, rotation=15)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("Toy benchmark accuracy by category")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_captions(per_seed: list[dict], arms: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.27
    for i, metric in enumerate(("precision", "recall", "f1")):
        values = [statistics.fmean(s["arms"][a]["caption"][metric] for s in per_seed) for a in arms]
        ax.bar([x + i * width for x in range(len(arms))], values, width, label=metric)
    ax.set_xticks([x + width for x in range(len(arms))], arms)
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("Caption benchmark: objects named vs ground truth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curation_threshold(scored: str | Path) -> float | None:
    """The threshold a curation step used, from the ``summary.json`` beside its ``scored.jsonl`` (with no
    ``--threshold`` the command chooses it by encoder); None when there is no summary."""
    summary = Path(scored).parent / "summary.json"
    return json.loads(summary.read_text())["settings"]["threshold"] if summary.is_file() else None


def _plot_curation(scored: dict[str, str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(scored), figsize=(5 * len(scored), 3.2))
    for ax, (task, file) in zip(axes if len(scored) > 1 else [axes], scored.items()):
        best = [r["best_score"] for _, r in iter_records(file) if r.get("best_score") is not None]
        ax.hist(best, bins=30, color="tab:blue")
        threshold = curation_threshold(file)
        if threshold is None:
            ax.set_title(f"{task}: best MBR score")
        else:
            ax.axvline(threshold, color="tab:red", label=f"threshold {threshold}")
            kept = sum(b >= threshold for b in best) / max(len(best), 1)
            ax.set_title(f"{task}: best MBR score (kept {kept:.0%})")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_times(seconds: dict[str, float | None], path: Path) -> None:
    seconds = {k: v or 0.0 for k, v in seconds.items()}
    names = list(seconds)
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(names) + 1))
    ax.barh(names, [seconds[n] for n in names], color="tab:gray")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Wall time per step (first seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(pair: tuple[float, float], seeds: int) -> str:
    return f"{pair[0]:.3f} ± {pair[1]:.3f}" if seeds > 1 else f"{pair[0]:.3f}"


def write_report(out: Path, config: CycleConfig, per_seed: list[dict]) -> dict:
    """Write report.md, results.json and the PNGs into ``out``; return the results."""
    first = per_seed[0]
    arms = list(first["arms"])
    summary = summarize(per_seed, arms)
    summary["constant_answer_accuracy"] = constant_answer = constant_answer_accuracy(first["benchmark"])
    summary["chance_accuracy"] = chance_accuracy(first["benchmark"])
    _plot_categories(per_seed, arms, out / "accuracy_by_category.png")
    captions_scored = first["arms"][arms[0]]["caption"] is not None
    if captions_scored:
        _plot_captions(per_seed, arms, out / "captions.png")
    _plot_curation(first["scored"], out / "curation_scores.png")
    _plot_times(first["seconds"], out / "wall_time.png")
    scores = [{k: s[k] for k in ("seed", "arms", "curation", "lm_reading")} for s in per_seed]
    times = [{k: s[k] for k in ("seed", "seconds", "cpu_seconds")} for s in per_seed]
    results = {"config": config.to_dict(), "seeds": len(per_seed), "per_seed": scores, "summary": summary,
               "time": times}
    write_json(out / "results.json", results)
    seeds = len(per_seed)
    lines = [
        f"# SICOG cycle report ({config.name}, {seeds} seed{'s' if seeds > 1 else ''})",
        "",
        "Arms share every hyper-parameter and step count wherever they share a stage. "
        "Stage 1.5 data: every arm gets the annotated CoD and CoT sets plus its own data.",
    ]
    if config.stage1_tunable_parts and config.stage1_tunable_parts != "resampler":
        lines += ["", f"Stage 1 trains `{config.stage1_tunable_parts}`; the paper trains the projector only "
                      "(docs/toy_world.md says why the toy preset trains more)."]
    mean = lambda arm, key: statistics.fmean(s["arms"][arm][key] or 0.0 for s in per_seed)  # noqa: E731
    lines += ["", "## Results", "",
              "MC accuracy: multiple choice by option likelihood (the primary score). Blind: the same with every "
              "question shown another question's image; above blind: the difference, what the model reads from "
              "the image. Letters: accuracy of a generated option letter. Open answers: the question asked "
              "without its options, the generated short answer compared with the right option's text (synonyms "
              "count as the same answer where the world supplies them, as the toy world does).", "",
              "| arm | what | MC accuracy | blind | above blind | letters | same letter | open answers | caption F1 "
              "| perception | image use |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for arm in arms:
        gaps = [s["arms"][arm].get("image_use_gap") for s in per_seed]
        gap = "n/a" if None in gaps else f"{statistics.fmean(gaps):.3f}"
        same = f"{mean(arm, 'top_reply_share'):.0%}" if "top_reply_share" in first["arms"][arm] else "n/a"
        row = summary["table"][arm]
        cells = [_fmt(row[k], seeds) if k in row else "n/a" for k in ("accuracy", "blind", "above_blind", "letters")]
        name = "later round of D" if "_" in arm else arm_name(arm)
        open_answers, caption_f1, perception = (_fmt(row[k], seeds) if k in row else "n/a"
                                                for k in ("open", "caption_f1", "perception"))
        lines.append(f"| {arm} | {name} | {' | '.join(cells)} | {same} | {open_answers} "
                     f"| {caption_f1} | {perception} | {gap} |")
    lines += ["", f"Always giving the benchmark's most common answer scores {constant_answer:.3f}; picking an "
                  f"option at random {summary['chance_accuracy']:.3f}. Same letter: the share of questions that got "
                  "the arm's most common generated letter (near 100%, the letter accuracy is an answer prior).",
              "", "Perception: the true description of a caption-benchmark image scored against the same "
                  "description with one fact changed (colour, shape, size, place or background), by likelihood; "
                  "chance is 0.5.",
              "", "Image use: the model's loss per token on the reference texts with each record's image swapped for "
                  "another one, minus the loss with the right images. Near 0, the model ignores the picture."]
    if first["lm_reading"]:
        reading = first["lm_reading"]
        lines += ["", f"The starting LM reads: given a scene's true description in text, it answers "
                      f"{reading['accuracy']:.3f} of {reading['questions']} questions about it right (chance "
                      f"{reading['chance']:.3f}; naming whichever option the description names most often, "
                      f"whatever object is asked about: {reading['commonest']:.3f}). A step-by-step answer "
                      "rests on this: it describes, then answers from the description."]
    if all("blind_by_category" in first["arms"][arm] for arm in arms):
        categories = sorted(first["arms"][arms[0]]["by_category"])
        lines += ["", "### By category: MC accuracy / blind", "",
                  "A category whose blind accuracy is far above chance is answerable from the question text alone.",
                  "", "| arm | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
        for arm in arms:
            cells = [f"{statistics.fmean(s['arms'][arm]['by_category'].get(c, 0.0) for s in per_seed):.2f} / "
                     f"{statistics.fmean(s['arms'][arm]['blind_by_category'].get(c, 0.0) for s in per_seed):.2f}"
                     for c in categories]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if all("perception_by_fact" in first["arms"][arm] for arm in arms):
        facts = sorted(first["arms"][arms[0]]["perception_by_fact"])
        lines += ["", "### Perception check by changed fact", "",
                  "| arm | " + " | ".join(facts) + " |", "|---" * (len(facts) + 1) + "|"]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(
                f"{statistics.fmean(s['arms'][arm]['perception_by_fact'].get(f, 0.0) for s in per_seed):.2f}"
                for f in facts) + " |")
    lines += ["", "## Outcome", ""]
    if seeds > 1:
        lines.append("An arm counts as beating another on a metric when the difference of means exceeds the sum of "
                     "the two standard deviations over seeds.")
    else:
        lines.append("With a single seed no spread is known, so no difference below is claimed as a win (use --seeds).")
    lines.append("")
    for pair, wins in summary["verdict"].items():
        arm, other = pair.split(" vs ")
        for metric, w in wins.items():
            verb = "beats" if w["beats"] and seeds > 1 else ("is ahead of" if w["difference"] > 0 else "does not beat")
            lines.append(f"- {arm} {verb} {other} on {metric.replace('_', ' ')}: {w['difference']:+.3f} "
                         f"(spread {w['spread']:.3f}).")
    above = [arm for arm, row in summary["table"].items() if row["accuracy"][0] > constant_answer]
    if not above:
        lines += ["", f"No arm's mean multiple-choice accuracy exceeds {constant_answer:.3f}, what always giving the "
                      "benchmark's most common answer scores: the differences above are not skills."]
    summary["targets"] = targets = check_targets(summary, per_seed)
    if targets:
        lines += ["", "Targets of the toy demo (docs/pipeline.md):", ""]
        lines += [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in targets.items()]
        write_json(out / "results.json", results)
    if first["curation"]:
        lines += ["", "## Does self-consistency find the right data? (first seed, ground truth known)", "",
                  "| task | AUROC of MBR score | right: all candidates | right: random pick (C) | right: curated (D) "
                  "| kept |",
                  "|---|---|---|---|---|---|"]
        rows = list(first["curation"].items())
        if "every_fact" in first["curation"].get("captions", {}):
            rows.insert(1, ("captions, every fact", first["curation"]["captions"]["every_fact"]))
        for task, q in rows:
            cells = [q["auroc"], q["right_share_all_candidates"], q["right_share_random_candidate"],
                     q["right_share_curated"]]
            cells = ["n/a" if v is None else f"{v:.3f}" for v in cells]
            lines.append(f"| {task} | {' | '.join(cells)} | {q['kept']}/{q['records']} |")
        lines += ["", "A caption is right when the description it ends with names every object and nothing else; "
                      "right in every fact when every size, place and background it states is true as well."]
        captions = first["curation"].get("captions", {})
        if captions.get("candidate_facts"):
            picks = {"all candidates": captions["candidate_facts"]}
            by_pick = captions.get("candidate_facts_by_pick", {})
            picks.update({"random pick (C)": by_pick.get("random"), "curated (D)": by_pick.get("curated")})
            facts = list(captions["candidate_facts"])
            lines += ["", "What the perception model's caption candidates say, fact by fact: the share that is true "
                          "(objects: named objects that are in the image / objects of the image named). Curation "
                          "helps a fact where the curated row is above the random pick's.", "",
                      "| candidates | " + " | ".join(facts) + " |", "|---" * (len(facts) + 1) + "|"]
            for name, values in picks.items():
                cells = ["n/a" if not values or values.get(f) is None else f"{values[f]:.3f}" for f in facts]
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    captions_plot = ["![captions](captions.png)", ""] if captions_scored else []
    lines += ["", "## Plots", "", "![accuracy by category](accuracy_by_category.png)", "", *captions_plot,
              "![curation scores](curation_scores.png)", "", "![wall time](wall_time.png)", "",
              "## Time per step (first seed)", "",
              "Wall and CPU seconds of the run that did the step (a step reused from an earlier run keeps its "
              "time).", "",
              "| step | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {name} | {sec} | {first['cpu_seconds'][name]} |" for name, sec in first["seconds"].items()]
    total_cpu = sum(v or 0 for v in first["cpu_seconds"].values())
    lines.append(f"| all steps | {sum(v or 0 for v in first['seconds'].values()):.0f} | {total_cpu:.0f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return results
