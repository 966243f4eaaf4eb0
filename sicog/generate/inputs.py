"""Input records -> generation tasks: the exact prompt, the image files and the prompt length in tokens.

Reading is cheap on purpose (image headers only, no decoding) because every rank reads the whole
input to plan the same batches. A record that cannot be generated for (no question, missing or
unreadable or degenerate image, over-long prompt) becomes an error record here, before batching, so
it never shifts another record. Images that pass the header check but fail to decode are caught
when their batch is encoded (see :mod:`sicog.generate.sample`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sicog.data.jsonl import RecordError, error_record, record_id
from sicog.data.prompts import (
    CAPTION_PROMPT_TYPES,
    IMAGE_TOKEN,
    REASONING_PROMPT_TYPES,
    caption_prompt,
    reasoning_prompt,
    user_turn,
)
from sicog.data.schema import resolve_image
from sicog.data.sources import iter_data_path
from sicog.data.text import blank
from sicog.generate.settings import DEFAULT_MAX_ASPECT_RATIO
from sicog.model.image_io import ImageError, check_image_file, shown_path
from sicog.model.processing import SicogProcessor

TASKS = ("captions", "reasoning")


@dataclass(frozen=True)
class GenerationTask:
    """One record ready to generate for."""

    index: int
    source: str  # the file (or dataset) it came from; ``line`` is its line or row there
    line: int
    id: str
    record: dict
    prompt: str
    images: tuple[Path, ...]
    num_tokens: int

    def conversation(self) -> list[dict]:
        """The single human turn the model answers: one ``<image>`` line per image, then the prompt."""
        return [{"from": "human", "value": user_turn(self.prompt, len(self.images))}]


@dataclass
class InputPlan:
    """Every input id in file order, the records to generate for, and the records that failed."""

    ids: list[str] = field(default_factory=list)
    tasks: list[GenerationTask] = field(default_factory=list)
    errors: list[dict] = field(default_factory=list)


class UnusableRecord(Exception):
    """A record that goes to the errors file (``field`` names what is wrong)."""

    def __init__(self, reason: str, field: str) -> None:
        super().__init__(reason)
        self.reason, self.field = reason, field


def record_question(record: dict) -> str | None:
    """The record's question: its ``question`` field, else its first human turn without ``<image>``.

    Raises :class:`UnusableRecord` when ``conversations`` is there but not a list of turns.
    """
    question = record.get("question")
    if isinstance(question, str) and not blank(question):
        return question
    conversations = record.get("conversations")
    if conversations is not None and not isinstance(conversations, list):
        raise UnusableRecord(
            f"'conversations' is {type(conversations).__name__}, not a list of {{from, value}} turns", "conversations"
        )
    for turn in conversations or ():
        if isinstance(turn, dict) and turn.get("from") == "human" and isinstance(turn.get("value"), str):
            text = turn["value"].replace(IMAGE_TOKEN, "").strip()
            return None if blank(text) else text
    return None


def build_prompt(task: str, prompt_type: str, record: dict) -> str:
    """The exact user text (without ``<image>``) for ``record``; raises :class:`UnusableRecord` without a question.

    Only prompts built on the record's question look it up: the others never read ``conversations``.
    """
    needs_question = task == "reasoning" or prompt_type == "cod-conv"
    question = record_question(record) if needs_question else None
    if needs_question and question is None:
        raise UnusableRecord(f"prompt type {prompt_type!r} needs a question ('question' or a human turn)", "question")
    try:
        if task == "captions":
            return caption_prompt(prompt_type, question)
        return reasoning_prompt(prompt_type, question)
    except ValueError as err:
        raise UnusableRecord(str(err), "question") from None


def check_prompt_type(task: str, prompt_type: str) -> None:
    """Raise ``ValueError`` naming the choices when ``prompt_type`` does not belong to ``task``."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    choices = CAPTION_PROMPT_TYPES if task == "captions" else REASONING_PROMPT_TYPES
    if prompt_type not in choices:
        raise ValueError(f"prompt type {prompt_type!r} is not a {task} prompt type; choose from: {', '.join(choices)}")


