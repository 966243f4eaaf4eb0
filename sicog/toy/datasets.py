"""Every dataset of the toy world, in the real SICOG record formats.

Each dataset draws its own images from its own random stream (seeded by the world seed and the
dataset's name), and no scene is drawn twice across the whole world, so the benchmarks never show a
training picture. Dataset sizes live in :data:`SIZES`.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import random
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from sicog.data.jsonl import RecordError
from sicog.data.prompts import (
    CAPTION_PROMPTS,
    COD_STEPS,
    IMAGE_TOKEN,
    SHORT_ANSWER,
    STEP_BY_STEP_ANSWER,
    STEP_BY_STEP_DESCRIBE,
    reasoning_prompt,
    user_turn,
)
from sicog.data.steps import format_steps
from sicog.toy.answers import cot_answer, multiple_choice, multiple_choice_prompt
from sicog.toy.language import brief_description, cod_bodies, detailed_description, web_caption
from sicog.toy.questions import CATEGORIES, MULTIPLE_CHOICE_ONLY, OPEN_ONLY, QUESTION_TYPES, Question, question_kinds
from sicog.toy.render import png_bytes, render
from sicog.toy.world import LAYOUTS, UNLABELLED_SIZE, Layout, Scene, sample_scene

# Records (or benchmark items) per dataset; "detailed" mirrors "cod" and is not listed.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {
        "align": 16,
        "cod": 12,
        "cot": 16,
        "unlabeled_images": 16,
        "unlabeled_questions": 16,
        "sft": 16,
        "bench_mc": 10,
        "bench_caption": 10,
    },
    "demo": {
        "align": 800,
        "cod": 200,
        "cot": 200,
        "unlabeled_images": 1000,
        "unlabeled_questions": 1000,
        "sft": 600,
        "bench_mc": 640,
        "bench_caption": 100,
    },
}
# The layout each size draws (sicog.toy.world.LAYOUTS): the demo is learnable by a tiny model on a CPU, the
# tiny world used by the tests exercises slicing, empty cells, digits, dots and borders.
SIZE_LAYOUTS = {"tiny": "sliced", "demo": "grid"}
TSV_COLUMNS = ("index", "image", "question", "A", "B", "C", "D", "answer", "category")

# The cod-default prompt is this request followed by the step-by-step suffix.
COD_DEFAULT_REQUEST = CAPTION_PROMPTS["cod-default"][: -len(STEP_BY_STEP_DESCRIBE)].strip()
CAPTION_REQUESTS = (
    COD_DEFAULT_REQUEST,
    "Describe this image in detail.",
    "Write a detailed description of the picture.",
)
ALIGN_REQUESTS = (
    "Write a short caption for the image.",
    "Give a brief caption of this picture.",
    "What is shown in the image? Answer briefly.",
)
BRIEF_REQUESTS = ("Describe the image briefly.", "Give a short description of the image.")
# Shares of the instruction-tuning set: short answers, multiple choice, detailed captions (as in
# LLaVA-NeXT's mixture; without them stage 2 unlearns captioning), the rest brief descriptions.
SFT_SHORT, SFT_MC, SFT_DETAILED = 0.55, 0.3, 0.1


def conversation(record_id: str, image: str, prompt: str, reply: str, **extra: object) -> dict:
    """A one-turn LLaVA record; ``prompt`` is the user text without the ``<image>`` line."""
    turns = [{"from": "human", "value": user_turn(prompt)}, {"from": "gpt", "value": reply}]
    return {"id": record_id, "image": image, "conversations": turns, **extra}


class WorldWriter:
    """Draws unique scenes, writes their images and collects their ground truth and the text corpus."""

    def __init__(self, root: Path, seed: int, layout: str = "sliced") -> None:
        self.root = root
        self.seed = seed
        self.layout = LAYOUTS[layout]
        self.seen: set[tuple] = set()
        self.ground_truth: list[dict] = []
        self.corpus: list[str] = []

    def rng(self, dataset: str) -> random.Random:
        """The dataset's own random stream (string seeding is stable across runs and hash seeds)."""
        return random.Random(f"sicog-toy/{self.seed}/{dataset}")

    def draw(
        self, rng: random.Random, accept: Callable[[Scene], object] | None = None, max_tries: int = 10_000
    ) -> tuple[Scene, object]:
        """A scene not drawn before for which ``accept`` returns something other than None."""
        for _ in range(max_tries):
            scene = sample_scene(rng, self.layout)
            if scene.key() in self.seen:
                continue
            result = accept(scene) if accept else True
            if result is not None:
                self.seen.add(scene.key())
                return scene, result
        raise RuntimeError(f"no new acceptable scene after {max_tries} draws")

    def add_image(self, dataset: str, image_id: str, scene: Scene) -> tuple[str, bytes]:
        """Render and save the scene; record its ground truth; return its path (relative) and PNG bytes."""
        relative = f"{dataset}/{image_id}.png"
        data = png_bytes(render(scene))
        path = self.root / "images" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entry = {"image": relative, "dataset": dataset, **scene.ground_truth()}
        entry["description"] = detailed_description(scene, None)
        self.ground_truth.append(entry)
        return relative, data

    def learn(self, *texts: str) -> None:
        """Add texts to the tokenizer corpus (without the image placeholder, a special token)."""
        self.corpus.extend(t.replace(IMAGE_TOKEN, "").strip() for t in texts)


