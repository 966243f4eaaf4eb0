"""Prompts, step headers and the CoD annotation prompt equal the published strings.

Compared with the published files when ``$SICOG_REFERENCE_CODE`` points at them (read as text and
parsed, never executed); skipped otherwise.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

from sicog.annotate.cod import ASSISTANT_PREFILL, SYSTEM_PROMPT
from sicog.data.prompts import (
    ANNOTATION_DESCRIBE,
    CAPTION_PROMPTS,
    COD_STEPS,
    COT_STEPS,
    SHORT_ANSWER,
    STEP_BY_STEP_ANSWER,
    caption_prompt,
    reasoning_prompt,
)

REFERENCE = Path(os.environ.get("SICOG_REFERENCE_CODE") or "/nonexistent")
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "training_data_annotation" / "generate_cod_caption.py").is_file(),
    reason="published SICOG code not found: set SICOG_REFERENCE_CODE to the folder holding training_data_annotation/",
)


def string_constants(path: Path) -> list[str]:
    """Every string literal of a Python file (f-strings: their literal parts)."""
    nodes = ast.walk(ast.parse(path.read_text()))
    return [node.value for node in nodes if isinstance(node, ast.Constant) and isinstance(node.value, str)]


@needs_reference
def test_cod_annotation_prompt_and_headers_are_the_published_ones():
    strings = string_constants(REFERENCE / "training_data_annotation" / "generate_cod_caption.py")
    assert SYSTEM_PROMPT in strings
    assert ASSISTANT_PREFILL in strings
    assert re.findall(r"^\*\*Step \d\*\*: (.+)", SYSTEM_PROMPT, re.MULTILINE) == list(COD_STEPS)
    assert f" {ANNOTATION_DESCRIBE}" in strings
    # the published split that isolates the detailed description ends with step 5's header
    assert f"{COD_STEPS[4]}\n\n" in strings


@needs_reference
def test_cot_headers_are_the_published_ones():
    text = (REFERENCE / "training_data_annotation" / "convert_cot.py").read_text()
    assert re.findall(r"Step \d: (.+?)\\n", text) == list(COT_STEPS)


@needs_reference
def test_generation_prompts_are_the_published_ones():
    strings = string_constants(REFERENCE / "llava" / "inference" / "recap_558k_new.py")
    assert CAPTION_PROMPTS["cod-default"] in strings and CAPTION_PROMPTS["default"] in strings
    assert " Describe the image step-by-step." in strings  # cod-conv's suffix
    reasoning = (REFERENCE / "training_data_annotation" / "convert_cot.py").read_text()
    assert "Answer the question step-by-step." in reasoning


def test_prompt_types_as_in_the_readme():
    request = "Please generate a detailed caption of this image."
    assert caption_prompt("cod-default") == f"{request} Describe the image step-by-step."
    assert caption_prompt("default") == f"{request} Be as descriptive as possible."
    assert caption_prompt("cod-conv", "<image>\nWhat is this?") == "What is this? Describe the image step-by-step."
    # The record's question as written, its own instruction included (the published recap_558k_new.py appends to
    # conversations[0]'s value without <image>, stripped).
    short = "<image>\nWhich shape is it?\nAnswer the question using a single word or phrase."
    assert caption_prompt("cod-conv", short) == (
        "Which shape is it?\nAnswer the question using a single word or phrase. Describe the image step-by-step.")
    with pytest.raises(ValueError, match="needs the record's own question"):
        caption_prompt("cod-conv", "<image>\n")
    assert reasoning_prompt("cot-default", "How many? Answer the question using a single word or phrase.") == (
        "How many? Answer the question step-by-step.")
    assert reasoning_prompt("default", "How many?") == "How many?"
    # recap_558k_reasoning.py's default: the step-by-step request taken out wherever it stands, nothing else.
    assert reasoning_prompt("default", "<image>\nHow many?\nAnswer the question step-by-step.") == "How many?\n"
    assert reasoning_prompt("default", "How many? Answer the question using a single word or phrase.") == (
        "How many? Answer the question using a single word or phrase.")


@pytest.mark.parametrize(("question", "asked"), [
    # the request replaced in place, the line break before it kept
    ("<image>\nWhat color is the bus?\nAnswer the question using a single word or phrase.",
     "What color is the bus?\nAnswer the question step-by-step."),
    ("Answer the question using a single word or phrase. What is this?",
     "Answer the question step-by-step. What is this?"),
    # no short-answer request: appended after a space
    ("<image>\nWhy is the sky blue?", "Why is the sky blue? Answer the question step-by-step."),
    # an already converted question is sent as written (the published cot-default inference)
    ("<image>\nWhat color is the bus?\nAnswer the question step-by-step.",
     "What color is the bus?\nAnswer the question step-by-step."),
])
def test_cot_default_asks_as_the_published_conversion_does(question, asked):
    assert reasoning_prompt("cot-default", question) == asked


@needs_reference
def test_the_published_conversion_replaces_in_place_or_appends():
    strings = string_constants(REFERENCE / "training_data_annotation" / "convert_cot.py")
    assert {SHORT_ANSWER, STEP_BY_STEP_ANSWER, f" {STEP_BY_STEP_ANSWER}"} <= set(strings)
    text = (REFERENCE / "training_data_annotation" / "convert_cot.py").read_text()
    assert f'question.replace("{SHORT_ANSWER}", "{STEP_BY_STEP_ANSWER}")' in text
    assert f'question += " {STEP_BY_STEP_ANSWER}"' in text
