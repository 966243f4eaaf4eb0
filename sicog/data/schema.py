"""The LLaVA record schema shared by every stage, and its validator.

A record: ``{"id": str, "image": str | [str, ...] (optional), "conversations": [{"from": "human"|"gpt",
"value": str}, ...]}``; ``<image>`` placeholders appear only in human turns, one per image.
Fields a stage does not own are kept untouched.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sicog.data.jsonl import RecordError
from sicog.data.prompts import IMAGE_TOKEN
from sicog.data.text import blank

ROLES = ("human", "gpt")

# The kind of the schema error of an assistant turn without text (training skips such records).
EMPTY_ANSWER = "empty answer"


def record_images(record: dict) -> list[str]:
    """The record's image paths as a list (empty for a text-only record).

    The ``image`` field must pass :func:`valid_image_field` first: a number or a boolean is no list of paths.
    """
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


IMAGE_FIELD_RULE = "must be a non-empty string or a list of non-empty strings"


def valid_image_field(image: object) -> bool:
    """Whether a record's ``image`` is absent, a non-empty path, or a non-empty list of them."""
    if image is None:
        return True
    images = [image] if isinstance(image, str) else image
    return isinstance(images, list) and bool(images) and all(isinstance(path, str) and path for path in images)


def check_llava_record(record: Any, *, path: str | None = None, line: int | None = None) -> None:
    """Raise :class:`RecordError` (naming file, line, id and field) when ``record`` is not a usable LLaVA record.

    Besides the shape, an assistant turn must hold text: an empty or whitespace-only answer would teach the
    model to answer nothing (curation never chooses such a candidate either). Human turns may be empty apart
    from their ``<image>``, as in published captioning data. The error's ``kind`` is a short category of the
    problem, by which ``sicog data check`` groups its summary.
    """

    def fail(message: str, field: str | None, kind: str) -> None:
        rid = record.get("id") if isinstance(record, dict) else None
        raise RecordError(message, path=path, line=line, record_id=rid, field=field, kind=kind)

    if not isinstance(record, dict):
        fail(f"expected an object, got {type(record).__name__}", None, "not an object")
    if record.get("id") in (None, "") or isinstance(record.get("id"), (dict, list, bool)):
        fail("missing or invalid id", "id", "invalid id")
    if not valid_image_field(record.get("image")):
        fail(IMAGE_FIELD_RULE, "image", "invalid image field")
    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        fail("must be a non-empty list of turns", "conversations", "invalid conversations")
    n_placeholders = 0
    for index, turn in enumerate(conversations):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict):
            fail("turn must be an object", field, "invalid conversations")
        role, value = turn.get("from"), turn.get("value")
        expected = ROLES[index % 2]
        if role != expected:
            fail(f"role {role!r} where {expected!r} was expected (turns alternate human, gpt)", f"{field}.from",
                 "role order")
        if not isinstance(value, str):
            fail("value must be a string", f"{field}.value", "invalid conversations")
        if role == "gpt" and blank(value):
            fail("empty answer: an assistant turn needs text to learn from", f"{field}.value", EMPTY_ANSWER)
        if role == "gpt" and IMAGE_TOKEN in value:
            fail(f"{IMAGE_TOKEN} in an assistant turn", f"{field}.value", "<image> in answer")
        n_placeholders += value.count(IMAGE_TOKEN)
    if len(conversations) < 2:  # turns alternate from human: a gpt turn is the second
        fail("no gpt turn: a record needs an answer to learn from", "conversations", "no answer")
    n_images = len(record_images(record))
    if n_placeholders != n_images:
        fail(f"{n_placeholders} {IMAGE_TOKEN} placeholder(s) but {n_images} image(s)", "conversations",
             "placeholder count")


class ImageOutsideFolder(ValueError):
    """A record's image path that leads out of the image folder where that is not allowed."""


def resolve_image(image: str, image_folder: str | os.PathLike | None, *, allow_outside: bool = True) -> Path:
    """A record's image path: ``image`` under ``image_folder`` (as given when no folder), or ``image`` itself
    when absolute.

    With ``allow_outside=False`` a path that leads out of the folder (``../``, an absolute path elsewhere;
    the working folder when no folder is given) raises :class:`ImageOutsideFolder`. The check is on the
    path as written, so symbolic links that the user placed inside the folder are followed as usual.
    """
    path = Path(image)
    full = path if path.is_absolute() or image_folder is None else Path(image_folder) / path
    if not allow_outside:
        folder = os.path.abspath(image_folder if image_folder is not None else os.curdir)
        # Join the record's own path (not ``full``, which already holds a relative folder) to the absolute folder.
        target = os.path.normpath(os.path.join(folder, path))
        if os.path.commonpath([folder, target]) != folder:
            raise ImageOutsideFolder(f"image path {image!r} leads outside the image folder {folder!r}")
    return full
