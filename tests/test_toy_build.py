"""`sicog toy build`: manifest, record formats, disjoint benchmarks, determinism, the demo's grid layout."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from sicog.cli import main  # noqa: E402
from sicog.cycle.config import load_config  # noqa: E402
from sicog.data.jsonl import iter_records, load_records  # noqa: E402
from sicog.data.lock import output_lock  # noqa: E402
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
from sicog.toy.build import FILES, WORLD_VERSION, build_world, load_manifest  # noqa: E402
from sicog.toy.datasets import CAPTION_REQUESTS, COD_DEFAULT_REQUEST, SIZES, TSV_COLUMNS, read_bench_tsv  # noqa: E402
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


# The tiny world 0's records (every .jsonl file), pinned with the version that builds them: a change to what a seed
# builds has to bump WORLD_VERSION (and this digest), or an older world left in a run folder is kept as current.
RECORDS_OF_VERSION = (9, "1ba485b918635347228ba87c9e549ffb9b369d0127779d5f0891de981d51e75c")


def test_what_a_seed_builds_is_pinned_to_the_world_version(world: Path) -> None:
    digest = hashlib.sha256()
    for path in sorted(world.glob("*.jsonl")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    assert (WORLD_VERSION, digest.hexdigest()) == RECORDS_OF_VERSION


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
    # Stage 2's descriptions keep the bare request the caption benchmark's cod-default prompt extends.
    sft_requests = {r["conversations"][0]["value"] for r in load_records(world / "sft.jsonl")}
    assert f"{IMAGE_TOKEN}\n{COD_DEFAULT_REQUEST}" in sft_requests


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


# A built world with one thing wrong -> what the error line says.
INCOMPLETE = {
    "no size": "manifest lacks the keys size",
    "seed as text": "seed is '0', not a JSON integer",
    "seed as true": "seed is True, not a JSON integer",
    "unknown layout": "layout 'round' is not one of",
    "no tokenizer": "its tokenizer folder",
    "no ground truth": "its ground_truth file",
}


@pytest.mark.parametrize("command", ["parts", "references"])
@pytest.mark.parametrize("damage", ["missing", "unbuilt", "truncated", "not an object", *INCOMPLETE])
def test_world_commands_refuse_a_missing_or_damaged_world_in_one_line(world: Path, tmp_path: Path, capsys,
                                                                       command: str, damage: str) -> None:
    """Before any training: an incomplete world (a copy without its tokenizer, a hand-edited manifest) gave a
    KeyError or FileNotFoundError traceback from the middle of `toy parts`."""
    target = tmp_path / "world"
    if damage in INCOMPLETE:
        shutil.copytree(world, target)
        _damage(target, damage)
    elif damage != "missing":
        target.mkdir()
    if damage == "truncated":
        (target / "manifest.json").write_text('{"world": "sicog toy world", "vers')
    elif damage == "not an object":
        (target / "manifest.json").write_text("[]")
    output = ["--out", str(tmp_path / "parts")] if command == "parts" else ["--output", str(tmp_path / "r.jsonl")]
    assert main(["toy", command, "--world", str(target), *output]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sicog toy {command}: error: ") and len(err.strip().splitlines()) == 1, err
    assert str(target / "manifest.json") in err
    if damage in ("missing", "unbuilt"):
        assert "build the world first" in err
    elif damage in INCOMPLETE:
        assert INCOMPLETE[damage] in err
    else:
        assert "not a valid manifest" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if damage == "missing" else ["world"])


def _damage(world: Path, damage: str) -> None:
    manifest = json.loads((world / "manifest.json").read_text())
    if damage == "no size":
        del manifest["size"]
    elif damage == "seed as text":
        manifest["seed"] = "0"
    elif damage == "seed as true":
        manifest["seed"] = True
    elif damage == "unknown layout":
        manifest["layout"] = "round"
    elif damage == "no tokenizer":
        shutil.rmtree(world / "tokenizer")
    elif damage == "no ground truth":
        (world / "ground_truth.jsonl").unlink()
    (world / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("manifest", "says"), [
    ('{"version": ', "not a valid manifest"),
    # The version, seed and size of this build, and nothing else: it was kept as a finished world, and the
    # command then failed with a KeyError traceback on "counts".
    (json.dumps({"version": WORLD_VERSION, "seed": 0, "size": "tiny"}), "manifest lacks the keys layout, counts"),
])
def test_build_refuses_a_damaged_or_incomplete_manifest_unless_forced(world: Path, tmp_path: Path, capsys,
                                                                      manifest: str, says: str) -> None:
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sicog toy build: error: ") and len(err.strip().splitlines()) == 1, err
    assert says in err and "--force" in err
    assert main(["toy", "build", "--out", str(out), "--size", "tiny", "--force"]) == 0
    assert _tree_digest(out) == _tree_digest(world)


def test_build_refuses_a_world_missing_a_file(world: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    shutil.copytree(world, out)
    shutil.rmtree(out / "tokenizer")
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 2
    assert "its tokenizer folder" in capsys.readouterr().err
    assert main(["toy", "build", "--out", str(out), "--size", "tiny", "--force"]) == 0
    assert _tree_digest(out) == _tree_digest(world)
    # One image removed by hand: the world was kept as finished, and its records named the missing file.
    next((out / "images").rglob("*.png")).unlink()
    assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 2
    assert f"{out / 'images'} holds 111 images, not the 112 built; rebuild the world" in capsys.readouterr().err


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


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo world of seed 0, which the docs' samples come from."""
    out = tmp_path_factory.mktemp("demo") / "world"
    build_world(out, seed=0, size="demo")
    return out