def _progress(dataset: str, count: int) -> tqdm:
    return tqdm(range(count), desc=f"toy {dataset}", unit="image", leave=False)


def _draw_question(writer: WorldWriter, rng: random.Random, kinds: list[str], need_mc: bool) -> tuple[Scene, Question]:
    kind = rng.choice([k for k in kinds if not (need_mc and k in OPEN_ONLY)])
    generate = QUESTION_TYPES[kind][1]

    def accept(scene: Scene) -> Question | None:
        question = generate(scene, rng)
        if question is None or (need_mc and not question.can_be_multiple_choice):
            return None
        return question

    return writer.draw(rng, accept)


def build_align(writer: WorldWriter, count: int) -> list[dict]:
    """Stage-1 alignment: one-sentence captions naming every object by colour, shape and place.

    Stage 1 grounds the image only when its text depends on the image: with the partial web captions
    the toy model learned the captions' wording and nothing of the picture (docs/toy_world.md)."""
    rng, records = writer.rng("align"), []
    for i in _progress("align", count):
        scene, _ = writer.draw(rng)
        image, _ = writer.add_image("align", f"align-{i:05d}", scene)
        record = conversation(f"align-{i:05d}", image, rng.choice(ALIGN_REQUESTS), brief_description(scene, rng))
        records.append(record)
    return records


def _description_request(request: str) -> str:
    """A caption request as a whole description answers it: the CoD request without its step-by-step sentence
    is the ``default`` prompt, the one the perception check and the image-use references ask with."""
    return CAPTION_PROMPTS["default"] if request == COD_DEFAULT_REQUEST else request


def build_cod(writer: WorldWriter, count: int) -> tuple[list[dict], list[dict]]:
    """The annotated Chain-of-Description set and its "detailed" twin (step 5 only, same images)."""
    rng, cod, detailed = writer.rng("cod"), [], []
    for i in _progress("cod", count):
        scene, _ = writer.draw(rng)
        image, _ = writer.add_image("cod", f"cod-{i:05d}", scene)
        request = COD_DEFAULT_REQUEST if rng.random() < 0.5 else rng.choice(CAPTION_REQUESTS)
        bodies = cod_bodies(scene, rng)
        caption = format_steps(COD_STEPS, bodies)
        cod.append(conversation(f"cod-{i:05d}", image, f"{request} {STEP_BY_STEP_DESCRIBE}", caption))
        detailed.append(conversation(f"detailed-{i:05d}", image, _description_request(request), bodies[4]))
    return cod, detailed


def _question_prompt(question: Question, rng: random.Random, multiple: bool) -> tuple[str, str, str | None]:
    """(question text as asked, short answer, letter or None): options and instruction for multiple choice."""
    if not multiple:
        return question.text, question.answer, None
    options, letter = multiple_choice(question, rng)
    return multiple_choice_prompt(question.text, options), letter, letter


def _wants_mc(question: Question, rng: random.Random) -> bool:
    if question.kind in MULTIPLE_CHOICE_ONLY:
        return True
    return question.can_be_multiple_choice and rng.random() < 0.5


def build_cot(writer: WorldWriter, count: int) -> list[dict]:
    """The annotated structured-CoT set: four-step answers to open and multiple-choice questions."""
    rng, records, kinds = writer.rng("cot"), [], question_kinds(writer.layout)
    for i in _progress("cot", count):
        scene, question = _draw_question(writer, rng, kinds, need_mc=False)
        image, _ = writer.add_image("cot", f"cot-{i:05d}", scene)
        asked, answer, letter = _question_prompt(question, rng, _wants_mc(question, rng))
        reply = cot_answer(question, rng, letter)
        meta = {"answer": answer, "question_type": question.kind, "category": question.category}
        records.append(conversation(f"cot-{i:05d}", image, f"{asked} {STEP_BY_STEP_ANSWER}", reply, **meta))
    return records


