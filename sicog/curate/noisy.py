"""DPO pairs from noisy generation: chosen = the curated answer on the clean image, rejected = an answer
generated for the same record on a corrupted image (``sicog generate ... --corrupt ...``).

The two files are joined by record id. Every id of either file ends in exactly one place: a pair in
the output, or a line of ``<output stem>.errors.jsonl`` that says why (missing on the other side,
prompts or images that differ, a noisy record generated without corruption, no usable candidate).
Format of the pairs: the one of curation's pairs.jsonl (docs/curation.md), read by
``sicog train --stage dpo``; the source says ``"kind": "noisy"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from sicog.curate.extract import Task, candidate_answer, expects_steps, extract
from sicog.curate.records import GeneratedRecord, check_task, parse_generated
from sicog.curate.select import marked_first, record_rng, usable
from sicog.data.answers import Answer
from sicog.data.jsonl import RecordError, error_record, errors_path, iter_records, record_id, write_jsonl, write_records
from sicog.data.prompts import IMAGE_TOKEN, user_turn
from sicog.data.schema import IMAGE_FIELD_RULE, check_llava_record, record_images, valid_image_field
from sicog.data.text import blank

Item = TypeVar("Item")
NO_NOISY = "no answer generated on a corrupted image for this id"
NO_CLEAN = "no curated clean answer for this id (not kept by curation, or not in the curated file)"


@dataclass(frozen=True)
class CleanAnswer:
    """A curated answer on the clean image: the user text (without the ``<image>`` lines in front, which pair
    records leave out; an interleaved prompt keeps its placeholders where they stand) and the chosen answer."""

    id: str
    line: int
    record: dict
    prompt: str
    chosen: str


@dataclass(frozen=True)
class NoisySummary:
    """What one join produced."""

    curated: int
    noisy: int
    pairs: int
    errors: int
    answer_differs: int
    output: str
    errors_output: str


def _bare(prompt: str) -> str:
    return prompt.replace(IMAGE_TOKEN, "").strip()


def _pair_prompt(prompt: str) -> str:
    """A pair's ``prompt``: without its ``<image>`` lines when they all stand in front (training puts them back
    there), else as written, so that a question about "the cat in <image>" keeps its images in place."""
    bare = _bare(prompt)
    return bare if prompt.strip() == user_turn(bare, prompt.count(IMAGE_TOKEN)) else prompt.strip()


def parse_clean(record: dict, *, path: str, line: int) -> CleanAnswer:
    """A curated record: a LLaVA record with one question and one answer (curated.jsonl), or a pair
    record with ``prompt`` and ``chosen`` (pairs.jsonl). Raises :class:`RecordError` naming the field."""
    rid = record_id(record, path=path, line=line)

    def fail(message: str, field: str) -> None:
        raise RecordError(message, path=path, line=line, record_id=rid, field=field)

    if "conversations" in record:
        check_llava_record(record, path=path, line=line)
        turns = record["conversations"]
        if len(turns) != 2:
            fail(f"{len(turns)} turns; a curated answer has one question and one answer", "conversations")
        prompt, chosen = turns[0]["value"], turns[1]["value"]
        fields = ("conversations[0].value", "conversations[1].value")
    else:
        prompt, chosen, fields = record.get("prompt"), record.get("chosen"), ("prompt", "chosen")
        for value, field in zip((prompt, chosen), fields):
            if not isinstance(value, str):
                fail("missing or not a string (need 'conversations', or 'prompt' and 'chosen')", field)
        # check_llava_record checks these two in the LLaVA form; the pair form has no conversation to check.
        if not valid_image_field(record.get("image")):
            fail(IMAGE_FIELD_RULE, "image")
        if IMAGE_TOKEN in chosen:
            fail(f"{IMAGE_TOKEN} in an answer", "chosen")
    for value, field in zip((_bare(prompt), chosen), fields):
        if blank(value):
            fail("empty", field)
    return CleanAnswer(rid, line, record, _pair_prompt(prompt), chosen)


def parse_noisy(record: dict, *, path: str, line: int) -> GeneratedRecord:
    """A generation record whose image was corrupted (``generation.corruption`` set)."""
    item = parse_generated(record, path=path, line=line)
    corruption = record["generation"].get("corruption")
    if not corruption:
        raise RecordError(
            "missing or null: these candidates were not generated on a corrupted image",
            path=path, line=line, record_id=item.id, field="generation.corruption",
        )
    return item


def _read(
    path: str, parse: Callable[..., Item], side: str, task: Task | None = None
) -> tuple[dict[str, Item], list[dict]]:
    """Parsed records by id, and error lines for the invalid and repeated ones; with ``task``, a record generated
    for another task stops the join (:func:`~sicog.curate.records.check_task`)."""
    items: dict[str, Item] = {}
    errors: list[dict] = []
    for line, record in iter_records(path):
        if task is not None:
            check_task(record, task, path=path, line=line)
        try:
            item = parse(record, path=path, line=line)
        except RecordError as err:
            errors.append(error_record(record, str(err), file=path, line=line, field=err.field, side=side))
            continue
        if item.id in items:
            reason = f"{path}:{line} id={item.id!r} field 'id': repeated (first at line {items[item.id].line})"
            errors.append(error_record(record, reason, file=path, line=line, field="id", side=side))
            continue
        items[item.id] = item
    return items, errors


def _answer(text: str, task: Task, prompt_type: str | None) -> Answer | None:
    if task != "reasoning":
        return None
    return candidate_answer(text, extract(text, "reasoning", expect_steps=expects_steps(prompt_type)))


def make_pair(clean: CleanAnswer, noisy: GeneratedRecord, *, task: Task, seed: int, files: dict[str, str]) -> dict:
    """The pair of one joined id; raises :class:`RecordError` (about the noisy record) when it cannot be made.

    The rejected candidate is drawn (seeded by ``seed`` and the id) among the usable candidates (not empty,
    without ``<image>``) other than the chosen text; for reasoning, those whose final answer differs from
    the chosen answer's are preferred (those whose answer a marker introduced first): they are the answers the
    corruption misled.
    """
    path = files["noisy_file"]

    def fail(message: str, field: str) -> None:
        raise RecordError(message, path=path, line=noisy.line, record_id=noisy.id, field=field)

    if _bare(noisy.prompt) != _bare(clean.prompt):
        fail(f"prompt {_bare(noisy.prompt)!r} differs from the curated prompt {_bare(clean.prompt)!r}",
             "generation.prompt")
    if record_images(noisy.record) != record_images(clean.record):
        fail(f"images {record_images(noisy.record)} differ from the curated record's {record_images(clean.record)}",
             "image")
    allowed = [i for i, text in enumerate(noisy.candidates) if usable(text) and text.strip() != clean.chosen.strip()]
    if not allowed:
        fail(f"every candidate is empty, contains {IMAGE_TOKEN} or is identical to the chosen answer", "candidates")
    chosen_answer = _answer(clean.chosen, task, noisy.prompt_type)
    answers = {i: _answer(noisy.candidates[i], task, noisy.prompt_type) for i in allowed}
    differing = [i for i in allowed if chosen_answer is not None and answers[i].normalized != chosen_answer.normalized]
    explicit = {i: answer.explicit for i, answer in answers.items()} if chosen_answer is not None else None
    preferred = marked_first(differing, explicit, chosen_answer is not None and chosen_answer.explicit)
    rejected = record_rng(seed, noisy.id).choice(preferred or allowed)
    source = {
        "kind": "noisy", "task": task, **files,
        "rejected_index": rejected, "corruption": noisy.record["generation"]["corruption"],
    }
    if chosen_answer is not None:
        source.update(chosen_answer=chosen_answer.normalized, rejected_answer=answers[rejected].normalized)
    pair = {"id": clean.id}
    if "image" in clean.record:
        pair["image"] = clean.record["image"]
    pair.update(prompt=clean.prompt, chosen=clean.chosen, rejected=noisy.candidates[rejected], source=source)
    return pair


def pairs_from_noisy(
    curated: str | os.PathLike,
    noisy: str | os.PathLike,
    output: str | os.PathLike,
    *,
    task: Task = "reasoning",
    seed: int = 0,
) -> NoisySummary:
    """Join curated clean answers with noisy generations by id; write the pairs and the errors (atomically).

    A noisy record generated for another task than ``task`` raises :class:`RecordError`: the file is of the
    wrong kind (or ``task`` is)."""
    curated, noisy, output = str(curated), str(noisy), Path(output)
    clean_items, errors = _read(curated, parse_clean, "curated")
    noisy_items, noisy_errors = _read(noisy, parse_noisy, "noisy", task)
    errors += noisy_errors
    files = {"curated_file": curated, "noisy_file": noisy}
    pairs = []
    for rid, clean in clean_items.items():
        item = noisy_items.get(rid)
        if item is None:
            message = f"{curated}:{clean.line} id={rid!r}: {NO_NOISY}"
            errors.append(
                error_record(clean.record, message, file=curated, line=clean.line, field="id", side="curated")
            )
            continue
        try:
            pairs.append(make_pair(clean, item, task=task, seed=seed, files=files))
        except RecordError as err:
            errors.append(
                error_record(item.record, str(err), file=noisy, line=item.line, field=err.field, side="noisy")
            )
    for rid, item in noisy_items.items():
        if rid not in clean_items:
            message = f"{noisy}:{item.line} id={rid!r}: {NO_CLEAN}"
            errors.append(error_record(item.record, message, file=noisy, line=item.line, field="id", side="noisy"))
    write_records(output, pairs)
    write_jsonl(errors_path(output), errors)
    sources = [p["source"] for p in pairs]
    differs = sum(1 for s in sources if "chosen_answer" in s and s["chosen_answer"] != s["rejected_answer"])
    return NoisySummary(
        len(clean_items), len(noisy_items), len(pairs), len(errors), differs, str(output), str(errors_path(output))
    )