@pytest.mark.slow
def test_demo_world_is_the_patch_aligned_grid(demo: Path) -> None:
    manifest = json.loads((demo / "manifest.json").read_text())
    for name, count in SIZES["demo"].items():
        assert manifest["counts"][name] == count
    assert manifest["layout"] == "grid"
    assert manifest["bench_mc_categories"] == {c: SIZES["demo"]["bench_mc"] // len(CATEGORIES) for c in CATEGORIES}
    # As in the paper, the unlabeled pools are larger than the annotated sets.
    assert min(SIZES["demo"]["unlabeled_images"], SIZES["demo"]["unlabeled_questions"]) > 2 * max(
        SIZES["demo"]["cod"], SIZES["demo"]["cot"])
    truth = load_records(demo / "ground_truth.jsonl")
    plans = {plan_slices(r["width"], r["height"], **SLICING) for r in truth}
    assert {(p.num_slices, p.source_size) for p in plans} == {(0, (32, 32))}
    assert {len(r["objects"]) for r in truth} == {4}


@pytest.mark.slow
def test_doc_samples_are_the_records_their_pictures_show(demo: Path) -> None:
    """Each dataset's picture in docs/toy_world.md is a demo record's image: its section names that record
    (bench_mc: its row), and a record the doc quotes is the world's, as written. The sft sample's text once
    asked another question, with another answer, than the record pictured."""
    doc = (REPO / "docs" / "toy_world.md").read_text(encoding="utf-8")
    pictured = 0
    for section in doc.split("\n### "):
        picture = re.search(r'<img src="images/toy_(\w+)\.png"', section)
        if picture is None:
            continue
        dataset, shown = picture[1], (REPO / "docs" / "images" / f"toy_{picture[1]}.png").read_bytes()
        (record_id,) = [p.stem for p in (demo / "images" / dataset).glob("*.png") if p.read_bytes() == shown]
        named = f"Row {int(record_id.rsplit('-', 1)[1])}:" if dataset == "bench_mc" else record_id
        assert named in section, f"the {dataset} picture is {record_id}, which its section does not name"
        pictured += 1
    assert pictured == 8
    quoted = [*re.findall(r"```json\n(.*?)```", doc, re.DOTALL), *re.findall(r"`(\{\"id\".*?\})`", doc)]
    records = [json.loads(text) for text in quoted if '"..."' not in text]  # not the elided ground truth
    assert len(records) == 5
    for record in records:
        written = load_records(demo / f"{record['id'].rsplit('-', 1)[0]}.jsonl")
        assert record == next(r for r in written if r["id"] == record["id"])


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


def test_a_changed_fact_gives_a_scene_the_world_could_draw() -> None:
    """No labelled object turns small in the perception check (the world labels no small object, so the text
    alone would tell that option wrong), and no colour and shape pair is made twice."""
    import random

    from sicog.toy.datasets import PERCEPTION_FACTS, one_fact_changed
    from sicog.toy.world import LAYOUTS, UNLABELLED_SIZE, sample_scene

    layout, rng = LAYOUTS["sliced"], random.Random(0)
    labelled = 0
    for _ in range(1000):
        scene = sample_scene(rng, layout)
        for fact in PERCEPTION_FACTS:
            changed = one_fact_changed(scene, fact, layout, rng)
            if changed is None:
                continue
            assert not any(o.label is not None and o.size == UNLABELLED_SIZE for o in changed.objects)
            assert len({(o.color, o.shape) for o in changed.objects}) == len(changed.objects)
            labelled += fact == "size" and any(o.label is not None for o in scene.objects)
    assert labelled > 100  # the rule was put to the test


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_a_build_removes_staging_left_by_killed_builds_only(tmp_path: Path) -> None:
    """A build killed by SIGKILL leaves its hidden staging folder (or the old world it had moved aside); the next
    build removes those of processes that are gone on this host, not those of live ones or of other hosts."""
    host, dead = socket.gethostname(), _dead_pid()
    stale = [f".w.building-{host}-{dead}", f".w.replaced-{host}-{dead}", f".w.building-{dead}"]
    kept = [f".w.building-{host}-{os.getppid()}", f".w.building-elsewhere-{dead}", f".other.building-{host}-{dead}"]
    for name in stale + kept:
        (tmp_path / name / "images").mkdir(parents=True)
    build_world(tmp_path / "w", seed=0, size="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w", *kept])


