"""The toy world's curation encoder: a text becomes the set of facts it states, compared by overlap.

Self-consistency curation needs a similarity under which two candidates that state the same facts in
other words are close and a candidate with one fact wrong is not. On real captions a strong sentence
encoder (NV-Embed-v2 in the paper) plays that part. A general-purpose encoder knows nothing of the toy
language: MiniLM scores a toy caption with a colour swapped almost as close as a paraphrase. So the
toy world brings its own encoder, written with the same phrase tables the world speaks: a caption
becomes the set of its facts (each object, and each object's stated size, position and label, the
background and the corner dot), a reasoning conclusion its final answer; the vector is that set's
indicator, L2-normalised, so the cosine of two texts is ``|A & B| / sqrt(|A| * |B|)``. It reads only
the candidates' text, never the ground truth. Real data keeps the sentence encoders.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sicog.data.answers import parse_answer
from sicog.toy.score import parse_caption

ENCODER_NAME = "toy-facts"
TASKS = ("captions", "reasoning")


def caption_facts(text: str) -> set[str]:
    """Every fact a toy caption states, as ``kind:object=value`` strings."""
    parsed = parse_caption(text)
    facts = {f"background={value}" for value in parsed["background"]}
    facts |= {_mark_fact(*claim) for claim in parsed["mark"]}
    for name, attributes in parsed["objects"].items():
        facts.add(f"object={name}")
        facts |= {f"{attribute}:{name}={value}" for attribute, values in attributes.items() for value in values}
    return facts


def _mark_fact(colour: str | None, corner: str | None, present: bool) -> str:
    """A corner-dot claim of :func:`~sicog.toy.score.parse_caption` as a fact."""
    if present:
        return f"dot={colour}" + (f" {corner}" if corner else "")
    return f"no dot={colour}" if colour else "no dot"


def answer_facts(text: str) -> set[str]:
    """A reasoning conclusion's final answer (normalised), or nothing when it gives none."""
    answer = parse_answer(text).normalized
    return {f"answer={answer}"} if answer else set()


def fact_vectors(texts: Sequence[str], task: str) -> np.ndarray:
    """One unit-length float32 row per text over the facts the texts state; a text with no fact is a zero row."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    read = caption_facts if task == "captions" else answer_facts
    sets = [read(text) for text in texts]
    vocabulary = {fact: i for i, fact in enumerate(sorted(set().union(*sets)))}
    vectors = np.zeros((len(texts), max(len(vocabulary), 1)), dtype=np.float32)
    for row, facts in enumerate(sets):
        if facts:
            vectors[row, [vocabulary[f] for f in facts]] = 1.0 / np.sqrt(len(facts))
    return vectors