def image_size(path: Path, max_aspect_ratio: float) -> tuple[int, int]:
    """``(width, height)`` from the file header; :class:`ImageError` when missing, unreadable or degenerate."""
    check_image_file(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read image {shown_path(path)}: {err}") from None
    if width <= 0 or height <= 0:
        raise ImageError(f"degenerate image {shown_path(path)}: zero size ({width}x{height})")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise ImageError(
            f"degenerate image {shown_path(path)}: aspect ratio {max(width, height) / min(width, height):.0f}:1 "
            f"({width}x{height}) exceeds {max_aspect_ratio:g}:1"
        )
    return width, height


class PromptCounter:
    """Token length of a generation prompt, images included, without decoding any image.

    The text part is rendered with the processor's chat template and cached per prompt (caption
    prompts repeat for every record).
    """

    def __init__(self, processor: SicogProcessor) -> None:
        self.processor = processor
        self._text: dict[tuple[str, int], int] = {}

    def __call__(self, prompt: str, sizes: Sequence[tuple[int, int]]) -> int:
        key = (prompt, len(sizes))
        if key not in self._text:
            turn = [{"from": "human", "value": user_turn(prompt, len(sizes))}]
            text = self.processor.tokenizer.apply_chat_template(
                self.processor.to_messages(turn), tokenize=False, add_generation_prompt=True
            )
            ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._text[key] = len(ids) - len(sizes)  # each <image> token is replaced by the image's tokens
        return self._text[key] + sum(self.processor.image_token_count(w, h, inference=True) for w, h in sizes)


def image_paths(record: dict, image_folder: str | os.PathLike | None) -> tuple[Path, ...]:
    """The record's image files (``image``: a path or a list of paths); raises :class:`UnusableRecord` when unusable."""
    image = record.get("image")
    paths = [image] if isinstance(image, str) else image
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise UnusableRecord("missing, empty, or not a path or list of paths: generation needs an image", "image")
    return tuple(resolve_image(p, image_folder) for p in paths)


def read_inputs(
    path: str | os.PathLike,
    processor: SicogProcessor,
    *,
    task: str,
    prompt_type: str,
    image_folder: str | os.PathLike | None = None,
    max_prompt_tokens: int | None = None,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
    transposed: Callable[[str], bool] | None = None,
) -> InputPlan:
    """Read every record of ``path`` into tasks and error records: any source of :mod:`sicog.data.sources`, or
    several (comma-separated, or a brace pattern such as ``/data/part{1..3}.jsonl``), read in order.

    ``transposed(record_id)``: whether to plan a record's images with width and height swapped (the
    ``mirror_rotation`` corruption turns them by 90 or 270 degrees, and a slice grid's token cost depends
    on its orientation).

    A record without a usable id, or with an id seen before (in any of the sources), raises
    :class:`RecordError` (naming file and line): outputs are matched to inputs by id, so ids must be unique.
    """
    check_prompt_type(task, prompt_type)
    plan = InputPlan()
    first_seen: dict[str, str] = {}
    count = PromptCounter(processor)
    for source, line, record in iter_data_path(path):
        rid = record_id(record, path=source, line=line)
        if rid in first_seen:
            raise RecordError(f"duplicate id (first on {first_seen[rid]})", path=source, line=line, record_id=rid,
                              field="id")
        first_seen[rid] = f"line {line}" if source == str(path) else f"line {line} of {source}"
        plan.ids.append(rid)
        try:
            prompt = build_prompt(task, prompt_type, record)
            images = image_paths(record, image_folder)
            try:
                sizes = [image_size(p, max_aspect_ratio) for p in images]
                sizes = [(h, w) for w, h in sizes] if transposed is not None and transposed(rid) else sizes
            except ImageError as err:
                raise UnusableRecord(str(err), "image") from None
            num_tokens = count(prompt, sizes)
            if max_prompt_tokens is not None and num_tokens > max_prompt_tokens:
                raise UnusableRecord(
                    f"prompt is {num_tokens} tokens (images included), over the limit of {max_prompt_tokens}", "prompt"
                )
        except UnusableRecord as skip:
            plan.errors.append(
                error_record(record, skip.reason, record_id=rid, field=skip.field, file=source, line=line)
            )
            continue
        plan.tasks.append(GenerationTask(len(plan.ids) - 1, source, line, rid, record, prompt, images, num_tokens))
    return plan
