"""Multiple choice by option log-likelihood (the lm-evaluation-harness way), with an optional blind baseline.

Each option's text is scored as the assistant's whole reply to the image and the question asked as a
short-answer question ("... Answer the question using a single word or phrase."): the summed
log-probability of its tokens, the reply's end marker included, so that "red" and "red circle" are
told apart. The option with the highest sum is the prediction; the length-normalised prediction (mean
log-probability per token) is reported beside it. Unlike a generated letter, this needs no skill in
naming letters and cannot collapse onto one favourite letter, so it measures what the model knows.

Blind: each question is asked with another picture than its own (rows are paired by image content, not by
index, since benchmarks such as MMBench show one picture with several rows), which measures how much of the
accuracy the question text alone gives.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

from sicog.data.prompts import user_turn
from sicog.eval.generation import over_context
from sicog.eval.image_use import answer_losses
from sicog.eval.prompts import hinted_question, short_answer_prompt
from sicog.eval.tsv import Benchmark, image_cell, row_options
from sicog.model.image_io import ImageError
from sicog.model.processing import Encoded, SicogProcessor, context_size


def likelihood_prompt(row: dict[str, str], short_answer: bool = True) -> str:
    """The user text an option is scored after: hint, question and the short-answer instruction, or (not
    ``short_answer``) the hint and question as asked, for a request whose reply is a whole text, such as
    a caption request scored against descriptions."""
    return short_answer_prompt(row) if short_answer else hinted_question(row).strip()


def encode_options(
    processor: SicogProcessor, row: dict[str, str], image, short_answer: bool = True
) -> dict[str, Encoded]:
    """Letter -> an encoding of the row's :func:`likelihood_prompt` with that option's text as the supervised
    reply: the reply alone supervised (its text and end marker, whatever the checkpoint's training masking also
    supervises), the image as generation sees it (resized to ``inference_long_side`` where the checkpoint sets
    one). Raises :class:`~sicog.model.processing.ConversationError` for a row that cannot be encoded (a literal
    ``<image>`` in its text), so that the caller can report that row and score the rest."""
    human = {"from": "human", "value": user_turn(likelihood_prompt(row, short_answer))}
    return {
        letter: processor.encode([human, {"from": "gpt", "value": text.strip()}], [image], label_masking="replies",
                                 inference_images=True)
        for letter, text in row_options(row).items()
    }


def options_over_context(processor: SicogProcessor, options: Mapping[str, Encoded]) -> tuple[str, str] | None:
    """``(field, reason)`` when a row's encoded options (from :func:`encode_options`) do not all fit the model's
    context, else None. The reason names the longest option over it; the field is ``question`` when no option fits
    (the question is too long whatever is answered), else that option's letter."""
    context = context_size(processor)
    reasons = {letter: over_context(f"prompt with option {letter}", len(item.input_ids), context)
               for letter, item in options.items()}
    over = {letter: reason for letter, reason in reasons.items() if reason is not None}
    if not over:
        return None
    longest = max(over, key=lambda letter: len(options[letter].input_ids))
    return ("question" if len(over) == len(options) else longest), over[longest]


def option_scores(
    model, processor: SicogProcessor, items: Sequence[Encoded], batch_size: int = 16
) -> list[tuple[float, int]]:
    """(summed log-probability, token count) of each encoded option's reply."""
    return [(-nll, count) for nll, count in answer_losses(model, processor, items, batch_size)]


def choose(letters: Sequence[str], scores: Sequence[tuple[float, int]]) -> tuple[str, str]:
    """The letter with the highest summed log-probability, and the one with the highest mean per token
    (ties go to the earlier letter)."""
    by_sum = max(range(len(letters)), key=lambda i: (scores[i][0], -i))
    by_mean = max(range(len(letters)), key=lambda i: (scores[i][0] / max(scores[i][1], 1), -i))
    return letters[by_sum], letters[by_mean]


def image_keys(benchmark: Benchmark) -> dict[str, str]:
    """Row index -> a digest of the picture the row shows: its base64 cell with a reference to another row
    resolved, else its ``image_path`` under the image root. Rows with the same digest show the same picture."""
    keys = {}
    for row in benchmark.rows:
        try:
            # The reader's own resolution of references, so that the pairs and the runner agree on the picture.
            cell = image_cell(benchmark, row)
        except ImageError:
            cell = row.get("image", "").strip()  # a dangling reference: the row fails on its own image anyway
        relative = row.get("image_path", "").strip()
        where = os.path.normpath(benchmark.image_root / relative) if relative and not cell else ""
        keys[row["index"]] = hashlib.sha256(f"{cell}\0{where}".encode()).hexdigest()
    return keys


def score_rows(
    model, processor: SicogProcessor, rows: Sequence[Mapping[str, Encoded]], batch_size: int = 16
) -> list[dict]:
    """Score the encoded options of each row (from :func:`encode_options`), all rows' options batched together;
    per row ``prediction`` (by sum), ``prediction_normalised`` (by mean) and ``scores`` (letter -> [summed
    log-probability, tokens])."""
    encoded = [item for options in rows for item in options.values()]
    scores = iter(option_scores(model, processor, encoded, batch_size))
    results = []
    for options in rows:
        letters = list(options)
        mine = [next(scores) for _ in letters]
        by_sum, by_mean = choose(letters, mine)
        results.append({
            "prediction": by_sum,
            "prediction_normalised": by_mean,
            "scores": {letter: [round(total, 4), count] for letter, (total, count) in zip(letters, mine)},
        })
    return results
