"""Chain-of-Description annotation: what the VLM is asked, how its reply is read, what is written.

A source record is a LLaVA record whose first human turn is a question about one image and which holds
the image's original caption: in a ``caption`` field (the published annotation's input) or, without one,
as the first gpt turn. The VLM rewrites the caption into the five CoD steps; the reply becomes a CoD
training record (``cod-conv`` prompt -> the 5-step caption) and a detailed-description record
(the bare question -> step 5 only).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

from sicog.annotate.stepcheck import StepFormatError, format_checked_steps
from sicog.data.jsonl import RecordError, record_id, unpaired_surrogate
from sicog.data.prompts import (
    ANNOTATION_DESCRIBE,
    CAPTION_PROMPTS,
    COD_STEPS,
    IMAGE_TOKEN,
    caption_prompt,
    strip_instruction,
    user_turn,
)
from sicog.data.schema import check_llava_record
from sicog.data.steps import split_steps, step_markers
from sicog.data.text import blank

# The published annotation prompt, verbatim (training_data_annotation/generate_cod_caption.py): the
# released CoD data was written under it, and its step headers are COD_STEPS.
SYSTEM_PROMPT = (
    "You are an expert AI assistant tasked with analyzing an image and generating a detailed, "
    "step-by-step description. You are provided with an original description as a reference. Your goal "
    "is to ensure accuracy, clarity, and logical progression in your response. Follow these guidelines:\n"
    "\n"
    "### Guidelines:\n"
    "1. **Ensure Comprehensive Coverage**: Identify and include all relevant details visible in the "
    "image. Avoid unnecessary repetition or irrelevant information.  \n"
    "2. **Avoid Adding Imaginary Details**: Base your reasoning strictly on what is visible in the image "
    "or provided in the description. Do not include fabricated or unverifiable details.  \n"
    "3. **Incorporate Relevant Context**: Add factual, relevant context to enhance understanding where "
    "appropriate, but ensure it aligns strictly with the visible or provided content.  \n"
    "4. **Prevent Inaccuracies**: Stick to the given data. Avoid assumptions or deviations from the "
    "available evidence.  \n"
    "\n"
    "---\n"
    "\n"
    "### Step-by-Step Process:\n"
    "\n"
    "**Step 1**: Extract salient content by identifying the key elements that define the image or "
    "document.\n"
    "*Example*:\n"
    "The image is a monochrome photocopy of a document that appears to be a page of meeting or project "
    "notes. It contains both typed and handwritten text, with a focus on tasks and progress updates "
    "related to paper-related issues. The document includes a reference number at the bottom and a "
    "source URL.\n"
    "\n"
    "**Step 2**: Analyze detailed information, focusing on instance-level attributes such as low-level "
    "and fine-grained details, such as specific text, layout.\n"
    "*Example*:\n"
    'The document lists several tasks, such as checking with "KC" on the possibility of putting bands '
    '"long-ways," which is marked as "In progress." Other tasks include checking on "shrinking" paper, '
    'which is also "In progress," and checking the commercial viability of banded papers, marked as '
    '"Okay." There are handwritten notes and checks next to some points, indicating their status.\n'
    "\n"
    "**Step 3**: Consider relational-level attributes, analyzing interactions between elements and their "
    "spatial organization.\n"
    "*Example*:\n"
    "The tasks are organized in a list format, with some items having associated handwritten notes that "
    'indicate completion or ongoing status. The name "Jimmy Wu" is associated with an action item '
    "regarding a DC work request with KC banded papers, awaiting approval for banded additives. The "
    'document also mentions running "GPC KS and KOOL KS on RIP-4 (LCC)" and notes that KC is running '
    '"cross-hatch" papers.\n'
    "\n"
    "**Step 4**: Examine marginal or peripheral content to ensure no important information is missed.\n"
    "*Example*:\n"
    "The document specifies that the next meeting is scheduled for Monday, February 7, at 9:00 a.m. in "
    'the International Conference Room. The reference number "584100571" is located at the bottom of the '
    "page, and the source URL is included at the bottom.\n"
    "\n"
    "**Step 5**: Organize all observations into a detailed, cohesive description.\n"
    "*Example*:\n"
    "The image is a monochrome photocopy of a document that appears to be a page of meeting or project "
    "notes, containing both typed and handwritten text. The document lists several tasks related to "
    'paper-related issues, such as checking with "KC" on the possibility of putting bands "long-ways," '
    'which is marked as "In progress," and checking the commercial viability of banded papers, marked as '
    '"Okay." Handwritten notes and checks next to some points indicate their status. The name "Jimmy Wu" '
    "is associated with an action item regarding a DC work request with KC banded papers, awaiting "
    'approval for banded additives. Other items include running "GPC KS and KOOL KS on RIP-4 (LCC)" and '
    'KC running "cross-hatch" papers. The next meeting is scheduled for Monday, February 7, at 9:00 a.m. '
    'in the International Conference Room. The document is marked with a reference number "584100571" at '
    "the bottom, and a source URL is included.\n"
    "\n"
    "**Important Notes**:\n"
    "\n"
    "---\n"
    "\n"
    "### Notes:\n"
    "- **Steps 1–4**: Write concise observations in one or two sentences each.  \n"
    "- **Step 5**: Summarize all observations into a detailed paragraph or two, as descriptive as "
    "necessary."
)
# The published request ends with this assistant turn, so the model continues from step 1.
ASSISTANT_PREFILL = (
    "Thank you! I will now think step-by-step, starting by extracting the salient content from the image."
)


class ReplyError(ValueError):
    """A model reply that does not hold the five CoD steps."""


@dataclass(frozen=True)
class CodSource:
    """What the annotator needs from one input record."""

    record_id: str
    image: str
    question: str
    caption: str
    asked: str = ""  # the first human turn as written (the published prompt quotes it verbatim)


def read_source(record: dict, *, path: str | os.PathLike | None = None, line: int | None = None) -> CodSource:
    """The id, image, bare question and original caption of ``record``; :class:`RecordError` names what is wrong.

    The first human turn is the question (``<image>`` and step-by-step requests removed; it may be empty).
    The original caption is the record's ``caption`` field when that is a non-empty string, as in the
    published annotation's input (then no gpt turn is needed); otherwise the first gpt turn.
    """
    rid = record_id(record, path=path, line=line)

    def fail(message: str, field: str) -> RecordError:
        return RecordError(message, path=path, line=line, record_id=rid, field=field)

    image = record.get("image")
    images = image if isinstance(image, list) else [image]
    if len(images) != 1 or not isinstance(images[0], str) or not images[0]:
        raise fail(f"expected exactly one image path, got {image!r}", "image")
    given = record.get("caption")
    if given is not None and not isinstance(given, str):
        raise fail(f"expected the original caption as a string, got {type(given).__name__}", "caption")
    caption = (given or "").strip()
    turns = record.get("conversations")
    needed = ((0, "human"),) if caption else ((0, "human"), (1, "gpt"))
    if not isinstance(turns, list) or len(turns) < len(needed):
        wanted = "a human question" if caption else "a human question and a gpt caption (or a 'caption' field)"
        raise fail(f"expected {wanted}", "conversations")
    for index, role in needed:
        turn = turns[index]
        if not isinstance(turn, dict) or turn.get("from") != role or not isinstance(turn.get("value"), str):
            raise fail(f"expected a {role!r} turn with a string value", f"conversations[{index}]")
    if not caption:
        caption = turns[1]["value"].strip()
        if not caption:
            raise fail("the original caption is empty (and there is no 'caption' field)", "conversations[1].value")
    return CodSource(rid, images[0], strip_instruction(turns[0]["value"]), caption, turns[0]["value"])


def build_messages(image_url: str, source: CodSource) -> list[dict]:
    """The published request: its system prompt, the question and original description then the image,
    and the assistant's opening sentence."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"Question: {source.asked}\n\nOriginal description: {source.caption}"},
                {"type": "image_url", "image_url": {"url": image_url}},
            ],
        },
        {"role": "assistant", "content": ASSISTANT_PREFILL},
    ]


