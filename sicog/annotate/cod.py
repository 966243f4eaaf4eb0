"""Chain-of-Description annotation: what the VLM is asked, how its reply is read, what is written.

A source record is a LLaVA record whose first exchange is a question about one image and the image's
original caption. The VLM rewrites the caption into the five CoD steps; the reply becomes a CoD
training record (``cod-conv`` prompt -> the 5-step caption) and a detailed-description record
(the bare question -> step 5 only).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from sicog.annotate.stepcheck import StepFormatError, format_checked_steps
from sicog.data.jsonl import RecordError, record_id
from sicog.data.prompts import CAPTION_PROMPTS, COD_STEPS, IMAGE_TOKEN, caption_prompt, strip_instruction
from sicog.data.schema import check_llava_record
from sicog.data.steps import split_steps

_STEP_LIST = "\n".join(f"Step {i}: {header}" for i, header in enumerate(COD_STEPS, start=1))

SYSTEM_PROMPT = f"""You are a meticulous visual annotator. You receive an image, the question it came with, \
and an existing caption of it. Write a new description of the image as exactly five steps, in this order, \
each starting on its own line with its header:

{_STEP_LIST}

What each step covers:
1. The main subjects and the overall scene: what the image is about at first glance.
2. Each notable object on its own: colour, shape, size, material, texture, count, state, any visible text.
3. Where things are and how they relate: positions, relative placement, interactions, the arrangement of the scene.
4. What lies at the edges or in the background: small, partly hidden or easily missed details.
5. One fluent paragraph that integrates the observations of steps 1 to 4 into a complete description.

Rules:
- Describe only what is visible in the image. Treat the original caption as a hint: keep what the image \
confirms, correct what it contradicts, leave out what cannot be seen.
- Do not mention the caption, the question or these instructions.
- Plain text only; nothing before Step 1 and nothing after Step 5."""


class ReplyError(ValueError):
    """A model reply that does not hold the five CoD steps."""


@dataclass(frozen=True)
class CodSource:
    """What the annotator needs from one input record."""

    record_id: str
    image: str
    question: str
    caption: str


def read_source(record: dict, *, path: str | os.PathLike | None = None, line: int | None = None) -> CodSource:
    """The id, image, bare question and original caption of ``record``; :class:`RecordError` names what is wrong.

    The first human turn is the question (``<image>`` and step-by-step requests removed; it may be empty)
    and the first assistant turn is the original caption.
    """
    rid = record_id(record, path=path, line=line)

    def fail(message: str, field: str) -> RecordError:
        return RecordError(message, path=path, line=line, record_id=rid, field=field)

    image = record.get("image")
    images = image if isinstance(image, list) else [image]
    if len(images) != 1 or not isinstance(images[0], str) or not images[0]:
        raise fail(f"expected exactly one image path, got {image!r}", "image")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        raise fail("expected a human question and a gpt caption", "conversations")
    for index, role in ((0, "human"), (1, "gpt")):
        turn = turns[index]
        if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
            raise fail(f"expected a {role!r} turn with a string value", f"conversations[{index}]")
    caption = turns[1]["value"].strip()
    if not caption:
        raise fail("the original caption is empty", "conversations[1].value")
    return CodSource(rid, images[0], strip_instruction(turns[0]["value"]), caption)


def build_messages(image_url: str, source: CodSource) -> list[dict]:
    """The chat messages asking for the five steps: our system prompt, then the image, question and caption."""
    question = source.question or "(none: describe the image in detail)"
    text = f"Question paired with the image: {question}\n\nOriginal caption:\n{source.caption}"
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": text},
            ],
        },
    ]


def parse_cod_reply(text: str, finish_reason: str | None = None) -> tuple[list[str], str]:
    """The five step bodies of a reply and the caption they format to; :class:`ReplyError` says why not.

    Lenient about how steps are marked (see :func:`split_steps`), strict about content: all five steps
    present and non-empty, no other step numbers, and a caption that parses back to the same steps.
    """
    if finish_reason == "length":
        raise ReplyError("reply cut off at the token limit (finish_reason=length)")
    if not text.strip():
        raise ReplyError("empty reply")
    steps = split_steps(text, COD_STEPS)
    if not steps:
        raise ReplyError("no 'Step N' markers in the reply")
    expected = range(1, len(COD_STEPS) + 1)
    missing = [n for n in expected if not steps.get(n)]
    extra = sorted(n for n in steps if n not in expected)
    problems = []
    if missing:
        problems.append(f"missing or empty step(s) {', '.join(map(str, missing))}")
    if extra:
        problems.append(f"unexpected step(s) {', '.join(map(str, extra))}")
    if problems:
        raise ReplyError("; ".join(problems))
    bodies = [steps[n] for n in expected]
    try:
        return bodies, format_checked_steps(COD_STEPS, bodies)
    except StepFormatError as err:
        raise ReplyError(str(err)) from None


def _training_record(record: dict, prompt: str, answer: str, annotation: dict) -> dict:
    out = copy.deepcopy(record)
    out["conversations"] = [
        {"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"},
        {"from": "gpt", "value": answer},
    ]
    out["annotation"] = annotation
    check_llava_record(out)
    return out


def cod_record(record: dict, source: CodSource, caption: str, model: str) -> dict:
    """The CoD training record: the question + " Describe the image step-by-step." -> the 5-step caption.

    Without a question the ``cod-default`` prompt is used. Fields other than ``conversations`` are kept.
    """
    prompt = caption_prompt("cod-conv", source.question) if source.question else caption_prompt("cod-default")
    return _training_record(record, prompt, caption, {"kind": "cod", "model": model})


def dd_record(record: dict, source: CodSource, description: str, model: str) -> dict:
    """The detailed-description record: the bare question (or the ``default`` caption prompt) -> step 5."""
    prompt = source.question or CAPTION_PROMPTS["default"]
    return _training_record(record, prompt, description, {"kind": "detailed_description", "model": model})


def description_of(caption: str) -> str:
    """Step 5 of a CoD caption written by :func:`cod_record` (used to rebuild a missing description record)."""
    bodies, _ = parse_cod_reply(caption)
    return bodies[-1]
