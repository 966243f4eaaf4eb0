"""Self-training without curation (arm C of the cycle): one candidate per record, drawn at random."""

from __future__ import annotations

import os
import random

from sicog.curate.records import parse_generated, training_record
from sicog.data.jsonl import iter_records, write_jsonl


def one_random_candidate(generated: str | os.PathLike, output: str | os.PathLike, seed: int) -> int:
    """Answer every generated record with one of its candidates drawn at random (seeded by record id);
    write LLaVA training records to ``output`` and return how many."""
    records = []
    for line, record in iter_records(generated):
        item = parse_generated(record, path=str(generated), line=line)
        choice = random.Random(f"{seed}/{item.id}").randrange(len(item.candidates))
        records.append(training_record(item, item.candidates[choice], {"file": str(generated), "candidate": choice}))
    return write_jsonl(output, records)