def parse_cod_reply(text: str, finish_reason: str | None = None, refusal: str | None = None) -> tuple[list[str], str]:
    """The five step bodies of a reply and the caption they format to; :class:`ReplyError` says why not.

    Lenient about how steps are marked (see :func:`split_steps`), strict about content: all five steps
    present and non-empty, each marked once and in order, no other step numbers, no ``<image>`` in a step, and a
    caption that parses back to the same steps.
    """
    if refusal:
        raise ReplyError(f"the model refused: {refusal}")
    if finish_reason == "content_filter":
        raise ReplyError("reply stopped by the content filter (finish_reason=content_filter)")
    if finish_reason == "length":
        raise ReplyError("reply cut off at the token limit (finish_reason=length)")
    if blank(text):
        raise ReplyError("empty reply")
    if char := unpaired_surrogate(text):  # no training file can hold it
        raise ReplyError(f"the reply holds {char}, half of a UTF-16 pair and no character")
    steps = split_steps(text, COD_STEPS)
    if not steps:
        raise ReplyError("no 'Step N' markers in the reply")
    expected = range(1, len(COD_STEPS) + 1)
    missing = [n for n in expected if blank(steps.get(n, ""))]
    extra = sorted(n for n in steps if n not in expected)
    problems = []
    if missing:
        problems.append(f"missing or empty step(s) {', '.join(map(str, missing))}")
    if extra:
        problems.append(f"unexpected step(s) {', '.join(map(str, extra))}")
    if problems:
        raise ReplyError("; ".join(problems))
    # A step quoting numbered lines ("- Step 1: knead the dough" on a recipe) would be cut at them, the quoted
    # lines taken for a later step's text: a reply is usable only with each marker once, in order.
    markers = step_markers(text)
    if markers != list(expected):
        raise ReplyError(f"step markers {', '.join(map(str, markers))}: not steps 1 to {len(COD_STEPS)} once each "
                         "in order (a step quoting numbered steps?)")
    bodies = [steps[n] for n in expected]
    # The image placeholder marks where image features go; in a caption it would be read as a second image.
    with_placeholder = [str(n) for n, body in zip(expected, bodies) if IMAGE_TOKEN in body]
    if with_placeholder:
        raise ReplyError(f"{IMAGE_TOKEN} in step(s) {', '.join(with_placeholder)}")
    try:
        return bodies, format_checked_steps(COD_STEPS, bodies)
    except StepFormatError as err:
        raise ReplyError(str(err)) from None


