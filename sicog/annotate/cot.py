"""LLaVA-CoT answers (SUMMARY / CAPTION / REASONING / CONCLUSION tags) -> the 4-step CoT format.

Each assistant turn becomes ``format_steps(COT_STEPS, [summary, caption, reasoning, conclusion])`` and
each question asks "Answer the question step-by-step."; a second record keeps the original questions
with the conclusions only (short answers). Both outputs are built from untouched copies of the input.
A record whose tags are missing, repeated, unbalanced or out of order goes to ``errors.jsonl``; one whose
4-step record alone is unusable keeps its short answer and goes to ``errors.jsonl`` for the 4-step record.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sicog.annotate.stepcheck import format_checked_steps
from sicog.data.jsonl import RecordError, error_record, iter_records, record_id, write_jsonl
from sicog.data.prompts import COT_STEPS, IMAGE_TOKEN, reasoning_prompt, step_by_step_question, user_turn
from sicog.data.schema import IMAGE_FIELD_RULE, ROLES, check_llava_record, record_images, valid_image_field

TAGS = ("SUMMARY", "CAPTION", "REASONING", "CONCLUSION")
# Only the exact upper-case tags in angle brackets count: the words alone are ordinary prose.
_TAG = re.compile(r"<(/?)(" + "|".join(TAGS) + r")>")

COT_FILE = "cot.jsonl"
SHORT_FILE = "short_answer.jsonl"
ERRORS_FILE = "errors.jsonl"


class TagError(ValueError):
    """An answer whose tags are not exactly SUMMARY, CAPTION, REASONING, CONCLUSION, each once, in order."""


def split_tags(text: str) -> list[str]:
    """The four tag bodies of a LLaVA-CoT answer, in order; :class:`TagError` says what is wrong."""
    found = list(_TAG.finditer(text))
    expected = [(slash, tag) for tag in TAGS for slash in ("", "/")]
    if [(m.group(1), m.group(2)) for m in found] != expected:
        raise TagError(_describe_tag_problem([(m.group(1), m.group(2)) for m in found]))
    bodies, outside, cursor = [], [], 0
    for opening, closing in zip(found[::2], found[1::2]):
        outside.append(text[cursor : opening.start()])
        bodies.append(text[opening.end() : closing.start()].strip())
        cursor = closing.end()
    outside.append(text[cursor:])
    stray = " ".join(part.strip() for part in outside if part.strip())
    if stray:
        raise TagError(f"text outside the tags: {stray[:80]!r}")
    empty = [tag for tag, body in zip(TAGS, bodies) if not body]
    if empty:
        raise TagError(f"empty tag(s): {', '.join(empty)}")
    return bodies


def _describe_tag_problem(found: list[tuple[str, str]]) -> str:
    opened = [tag for slash, tag in found if not slash]
    closed = [tag for slash, tag in found if slash]
    missing = [tag for tag in TAGS if tag not in opened]
    if missing:
        return f"missing tag(s): {', '.join(f'<{tag}>' for tag in missing)}"
    repeated = sorted({tag for tag in opened if opened.count(tag) > 1})
    if repeated:
        return f"repeated tag(s): {', '.join(f'<{tag}>' for tag in repeated)}"
    if opened != list(TAGS):
        return f"tags out of order: {' '.join(opened)} (expected {' '.join(TAGS)})"
    unclosed = [tag for tag in TAGS if closed.count(tag) != 1]
    if unclosed:
        return f"unclosed or repeated closing tag(s): {', '.join(f'</{tag}>' for tag in unclosed)}"
    return "tags nested or interleaved: " + " ".join(f"<{slash}{tag}>" for slash, tag in found)


def cot_question(value: str) -> str:
    """The question asking for a step-by-step answer, one ``<image>`` kept first (see
    :func:`sicog.data.prompts.step_by_step_question`: a short-answer request is replaced in place, else the
    step-by-step request is appended). A turn with several placeholders keeps them where they are, as
    docs/data_formats.md says of such turns: the request alone changes."""
    prompt = reasoning_prompt("cot-default", value)  # raises on a question that is empty without its placeholders
    images = value.count(IMAGE_TOKEN)
    if images > 1:
        return step_by_step_question(value, keep_images=True)
    return user_turn(prompt) if images else prompt


@dataclass(frozen=True)
class Conversion:
    """The outputs of one LLaVA-CoT record.

    ``short`` needs only the tags, so it exists whenever they are valid. ``cot`` is None, with the reason in
    ``cot_error``, when only the 4-step record is unusable: a question that is empty without ``<image>``, a
    tag body with a line that reads as a "Step N" marker or a horizontal rule, or a 4-step record that is no
    valid LLaVA record.
    """

    short: dict
    cot: dict | None
    cot_error: RecordError | None = None


def convert_record(
    record: dict, *, path: str | os.PathLike | None = None, line: int | None = None
) -> Conversion:
    """The short-answer and 4-step records of one LLaVA-CoT record, every turn converted; ``record`` is not changed.

    Raises :class:`RecordError` (naming the file, line, id and the field at fault) when neither can be made:
    a malformed image field, turn or tags.
    """
    rid = record_id(record, path=path, line=line)

    def fail(message: str, field: str) -> RecordError:
        return RecordError(message, path=path, line=line, record_id=rid, field=field)

    # Checked before the placeholder is added, which counts the images: a number or a boolean has no count.
    if not valid_image_field(record.get("image")):
        raise fail(IMAGE_FIELD_RULE, "image")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise fail("must be a non-empty list of turns", "conversations")
    tag_bodies: dict[int, list[str]] = {}
    for index, turn in enumerate(turns):
        field = f"conversations[{index}]"
        if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
            raise fail(f"expected {{'from': 'human'|'gpt', 'value': str}}, got {turn!r:.80}", field)
        if turn["from"] == "gpt":
            try:
                tag_bodies[index] = split_tags(turn["value"])
            except TagError as err:
                raise fail(str(err), f"{field}.value") from None
    source = None if path is None else str(path)
    short = copy.deepcopy(record)
    for index, bodies in tag_bodies.items():
        short["conversations"][index]["value"] = bodies[-1]
    _ensure_placeholder(short)
    check_llava_record(short, path=source, line=line)
    try:
        cot = _cot_record(record, tag_bodies, fail)
        check_llava_record(cot, path=source, line=line)
    except RecordError as err:
        return Conversion(short, None, err)
    return Conversion(short, cot)


def _cot_record(record: dict, tag_bodies: dict[int, list[str]], fail: Callable[[str, str], RecordError]) -> dict:
    """A copy of ``record`` with step-by-step questions and the 4-step answers of ``tag_bodies`` (by turn index)."""
    cot = copy.deepcopy(record)
    for index, turn in enumerate(cot["conversations"]):
        try:
            if index in tag_bodies:
                turn["value"] = format_checked_steps(COT_STEPS, tag_bodies[index])
            else:
                turn["value"] = cot_question(turn["value"])
        except ValueError as err:
            raise fail(str(err), f"conversations[{index}].value") from None
    _ensure_placeholder(cot)
    return cot


def _ensure_placeholder(record: dict) -> None:
    # LLaVA-CoT questions often omit <image>; training records need it in the first human turn.
    turns = record["conversations"]
    if len(record_images(record)) == 1 and not any(IMAGE_TOKEN in t["value"] for t in turns):
        turns[0]["value"] = user_turn(turns[0]["value"])


@dataclass
class CotSummary:
    """Counts of one conversion."""

    total: int = 0
    converted: int = 0  # records in both outputs
    short_only: int = 0  # records whose 4-step record failed but whose short answer was written
    errors: int = 0  # lines of errors.jsonl (short_only included)


def run_cot_job(
    input_path: str | os.PathLike, cot_dir: str | os.PathLike, short_dir: str | os.PathLike, *, progress: bool = True
) -> CotSummary:
    """Convert every record of ``input_path``; write ``cot.jsonl``, ``short_answer.jsonl`` and ``errors.jsonl``.

    All three files are written atomically at the end, so a rerun simply replaces them.
    """
    summary = CotSummary()
    cot_records, short_records, errors = [], [], []
    first_line: dict[str, int] = {}
    for line, record in tqdm(iter_records(input_path), desc="annotate cot", unit="rec", disable=not progress):
        summary.total += 1
        try:
            conversion = convert_record(record, path=input_path, line=line)
            rid = record_id(record, path=input_path, line=line)
            if rid in first_line:  # training and curation match records by id, so a repeat would shadow the first
                raise RecordError(f"duplicate id (first on line {first_line[rid]})", path=input_path, line=line,
                                  record_id=rid, field="id")
            first_line[rid] = line
        except RecordError as err:
            errors.append(error_record(record, str(err), line=line))
            continue
        short_records.append(conversion.short)
        if conversion.cot is None:
            summary.short_only += 1
            reason = f"{conversion.cot_error}; only its short answer was written ({SHORT_FILE})"
            errors.append(error_record(record, reason, line=line))
        else:
            cot_records.append(conversion.cot)
    if not summary.total:  # a truncated download would "succeed" with empty outputs, found out at training
        raise RecordError("holds no records", path=input_path)
    summary.converted, summary.errors = len(cot_records), len(errors)
    write_jsonl(Path(cot_dir) / COT_FILE, cot_records)
    write_jsonl(Path(short_dir) / SHORT_FILE, short_records)
    write_jsonl(Path(cot_dir) / ERRORS_FILE, errors)
    return summary
