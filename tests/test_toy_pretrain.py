"""Pretrained toy parts: trained once per world like downloads, cached by content, loadable as the real ones."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, CLIPVisionModel, Qwen2ForCausalLM

from sicog.data.jsonl import FILE_MODE
from sicog.model.builders import tiny_text_config
from sicog.toy import pretrain
from sicog.toy.build import build_world, load_manifest
from sicog.toy.model import PARTS_RECORD, TOY_TEXT
from sicog.toy.pretrain import (
    STEPS,
    CellTags,
    _option_log_likelihoods,
    alt_text,
    parts_key,
    pixels,
    pretrained_parts,
    publish,
    reading_check,
    tags_apply,
    times_named,
    train_clip,
    train_language_model,
)
from sicog.toy.score import score_caption
from sicog.toy.world import LAYOUTS, sample_scene


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "world"
    build_world(out, seed=0, size="tiny")
    return out


def test_parts_are_built_once_and_reused(world: Path, tmp_path: Path, capfd) -> None:
    messages = []
    vision, llm = pretrained_parts(world, cache=tmp_path, log=messages.append)
    assert len(messages) == 2 and "toy CLIP" in messages[0] and "toy LM" in messages[1]
    # Progress on stderr (minutes on the demo world), the CLIP's from its own process.
    progress = capfd.readouterr().err
    assert all(f"{bar}: " in progress for bar in ("toy CLIP", "toy LM", "toy LM reading check")), progress
    report = json.loads((vision.parent / PARTS_RECORD).read_text())
    assert report["clip"]["steps"] > 0 and report["lm"]["steps"] > 0
    assert 0.25 <= report["lm"]["reading"]["chance"] <= 0.5 and 0 <= report["lm"]["reading"]["accuracy"] <= 1
    tower = CLIPVisionModel.from_pretrained(vision)
    lm = Qwen2ForCausalLM.from_pretrained(llm)
    tokenizer = AutoTokenizer.from_pretrained(llm)
    assert lm.config.vocab_size == len(tokenizer)
    assert {stat.S_IMODE(p.stat().st_mode) for p in vision.parent.rglob("*.safetensors")} == {FILE_MODE}
    image = torch.from_numpy(pixels(sample_scene(random.Random(0), LAYOUTS["sliced"]), tower.config.image_size))
    assert tower(pixel_values=image[None]).last_hidden_state.shape[-1] == tower.config.hidden_size
    before = vision.stat().st_mtime_ns
    again = []
    assert pretrained_parts(world, cache=tmp_path, log=again.append) == (vision, llm)
    assert again == [] and vision.stat().st_mtime_ns == before, "a second build must reuse the cache"
    assert not [p for p in (tmp_path / "toy-parts").iterdir() if p.name.startswith(".")], "staging left behind"


def test_parts_trained_side_by_side_equal_one_after_the_other(world: Path, tmp_path: Path) -> None:
    """The CLIP trains in a second process beside the LM; its weights are those of training it alone here."""
    vision, llm = pretrained_parts(world, cache=tmp_path, log=lambda _: None)
    manifest = load_manifest(world)
    tokenizer = AutoTokenizer.from_pretrained(str(manifest["tokenizer"]))
    layout, (clip_steps, lm_steps) = LAYOUTS[manifest["layout"]], STEPS[manifest["size"]]
    train_clip(tokenizer, layout, manifest["seed"], clip_steps).save_pretrained(tmp_path / "alone")
    built = CLIPVisionModel.from_pretrained(vision).state_dict()
    for name, weight in CLIPVisionModel.from_pretrained(tmp_path / "alone").state_dict().items():
        assert torch.equal(weight, built[name]), name
    lm, _ = train_language_model(tokenizer, layout, manifest["seed"], lm_steps)
    saved = Qwen2ForCausalLM.from_pretrained(llm).state_dict()
    assert all(torch.equal(weight, saved[name]) for name, weight in lm.state_dict().items())


def test_the_key_follows_the_world(world: Path, tmp_path: Path) -> None:
    other = build_world(tmp_path / "other", seed=1, size="tiny")
    assert other["seed"] == 1
    assert parts_key(world) == parts_key(world) != parts_key(tmp_path / "other")
    # The LM's weights follow the threads it trains with: parts of another thread count are other parts.
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        other_threads = parts_key(world)
    finally:
        torch.set_num_threads(threads)
    assert other_threads != parts_key(world)
    # So do the torch and transformers versions: a warm cache kept the older version's parts after an upgrade.
    base = parts_key(world)
    for library in (pretrain.torch, pretrain.transformers):  # as the module sees them (a test may reimport one)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(library, "__version__", "0.0.1")
            assert parts_key(world) != base, library.__name__


def test_alt_texts_name_only_objects_of_the_image() -> None:
    rng = random.Random(4)
    for _ in range(50):
        scene = sample_scene(rng, LAYOUTS["grid"])
        truth = scene.ground_truth()
        text = alt_text(scene, rng)
        score = score_caption(text, truth)
        assert score["precision"] == 1.0 and not score["hallucinated"]


def _fitted_tags(layout, patches: torch.Tensor, scenes: list) -> CellTags:
    """Cell tags fitted to fixed patch features by 150 Adam steps."""
    torch.manual_seed(0)
    tags = CellTags(layout, patches.shape[-1])
    optimizer = torch.optim.Adam(tags.parameters(), lr=0.1)
    for _ in range(150):
        loss = tags.loss(patches, scenes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tags


def test_cell_tags_read_each_object_from_its_own_patch() -> None:
    layout = LAYOUTS["grid"]
    assert tags_apply(layout, image_size=32, patch_size=16)
    assert not tags_apply(LAYOUTS["sliced"], image_size=32, patch_size=16)
    rng = random.Random(0)
    scenes = [sample_scene(rng, layout) for _ in range(64)]
    values = [*layout.colors, *layout.shapes, *layout.sizes, *range(4)]
    # Each object's attributes and its cell, one-hot, in the patch of that cell (row-major on the 2x2 grid of
    # the 32-px view), as a tower keeps its position embedding.
    patches = torch.zeros(len(scenes), 4, len(values))
    for i, scene in enumerate(scenes):
        for obj in scene.objects:
            cell = (obj.row // 2) * 2 + obj.col // 2
            for value in (obj.color, obj.shape, obj.size, cell):
                patches[i, cell, values.index(value)] = 1.0
    tags = _fitted_tags(layout, patches, scenes)
    # Linear heads fit the labels exactly only if every object is read from its own patch.
    assert tags.loss(patches, scenes).item() < 0.05
    transposed = patches.reshape(-1, 2, 2, len(values)).transpose(1, 2).reshape(-1, 4, len(values))
    assert tags.loss(transposed, scenes).item() > 0.5
    # The place head needs the patch's position: without it the tags cannot be fitted.
    no_place = patches.clone()
    no_place[..., -4:] = 0.0
    assert _fitted_tags(layout, no_place, scenes).loss(no_place, scenes).item() > 0.2


def test_reading_check_scores_each_option_as_its_own_sequence(world: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(world / "tokenizer")
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(tiny_text_config(len(tokenizer), **TOY_TEXT)).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What color is the square?"}],
                                           tokenize=False, add_generation_prompt=True)
    options = ["red", "light gray", "top left", "2"]
    batched = _option_log_likelihoods(lm, tokenizer, prompt, options)
    context = tokenizer(prompt)["input_ids"]
    for option, score in zip(options, batched, strict=True):
        ids = torch.tensor([context + tokenizer(option)["input_ids"]])
        with torch.no_grad():
            log_probs = lm(input_ids=ids).logits.log_softmax(-1)[0]
        alone = sum(log_probs[i - 1, ids[0, i]].item() for i in range(len(context), ids.shape[1]))
        assert score == pytest.approx(alone, abs=1e-4), option
    first = reading_check(lm, tokenizer, LAYOUTS["grid"], seed=0, count=12)
    assert first == reading_check(lm, tokenizer, LAYOUTS["grid"], seed=0, count=12)
    assert first["questions"] == 12 and 0.25 <= first["chance"] <= 0.5
    assert 0 < first["commonest"] <= 1  # some answer is named as often as any other option


def test_times_named_counts_every_wording_as_whole_words() -> None:
    text = ("On a dark grey background, a small blue square in the top right corner, a tiny blue disk in the "
            "lower left, a big red circle at the top left and a small green triangle in the bottom right.")
    assert times_named("blue", text) == 2
    assert times_named("small", text) == 3  # "tiny" is a wording of small
    assert times_named("circle", text) == 2  # "disk" too
    assert times_named("top right", text) == 1 and times_named("bottom left", text) == 1
    assert times_named("dark gray", text) == 1
    assert times_named("red", "a reddish square") == 0
    # A place is not named by a longer place holding one of its wordings ("top" is the top center).
    places = "A red circle in the top left and a blue square in the middle left."
    assert times_named("top center", places) == times_named("center", places) == 0
    assert times_named("top left", places) == times_named("middle left", places) == 1
    assert times_named("yes", text) == 0
    # An object in any wording of its shape, as the reading check's options name objects.
    assert times_named("blue circle", text) == times_named("red circle", text) == 1
    assert times_named("green cross", "a green plus sign and a green cross") == 2


def test_an_interrupted_run_stops_the_clip_worker_and_keeps_nothing(world: Path, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """Ctrl-C, or SIGTERM (which `sicog toy` turns into SystemExit), while the LM trains: the CLIP's worker is
    terminated. Leaving the pool used to wait for it to finish its job, minutes on the demo world; a SIGTERM
    then left it training as an orphan."""
    before = set(multiprocessing.active_children())
    workers = []

    def interrupted(*args) -> None:
        workers.extend(set(multiprocessing.active_children()) - before)
        raise SystemExit(143)

    monkeypatch.setattr(pretrain, "train_language_model", interrupted)
    with pytest.raises(SystemExit):
        pretrained_parts(world, cache=tmp_path, log=lambda _: None)
    assert len(workers) == 1
    workers[0].join()
    assert workers[0].exitcode == -signal.SIGTERM
    assert list((tmp_path / "toy-parts").iterdir()) == [], "staging left behind"


def test_a_concurrent_build_that_finished_first_wins(tmp_path: Path, monkeypatch) -> None:
    """Another builder's parts landing between the check and the rename: they are kept, rather than this build
    failing on a folder that is not empty."""
    import sicog.toy.pretrain as pretrain

    staging, folder = tmp_path / ".key.building", tmp_path / "key"
    (staging / "vision").mkdir(parents=True)
    (staging / PARTS_RECORD).write_text('{"mine": 1}')
    replace = os.replace

    def theirs_land_first(source, target):
        (folder / "vision").mkdir(parents=True)
        (folder / PARTS_RECORD).write_text('{"theirs": 1}')
        replace(source, target)

    monkeypatch.setattr(pretrain.os, "replace", theirs_land_first)
    publish(staging, folder)
    assert (folder / PARTS_RECORD).read_text() == '{"theirs": 1}'
    monkeypatch.setattr(pretrain.os, "replace", replace)
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):  # no parts there: the failure stands
        publish(staging, tmp_path / "file" / "key")


def test_a_run_removes_parts_staging_left_by_killed_runs_only(world: Path, tmp_path: Path) -> None:
    folder = tmp_path / "toy-parts" / parts_key(world)
    folder.mkdir(parents=True)
    (folder / PARTS_RECORD).write_text("{}")  # cached: nothing is trained
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    host, dead = socket.gethostname(), process.pid
    stale = [f".{folder.name}.building-{host}-{dead}", f".0123456789abcdef.building-{dead}"]
    kept = [f".{folder.name}.building-{host}-{os.getppid()}", f".{folder.name}.building-elsewhere-{dead}"]
    for name in stale + kept:
        (folder.parent / name / "vision").mkdir(parents=True)
    assert pretrained_parts(world, cache=tmp_path) == (folder / "vision", folder / "llm")
    assert sorted(p.name for p in folder.parent.iterdir()) == sorted([folder.name, *kept])