def _training_record(record: dict, prompt: str, answer: str, annotation: dict) -> dict:
    out = copy.deepcopy(record)
    out["conversations"] = [
        {"from": "human", "value": user_turn(prompt)},
        {"from": "gpt", "value": answer},
    ]
    out["annotation"] = annotation
    check_llava_record(out)
    return out


def cod_record(record: dict, source: CodSource, caption: str, model: str) -> dict:
    """The CoD training record: the question + " Describe the image step by step." (as the published
    annotation writes it) -> the 5-step caption.

    Without a question the ``cod-default`` prompt is used. Fields other than ``conversations`` are kept.
    """
    prompt = f"{source.question} {ANNOTATION_DESCRIBE}" if source.question else caption_prompt("cod-default")
    return _training_record(record, prompt, caption, {"kind": "cod", "model": model})


def dd_record(record: dict, source: CodSource, description: str, model: str) -> dict:
    """The detailed-description record: the bare question (or the ``default`` caption prompt) -> step 5."""
    prompt = source.question or CAPTION_PROMPTS["default"]
    return _training_record(record, prompt, description, {"kind": "detailed_description", "model": model})


def description_of(caption: str) -> str:
    """Step 5 of a CoD caption written by :func:`cod_record` (used to rebuild a missing description record)."""
    bodies, _ = parse_cod_reply(caption)
    return bodies[-1]