def build_unlabeled_images(writer: WorldWriter, count: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Images without any text (the pool the perception model captions), plus two references for them.

    ``web``: a short partial caption per image, the "original caption" a baseline pre-trains on.
    ``oracle``: the ground-truth CoD caption under the cod-default prompt, what a perfect teacher writes.
    Both draw from their own random streams, so the images are the same with or without them.
    """
    rng, records, web, oracle = writer.rng("unlabeled_images"), [], [], []
    web_rng, oracle_rng = writer.rng("unlabeled_web"), writer.rng("oracle_captions")
    for i in _progress("unlabeled_images", count):
        record_id = f"unlabeled_images-{i:05d}"
        scene, _ = writer.draw(rng)
        image, _ = writer.add_image("unlabeled_images", record_id, scene)
        records.append({"id": record_id, "image": image})
        web.append(conversation(record_id, image, web_rng.choice(ALIGN_REQUESTS), web_caption(scene, web_rng)))
        caption = format_steps(COD_STEPS, cod_bodies(scene, oracle_rng))
        oracle.append(conversation(record_id, image, CAPTION_PROMPTS["cod-default"], caption))
    return records, web, oracle


def build_unlabeled_questions(writer: WorldWriter, count: int) -> tuple[list[dict], list[dict]]:
    """Image + question pairs (``answer``: the hidden ground truth that generation ignores), and the oracle:
    the ground-truth four-step answer under the cot-default prompt (its own random stream)."""
    rng, records, oracle, kinds = writer.rng("unlabeled_questions"), [], [], question_kinds(writer.layout)
    oracle_rng = writer.rng("oracle_reasoning")
    for i in _progress("unlabeled_questions", count):
        record_id = f"unlabeled_questions-{i:05d}"
        scene, question = _draw_question(writer, rng, kinds, need_mc=False)
        image, _ = writer.add_image("unlabeled_questions", record_id, scene)
        asked, answer, letter = _question_prompt(question, rng, _wants_mc(question, rng))
        meta = {"question_type": question.kind, "category": question.category}
        records.append({"id": record_id, "image": image, "question": asked, "answer": answer, **meta})
        reply = cot_answer(question, oracle_rng, letter)
        prompt = reasoning_prompt("cot-default", asked)
        oracle.append(conversation(record_id, image, prompt, reply, answer=answer, **meta))
    return records, oracle


def build_sft(writer: WorldWriter, count: int) -> list[dict]:
    """Stage-2 instruction tuning: short answers, multiple-choice letters, detailed and brief descriptions."""
    rng, records, kinds = writer.rng("sft"), [], question_kinds(writer.layout)
    open_kinds = [k for k in kinds if k not in MULTIPLE_CHOICE_ONLY]
    # Stratified rolls: every share is met up to rounding, even in a tiny world.
    rolls = [(k + rng.random()) / count for k in range(count)]
    rng.shuffle(rolls)
    for i in _progress("sft", count):
        record_id, roll = f"sft-{i:05d}", rolls[i]
        if roll < SFT_SHORT + SFT_MC:
            multiple = roll >= SFT_SHORT
            scene, question = _draw_question(writer, rng, kinds if multiple else open_kinds, need_mc=multiple)
            image, _ = writer.add_image("sft", record_id, scene)
            asked, _, letter = _question_prompt(question, rng, multiple)
            prompt, reply = (asked, letter) if multiple else (f"{asked}\n{SHORT_ANSWER}", question.reply)
            meta = {"question_type": question.kind, "category": question.category}
            records.append(conversation(record_id, image, prompt, reply, **meta))
        else:
            scene, _ = writer.draw(rng)
            image, _ = writer.add_image("sft", record_id, scene)
            if roll < SFT_SHORT + SFT_MC + SFT_DETAILED:
                # The bare cod-default request among them: the caption benchmark asks that request step by step.
                request, reply = rng.choice(CAPTION_REQUESTS), detailed_description(scene, rng)
            else:
                request, reply = rng.choice(BRIEF_REQUESTS), brief_description(scene, rng)
            records.append(conversation(record_id, image, request, reply))
    return records


def build_bench_mc(writer: WorldWriter, count: int) -> list[dict]:
    """The held-out multiple-choice benchmark (VLMEvalKit TSV rows), balanced over the five categories."""
    rng, rows = writer.rng("bench_mc"), []
    for i in _progress("bench_mc", count):
        category = CATEGORIES[i % len(CATEGORIES)]
        kinds = question_kinds(writer.layout, category)
        scene, question = _draw_question(writer, rng, kinds, need_mc=True)
        _, data = writer.add_image("bench_mc", f"bench_mc-{i:05d}", scene)
        options, letter = multiple_choice(question, rng)
        row = {"index": i, "image": base64.b64encode(data).decode("ascii"), "question": question.text}
        row.update(zip("ABCD", options))
        row.update(answer=letter, category=category)
        rows.append(row)
    return rows


def build_bench_caption(writer: WorldWriter, count: int) -> tuple[list[dict], list[dict]]:
    """The held-out caption benchmark (images only; the truth is in ground_truth.jsonl) and the perception
    check on the same images: TSV rows, one per fact kind and image, each offering the image's true
    description and the same description with one fact changed (category: the kind of fact)."""
    rng, changes, records, rows = writer.rng("bench_caption"), writer.rng("bench_perception"), [], []
    for i in _progress("bench_caption", count):
        scene, _ = writer.draw(rng)
        image, data = writer.add_image("bench_caption", f"bench_caption-{i:05d}", scene)
        records.append({"id": f"bench_caption-{i:05d}", "image": image})
        encoded = base64.b64encode(data).decode("ascii")
        for fact in PERCEPTION_FACTS:
            changed = one_fact_changed(scene, fact, writer.layout, changes)
            if changed is None:
                continue
            options = [detailed_description(scene, None), detailed_description(changed, None)]
            changes.shuffle(options)
            rows.append({"index": len(rows), "image": encoded, "question": CAPTION_PROMPTS["default"],
                         "A": options[0], "B": options[1], "C": "", "D": "",
                         "answer": "AB"[options.index(detailed_description(scene, None))], "category": fact})
    return records, rows


# The facts the perception check changes, one at a time (position: two objects trade places).
PERCEPTION_FACTS = ("color", "shape", "size", "position", "background")


def one_fact_changed(scene: Scene, fact: str, layout: Layout, rng: random.Random) -> Scene | None:
    """``scene`` with one ``fact`` changed (None when the scene has no such change to make)."""
    objects = list(scene.objects)
    if fact == "background":
        others = [b for b in layout.backgrounds if b != scene.background]
        return dataclasses.replace(scene, background=rng.choice(others))
    if fact == "position":
        if len(objects) < 2:
            return None
        i, j = rng.sample(range(len(objects)), 2)
        a, b = objects[i], objects[j]
        objects[i], objects[j] = (dataclasses.replace(a, row=b.row, col=b.col),
                                  dataclasses.replace(b, row=a.row, col=a.col))
        return dataclasses.replace(scene, objects=tuple(objects))
    i = rng.randrange(len(objects))
    obj, taken = objects[i], {(o.color, o.shape) for o in objects}
    # A changed fact gives a scene the world could draw: a labelled object never turns small (no small object is
    # labelled, so the text alone would tell that option wrong), and no colour and shape pair occurs twice.
    values = [v for v in getattr(layout, f"{fact}s") if v != getattr(obj, fact) and (
        (obj.label is None or v != UNLABELLED_SIZE) if fact == "size"
        else ((v, obj.shape) if fact == "color" else (obj.color, v)) not in taken)]
    if not values:
        return None
    objects[i] = dataclasses.replace(obj, **{fact: rng.choice(values)})
    return dataclasses.replace(scene, objects=tuple(objects))


def write_bench_tsv(path: Path, rows: list[dict]) -> None:
    """Write benchmark rows as a tab-separated file with :data:`TSV_COLUMNS`."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TSV_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_bench_tsv(path: str | Path) -> list[dict]:
    """Read a VLMEvalKit-style benchmark TSV into dicts (all values are strings)."""
    csv.field_size_limit(1 << 30)  # base64 images exceed csv's default field limit
    with Path(path).open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        required = ("index", "image", "question", "A", "B", "answer", "category")
        missing = [c for c in required if c not in (reader.fieldnames or ())]
        if missing:
            raise RecordError(f"missing columns {', '.join(missing)}", path=path, line=1)
        return list(reader)
