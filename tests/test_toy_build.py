"""`sicog toy build`: manifest, record formats, disjoint benchmarks, determinism, the demo's grid layout."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from sicog.cli import main  # noqa: E402
from sicog.cycle.config import load_config  # noqa: E402
from sicog.data.jsonl import iter_records, load_records  # noqa: E402
from sicog.data.prompts import (  # noqa: E402
    CAPTION_PROMPTS,
    COD_STEPS,
    COT_STEPS,
    IMAGE_TOKEN,
    SHORT_ANSWER,
    STEP_BY_STEP_ANSWER,
    STEP_BY_STEP_DESCRIBE,
)
from sicog.data.schema import check_llava_record  # noqa: E402
from sicog.data.steps import split_steps  # noqa: E402
from sicog.eval.prompts import MC_INSTRUCTION  # noqa: E402
from sicog.model.slicing import plan_slices  # noqa: E402
from sicog.toy.build import FILES, build_world, load_manifest  # noqa: E402
from sicog.toy.datasets import CAPTION_REQUESTS, SIZES, TSV_COLUMNS, read_bench_tsv  # noqa: E402
from sicog.toy.questions import CATEGORIES  # noqa: E402
from sicog.toy.score import load_ground_truth, score_caption, score_mc  # noqa: E402
from sicog.toy.world import SLICING  # noqa: E402

LLAVA_SETS = ("align", "cod", "detailed", "cot", "sft")
JSONL_SETS = (*LLAVA_SETS, "unlabeled_images", "unlabeled_questions", "bench_caption")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "world"
    build_world(out, seed=0, size="tiny")
    return out


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def test_manifest_names_every_file_with_counts(world: Path) -> None:
    manifest = json.loads((world / "manifest.json").read_text())
    for key in FILES:
        assert (world / manifest[key]).exists(), key
    counts = manifest["counts"]
    for name, expected in SIZES["tiny"].items():
        assert counts[name] == expected, name
    assert counts["detailed"] == counts["cod"]
    for name in JSONL_SETS:
        assert len(load_records(world / manifest[name])) == counts[name], name
    images = sorted((world / "images").rglob("*.png"))
    assert counts["images"] == counts["ground_truth"] == len(images)
    assert manifest["bench_mc_categories"] == {c: 2 for c in CATEGORIES}
    assert manifest["image_settings"] == SLICING
    loaded = load_manifest(world)
    assert loaded["align"] == (world / "align.jsonl").resolve() and loaded["seed"] == 0


def test_llava_records_are_valid_and_images_exist(world: Path) -> None:
    for name in LLAVA_SETS:
        for line, record in iter_records(world / f"{name}.jsonl"):
            check_llava_record(record, path=f"{name}.jsonl", line=line)
            assert record["conversations"][0]["value"].startswith(IMAGE_TOKEN + "\n")
    for name in JSONL_SETS:
        for record in load_records(world / f"{name}.jsonl"):
            assert (world / "images" / record["image"]).is_file(), (name, record["id"])
    assert set(load_records(world / "unlabeled_images.jsonl")[0]) == {"id", "image"}
    assert set(load_records(world / "bench_caption.jsonl")[0]) == {"id", "image"}
    assert {"id", "image", "question", "answer"} <= set(load_records(world / "unlabeled_questions.jsonl")[0])


def test_ground_truth_covers_every_image(world: Path) -> None:
    truth = {r["image"]: r for r in load_records(world / "ground_truth.jsonl")}
    on_disk = {str(p.relative_to(world / "images")) for p in (world / "images").rglob("*.png")}
    assert set(truth) == on_disk
    for image, record in truth.items():
        with Image.open(world / "images" / image) as picture:
            assert picture.size == (record["width"], record["height"])
        assert score_caption(record["description"], record)["f1"] == 1.0


def test_align_captions_name_every_object_and_web_captions_stay_partial(world: Path) -> None:
    truth = load_ground_truth(world / "ground_truth.jsonl")
    for record in load_records(world / "align.jsonl"):
        score = score_caption(record["conversations"][1]["value"], truth[record["image"]])
        assert score["f1"] == 1.0 and score["background"] is True
    web = [score_caption(r["conversations"][1]["value"], truth[r["image"]])
           for r in load_records(world / "unlabeled_web.jsonl")]
    assert all(s["precision"] == 1.0 for s in web) and any(s["recall"] < 1.0 for s in web)


def test_cod_and_detailed_formats(world: Path) -> None:
    cod = load_records(world / "cod.jsonl")
    detailed = {r["image"]: r for r in load_records(world / "detailed.jsonl")}
    prompts = [r["conversations"][0]["value"] for r in cod]
    assert f"{IMAGE_TOKEN}\n{CAPTION_PROMPTS['cod-default']}" in prompts
    for record in cod:
        human, gpt = (turn["value"] for turn in record["conversations"])
        assert human.endswith(" " + STEP_BY_STEP_DESCRIBE)
        steps = split_steps(gpt, COD_STEPS)
        assert sorted(steps) == [1, 2, 3, 4, 5] and all(f"Step {i}: {h}\n" in gpt for i, h in enumerate(COD_STEPS, 1))
        twin = detailed[record["image"]]
        twin_human, twin_gpt = (turn["value"] for turn in twin["conversations"])
        assert twin_gpt == steps[5] and STEP_BY_STEP_DESCRIBE not in twin_human
        if human == f"{IMAGE_TOKEN}\n{CAPTION_PROMPTS['cod-default']}":
            assert twin_human == f"{IMAGE_TOKEN}\n{CAPTION_PROMPTS['default']}"


def test_cot_sft_and_question_formats(world: Path) -> None:
    kinds = Counter()
    for record in load_records(world / "cot.jsonl"):
        human, gpt = (turn["value"] for turn in record["conversations"])
        assert human.endswith(" " + STEP_BY_STEP_ANSWER)
        steps = split_steps(gpt, COT_STEPS)
        assert sorted(steps) == [1, 2, 3, 4] and steps[4] == f"The answer is {record['answer']}."
        multiple = MC_INSTRUCTION in human
        kinds["mc" if multiple else "open"] += 1
        if multiple:
            assert "\nA. " in human and "\nD. " in human and record["answer"] in "ABCD"
    assert kinds["mc"] and kinds["open"]
    sft_records = load_records(world / "sft.jsonl")
    sft = [r["conversations"] for r in sft_records]
    assert any(c[0]["value"].endswith("\n" + SHORT_ANSWER) for c in sft)
    assert any(c[0]["value"].endswith(MC_INSTRUCTION) and c[1]["value"] in "ABCD" for c in sft)
    # Detailed captions keep the final model able to caption (the caption benchmark asks for one).
    truth = load_ground_truth(world / "ground_truth.jsonl")
    detailed = [r for r in sft_records
                if r["conversations"][0]["value"].removeprefix(f"{IMAGE_TOKEN}\n") in CAPTION_REQUESTS]
    assert detailed
    assert all(score_caption(r["conversations"][1]["value"], truth[r["image"]])["f1"] == 1.0 for r in detailed)
    for record in load_records(world / "unlabeled_questions.jsonl"):
        assert STEP_BY_STEP_ANSWER not in record["question"] and IMAGE_TOKEN not in record["question"]


def test_benchmarks_are_disjoint_from_training_images(world: Path) -> None:
    truth = load_records(world / "ground_truth.jsonl")

    def scene(record):
        return json.dumps({k: record[k] for k in ("width", "height", "background", "mark", "border")}) + json.dumps(
            sorted((o["name"], o["size"], o["position"], o["label"] or 0) for o in record["objects"])
        )

    bench = [r for r in truth if r["dataset"].startswith("bench")]
    train = [r for r in truth if not r["dataset"].startswith("bench")]
    assert bench and train
    assert not {scene(r) for r in bench} & {scene(r) for r in train}
    train_bytes = {hashlib.sha256((world / "images" / r["image"]).read_bytes()).digest() for r in train}
    rows = read_bench_tsv(world / "bench_mc.tsv")
    bench_bytes = {hashlib.sha256(base64.b64decode(row["image"])).digest() for row in rows}
    bench_bytes |= {hashlib.sha256((world / "images" / r["image"]).read_bytes()).digest() for r in bench}
    assert not bench_bytes & train_bytes


def test_bench_tsv_is_vlmevalkit_style_and_scores(world: Path) -> None:
    rows = read_bench_tsv(world / "bench_mc.tsv")
    assert tuple(rows[0]) == TSV_COLUMNS and [r["index"] for r in rows] == [str(i) for i in range(len(rows))]
    for row in rows:
        data = base64.b64decode(row["image"])
        assert data == (world / "images" / "bench_mc" / f"bench_mc-{int(row['index']):05d}.png").read_bytes()
        assert row["answer"] in "ABCD" and row["category"] in CATEGORIES and len({row[k] for k in "ABCD"}) == 4
    assert score_mc({r["index"]: r["answer"] for r in rows}, rows)["accuracy"] == 1.0
    assert score_mc({r["index"]: r[r["answer"]] for r in rows}, rows)["accuracy"] == 1.0


def test_world_tokenizer_loads_and_keeps_texts_short(world: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    assert len(tokenizer.encode(",", add_special_tokens=False)) == 1
    assert tokenizer.convert_tokens_to_ids("<image>") != tokenizer.unk_token_id

    def lengths(name: str) -> list[int]:
        records = load_records(world / f"{name}.jsonl")
        return [len(tokenizer.encode(r["conversations"][1]["value"], add_special_tokens=False)) for r in records]

    # Of a CoD caption about 100 tokens are the five fixed step headers (the published wording); the longest
    # must fit the toy preset's caption budget, or generation would cut step 5, the part curation reads.
    assert statistics.mean(lengths("cod")) < 200 and max(lengths("cod")) < load_config("toy").caption_max_new_tokens
    assert statistics.mean(lengths("cot")) < 90 and max(lengths("cot")) < 125


def test_cli_keeps_replaces_or_refuses(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 0
    assert _tree_digest(out) == _tree_digest(world)
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 0  # same world: kept
    assert main(["toy", "build", "--out", str(out), "--size", "tiny", "--seed", "3"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["toy", "build", "--out", str(out), "--size", "tiny", "--seed", "3", "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folders left behind"
    with pytest.raises(ValueError, match="unknown size"):
        build_world(tmp_path / "x", size="huge")


@pytest.mark.parametrize("command", ["parts", "references"])
@pytest.mark.parametrize("damage", ["missing", "unbuilt", "truncated", "not an object"])
def test_world_commands_refuse_a_missing_or_damaged_world_in_one_line(tmp_path: Path, capsys, command: str,
                                                                       damage: str) -> None:
    world = tmp_path / "world"
    if damage != "missing":
        world.mkdir()
    if damage == "truncated":
        (world / "manifest.json").write_text('{"world": "sicog toy world", "vers')
    elif damage == "not an object":
        (world / "manifest.json").write_text("[]")
    target = ["--out", str(tmp_path / "parts")] if command == "parts" else ["--output", str(tmp_path / "r.jsonl")]
    assert main(["toy", command, "--world", str(world), *target]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert str(world / "manifest.json") in err
    if damage in ("missing", "unbuilt"):
        assert "build the world first" in err
    else:
        assert "not a valid manifest" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if damage == "missing" else ["world"])


def test_build_refuses_a_damaged_manifest_unless_forced(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text('{"version": ')
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a valid manifest" in err and "--force" in err
    assert main(["toy", "build", "--out", str(out), "--size", "tiny", "--force"]) == 0
    assert _tree_digest(out) == _tree_digest(world)


@pytest.mark.slow
def test_same_seed_same_tree_in_fresh_processes(world: Path, tmp_path: Path) -> None:
    def build(out: Path, seed: int, hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "sicog", "toy", "build", "--out", str(out), "--size", "tiny"]
        command += ["--seed", str(seed)]
        subprocess.run(command, check=True, cwd=REPO, env=env, capture_output=True)
        return _tree_digest(out)

    assert build(tmp_path / "a", 0, "1") == build(tmp_path / "b", 0, "2") == _tree_digest(world)
    assert build(tmp_path / "c", 1, "1") != _tree_digest(world)


@pytest.mark.slow
def test_demo_world_is_the_patch_aligned_grid(tmp_path: Path) -> None:
    manifest = build_world(tmp_path / "demo", seed=0, size="demo")
    for name, count in SIZES["demo"].items():
        assert manifest["counts"][name] == count
    assert manifest["layout"] == "grid"
    assert manifest["bench_mc_categories"] == {c: SIZES["demo"]["bench_mc"] // len(CATEGORIES) for c in CATEGORIES}
    # As in the paper, the unlabeled pools are larger than the annotated sets.
    assert min(SIZES["demo"]["unlabeled_images"], SIZES["demo"]["unlabeled_questions"]) > 2 * max(
        SIZES["demo"]["cod"], SIZES["demo"]["cot"])
    truth = load_records(tmp_path / "demo" / "ground_truth.jsonl")
    plans = {plan_slices(r["width"], r["height"], **SLICING) for r in truth}
    assert {(p.num_slices, p.source_size) for p in plans} == {(0, (32, 32))}
    assert {len(r["objects"]) for r in truth} == {4}


def test_perception_check_offers_the_truth_and_one_fact_changed(world: Path) -> None:
    from sicog.toy.datasets import PERCEPTION_FACTS

    manifest = load_manifest(world)
    truth = load_ground_truth(manifest["ground_truth"])
    captions = load_records(manifest["bench_caption"])
    rows = read_bench_tsv(manifest["bench_perception"])
    assert len(rows) == manifest["counts"]["bench_perception"] > len(captions)
    described = {base64.b64encode((manifest["image_folder"] / r["image"]).read_bytes()).decode(): r["image"]
                 for r in captions}
    for row in rows:
        assert row["category"] in PERCEPTION_FACTS and row["C"] == row["D"] == ""
        gt = truth[described[row["image"]]]
        right, wrong = row[row["answer"]], row["B" if row["answer"] == "A" else "A"]
        assert right == gt["description"] and wrong != right
        # The changed description still parses; it differs from the truth in the changed kind of fact.
        assert score_caption(right, gt)["f1"] == 1.0
        changed = score_caption(wrong, gt)
        if row["category"] in ("color", "shape"):
            assert changed["hallucinated"] == 1
        elif row["category"] == "background":
            assert changed["background"] is False
        else:
            assert changed["f1"] == 1.0 and changed["attribute_accuracy"][
                "size" if row["category"] == "size" else "position"] < 1.0