@pytest.mark.parametrize("other_seed", [0, 1])
def test_a_world_finished_meanwhile_is_kept_or_refused_never_replaced(world: Path, tmp_path: Path, monkeypatch,
                                                                      other_seed: int) -> None:
    """Two builds into one --out at once: the second to finish checks again, under the output's lock, before
    replacing. Both used to exit 0, the seed-1 world silently replaced by the seed-0 one."""
    from sicog.toy import build

    out = tmp_path / "w"
    build_into = build._build_into

    def another_build_finishes_meanwhile(root: Path, seed: int, size: str) -> dict:
        manifest = build_into(root, seed, size)
        shutil.copytree(world, out)
        theirs = json.loads((out / "manifest.json").read_text())
        (out / "manifest.json").write_text(json.dumps({**theirs, "seed": other_seed}))
        return manifest

    monkeypatch.setattr(build, "_build_into", another_build_finishes_meanwhile)
    if other_seed == 0:
        assert build_world(out, seed=0, size="tiny")["seed"] == 0
    else:
        with pytest.raises(FileExistsError, match="holds something else.*--force"):
            build_world(out, seed=0, size="tiny")
    assert json.loads((out / "manifest.json").read_text())["seed"] == other_seed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"], "staging or lock left behind"


def test_build_refuses_an_output_another_build_is_replacing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "w"
    with output_lock(out):
        assert main(["toy", "build", "--out", str(out), "--size", "tiny"]) == 2
    err = capsys.readouterr().err
    line = err.rsplit("\r", 1)[-1]  # after the progress bars, which it builds before it replaces
    assert line.startswith(f"sicog toy build: error: {out} is in use by another run") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_build_into_the_current_folder(world: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """`--out .` has no name to stage beside: renaming "." failed with an OSError traceback. The empty folder is
    filled in place, so the current folder (the shell's) shows the world rather than being a deleted one."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    assert main(["toy", "build", "--out", ".", "--size", "tiny"]) == 0
    assert Path("manifest.json").is_file() and _tree_digest(tmp_path / "here") == _tree_digest(world)
    assert main(["toy", "build", "--out", ".", "--size", "tiny"]) == 0  # kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_a_fill_in_place_a_killed_build_cut_off_is_filled_again(world: Path, tmp_path: Path, monkeypatch) -> None:
    """Killed half way through moving a world into an empty --out, the same command refused the folder ("holds
    something else") for good."""
    import sicog.toy.build as build

    out = tmp_path / "w"
    out.mkdir()
    moves, replace = [], os.replace

    def killed_after_three(source, target):
        if Path(target).parent == out:  # a move into --out
            if len(moves) == 3:
                raise KeyboardInterrupt  # the build stops here: out keeps what was moved, as after a SIGKILL
            moves.append(target)
        replace(source, target)

    monkeypatch.setattr(os, "replace", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        build_world(out, size="tiny")
    monkeypatch.undo()
    assert len(list(out.iterdir())) == 4 and (out / build.FILLING).exists() and not (out / "manifest.json").exists()
    build_world(out, size="tiny")
    assert _tree_digest(out) == _tree_digest(world) and not (out / build.FILLING).exists()


@pytest.mark.slow
def test_sigterm_stops_a_build_and_removes_its_staging(tmp_path: Path) -> None:
    """SIGTERM (kill, timeout, a scheduler) ends a build as Ctrl-C does: its staging folder is removed. It used to
    kill the process at once and leave the folder for good."""
    command = [sys.executable, "-m", "sicog", "toy", "build", "--out", str(tmp_path / "w"), "--size", "demo"]
    build = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while build.poll() is None and not list(tmp_path.glob(".w.building-*/images/*")):
            time.sleep(0.05)
        build.send_signal(signal.SIGTERM)
        assert build.wait(timeout=60) == -signal.SIGTERM  # died by the signal after its cleanup (a shell says 143)
    finally:
        build.kill()
    assert list(tmp_path.iterdir()) == []
