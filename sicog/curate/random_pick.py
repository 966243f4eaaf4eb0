"""Self-training without curation (arm C of the cycle): one candidate per record, drawn at random."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from sicog.curate.records import read_generated_records, training_record
from sicog.curate.select import NO_USABLE, usable
from sicog.data.jsonl import error_record, errors_path, write_jsonl, write_records


@dataclass(frozen=True)
class RandomPick:
    """What one random pick wrote."""

    records: int
    errors: int
    output: str
    errors_output: str


def random_index(candidates: list[str], record_id: str, seed: int) -> int | None:
    """The candidate a random pick takes: one of the usable ones, drawn from ``seed`` and the record's id
    (None when none is usable). The cycle's curation analysis scores the same pick."""
    allowed = [i for i, text in enumerate(candidates) if usable(text)]
    return random.Random(f"{seed}/{record_id}").choice(allowed) if allowed else None


def one_random_candidate(generated: str | os.PathLike, output: str | os.PathLike, seed: int) -> RandomPick:
    """Answer every generated record with one of its usable candidates drawn at random (seeded by record id).

    Records are read and checked as ``sicog curate captions`` reads them; invalid and repeated records,
    and records without a usable candidate (all empty or containing ``<image>``), go to
    ``<output stem>.errors.jsonl`` with the reason. Both files are written atomically; the output is a JSON
    array when its name ends in ``.json``, else JSON Lines.
    """
    output = Path(output)
    items, errors = read_generated_records(generated)
    records = []
    for item in items:
        choice = random_index(item.candidates, item.id, seed)
        if choice is None:
            reason = f"{generated}:{item.line} id={item.id!r} field 'candidates': {NO_USABLE}"
            errors.append(error_record(item.record, reason, line=item.line, field="candidates"))
            continue
        records.append(training_record(item, item.candidates[choice], {"file": str(generated), "candidate": choice}))
    written = write_records(output, records)
    write_jsonl(errors_path(output), errors)
    return RandomPick(written, len(errors), str(output), str(errors_path(output)))
