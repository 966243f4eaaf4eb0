"""Generation records in, curation records out: validation and the scored / curated / pair formats.

Input (from ``sicog generate``): any record with ``id``, optional ``image``, ``candidates`` (a list of
strings) and ``generation`` (with ``prompt``, the exact user text without ``<image>``). Formats of the
outputs are documented, with examples, in docs/curation.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from sicog.curate.extract import TASKS, Extraction, Task
from sicog.curate.select import Selection
from sicog.data.answers import Answer
from sicog.data.jsonl import RecordError, error_record, iter_records, record_id
from sicog.data.prompts import IMAGE_TOKEN, user_turn
from sicog.data.schema import check_llava_record, record_images
from sicog.data.text import blank

# Input fields that do not belong in a training record (the training record has its own conversation).
NOT_TRAINING_FIELDS = frozenset({"candidates", "generation", "conversations"})
# The key under which a training record made by curation or a random pick says where its answer came from.
# Not "source": many LLaVA-style pools (ALLaVA, LLaVA-CoT) already carry a "source" field of their own (the
# dataset of origin), which is kept like every input field this stage does not own.
PROVENANCE = "sicog_source"
# Checking the training record's shape before any candidate is chosen needs some answer text; its content
# does not matter, only that it is a valid answer (non-empty, no <image>).
_STAND_IN_ANSWER = "answer"


@dataclass(frozen=True)
class GeneratedRecord:
    """A validated input record with what curation needs pulled out of it."""

    id: str
    line: int
    record: dict
    candidates: list[str]
    prompt: str
    prompt_type: str | None


def parse_generated(record: dict, *, path: str, line: int) -> GeneratedRecord:
    """Validate one generation record; raise :class:`RecordError` naming file, line, id and field."""
    rid = record_id(record, path=path, line=line)

    def fail(message: str, field: str) -> None:
        raise RecordError(message, path=path, line=line, record_id=rid, field=field)

    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        fail("missing or not a list", "candidates")
    if not candidates:
        fail("no candidates", "candidates")
    for index, candidate in enumerate(candidates):
        if not isinstance(candidate, str):
            fail(f"candidate is {type(candidate).__name__}, not a string", f"candidates[{index}]")
    generation = record.get("generation")
    if not isinstance(generation, dict):
        fail("missing or not an object (needed for the training prompt)", "generation")
    prompt = generation.get("prompt")
    if not isinstance(prompt, str) or blank(prompt.replace(IMAGE_TOKEN, "")):
        fail("missing or empty (needed for the training prompt)", "generation.prompt")
    if "task" in generation and generation["task"] not in TASKS:
        fail(f"{generation['task']!r} is no task of `sicog generate` ({' or '.join(map(repr, TASKS))})",
             "generation.task")
    prompt_type = generation.get("prompt_type")
    prompt_type = prompt_type if isinstance(prompt_type, str) else None
    item = GeneratedRecord(rid, line, record, list(candidates), prompt, prompt_type)
    # Build the training record once now so that an unusable image field fails here, not after scoring.
    try:
        check_llava_record(training_record(item, _STAND_IN_ANSWER, {}), path=path, line=line)
    except RecordError as err:
        fail(err.reason, err.field or "image")
    return item


def check_task(record: dict, task: Task, *, path: str | os.PathLike, line: int) -> None:
    """Raise :class:`RecordError` when ``record`` was generated for another task than ``task`` (its
    ``generation.task``, written by ``sicog generate``): reasoning answers curated as captions, or the reverse,
    would be kept and labelled as the wrong kind. Records without it (older runs, hand-made files) pass."""
    generation = record.get("generation")
    # Only the other task's name says the file is of the wrong kind; any other value is this record's own error.
    if isinstance(generation, dict) and generation.get("task") in TASKS and generation["task"] != task:
        raise RecordError(
            f"{generation['task']!r}, not {task!r}: the file holds the output of `sicog generate "
            f"{generation['task']}`, not of `sicog generate {task}`",
            path=path, line=line, record_id=record.get("id"), field="generation.task",
        )


def read_generated_records(
    path: str | os.PathLike, task: Task | None = None
) -> tuple[list[GeneratedRecord], list[dict]]:
    """Validate every generation record of ``path``: the usable ones in file order, and one error line
    (reason naming file, line, id and field, plus the original record) for each invalid or repeated one.

    With ``task``, a record generated for another task raises :class:`RecordError` (:func:`check_task`): then
    the whole file is of the wrong kind, and listing every record as an error would bury the one cause. So does a
    file without records."""
    items: list[GeneratedRecord] = []
    errors: list[dict] = []
    first_line: dict[str, int] = {}
    for line, record in iter_records(path):
        if task is not None:
            check_task(record, task, path=path, line=line)
        try:
            item = parse_generated(record, path=str(path), line=line)
            if item.id in first_line:
                raise RecordError(
                    f"duplicate id (first seen on line {first_line[item.id]})",
                    path=path, line=line, record_id=item.id, field="id",
                )
        except RecordError as err:
            errors.append(error_record(record, str(err), line=line, field=err.field))
            continue
        first_line[item.id] = line
        items.append(item)
    if not items and not errors:  # an empty file (a generation that wrote nothing, a wrong path) is no result
        raise RecordError("holds no records", path=path)
    return items, errors


def human_turn(record: dict, prompt: str) -> str:
    """The user turn: one ``<image>`` line per image, then the generation prompt without its own ``<image>``
    placeholders and stripped (as :func:`pair_record` and DPO training strip a pair's prompt)."""
    n_images = len(record_images(record)) if isinstance(record.get("image"), (str, list)) else 0
    return user_turn(prompt.replace(IMAGE_TOKEN, "").strip(), n_images)


def training_record(item: GeneratedRecord, chosen: str, source: dict[str, Any]) -> dict:
    """A LLaVA conversation for stage 1.5: the generation prompt answered by the chosen candidate.

    Other input fields (e.g. ``question``, ``answer``, a dataset's own ``source``) are kept unchanged;
    ``source`` (where the answer came from) goes under :data:`PROVENANCE`, which this stage owns.
    """
    record = item.record
    out: dict[str, Any] = {"id": item.id}
    if "image" in record:
        out["image"] = record["image"]
    out["conversations"] = [
        {"from": "human", "value": human_turn(record, item.prompt)},
        {"from": "gpt", "value": chosen},
    ]
    for key, value in record.items():
        if key not in NOT_TRAINING_FIELDS and key not in out:
            out[key] = value
    out[PROVENANCE] = source
    return out


def pair_record(item: GeneratedRecord, chosen: str, rejected: str, source: dict[str, Any]) -> dict:
    """A chosen/rejected pair for DPO; ``prompt`` is the user text without ``<image>``."""
    out: dict[str, Any] = {"id": item.id}
    if "image" in item.record:
        out["image"] = item.record["image"]
    out.update(prompt=item.prompt.replace(IMAGE_TOKEN, "").strip(), chosen=chosen, rejected=rejected, source=source)
    return out


@dataclass
class ScoredRecord:
    """One valid record with its extractions, answers, scores and decision."""

    item: GeneratedRecord
    extractions: list[Extraction]
    answers: list[Answer] | None
    text_index: list[int]
    scores: list[float | None] = field(default_factory=list)
    selection: Selection | None = None
