"""The stage-1.5 training data of each arm, built from generation, curation and the world's references."""

from __future__ import annotations

import random
from pathlib import Path

from sicog.curate.records import parse_generated, training_record
from sicog.data.jsonl import iter_records, write_jsonl


def one_random_candidate(generated: Path, output: Path, seed: int) -> int:
    """Arm C: every generated record answered by one of its candidates drawn at random (seeded)."""
    records = []
    for line, record in iter_records(generated):
        item = parse_generated(record, path=str(generated), line=line)
        choice = random.Random(f"{seed}/{item.id}").randrange(len(item.candidates))
        records.append(training_record(item, item.candidates[choice], {"file": str(generated), "candidate": choice}))
    return write_jsonl(output, records)


def limited(source: Path, output: Path, limit: int | None) -> Path:
    """The first ``limit`` records of ``source`` (all when ``limit`` is None), written to ``output``."""
    if limit is None:
        return source
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, (record for (_, record), _ in zip(iter_records(source), range(limit))))
    return output
