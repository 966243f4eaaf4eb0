"""The stage-1.5 mixture: curated caption and reasoning records combined by ratios into one file.

A ratio r takes every record floor(r) times plus a seeded random share (r - floor(r)) of the records
once more, its count rounded half up: 1.0 = all records, 0.5 = a random half (3 of 5), 2.0 = every
record twice. Repeated copies get
``#<copy>`` appended to their id so ids stay unique. Invalid LLaVA records and repeated ids within a
file go to the errors file; the same id in two inputs stops the mix (``--prefix-ids`` resolves it by
prefixing each id with the shortest end of its input's path that tells the inputs apart).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from sicog.data.jsonl import RecordError, error_record, errors_path, iter_records, write_jsonl, write_records
from sicog.data.schema import check_llava_record


@dataclass(frozen=True)
class MixPart:
    """What one input contributed to the mixture."""

    path: str
    records: int
    errors: int
    ratio: float
    taken: int


def take(records: Sequence[dict], ratio: float, rng: random.Random) -> list[dict]:
    """Apply one ratio: ``floor(ratio)`` full copies plus a random share of the records (rounded half up)."""
    if ratio < 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a finite number >= 0, got {ratio}")
    copies = math.floor(ratio)
    # The ratio as the decimal the user wrote (1.15, not the float 1.149999...): in floats 1.15 - 1 is
    # 0.1499999..., whose share of 10 records would round down. Half up, not Python's half to even: a ratio
    # of 0.5 takes 3 of 5 records, as it takes 2 of 3.
    share = (Fraction(repr(float(ratio))) - copies) * len(records)
    extra = math.floor(share + Fraction(1, 2))
    picked = [(copy, record) for copy in range(copies) for record in records]
    picked += [(copies, record) for record in rng.sample(list(records), extra)]
    return [record if copy == 0 else {**record, "id": f"{record['id']}#{copy}"} for copy, record in picked]


def id_prefixes(inputs: Sequence[str | Path]) -> list[str]:
    """One prefix per input, unique among the inputs: the shortest end of each path, without its extension,
    that tells the inputs apart (``captions/curated`` and ``reasoning/curated`` for two ``curated.jsonl``).

    Paths are compared resolved, so ``a/x.jsonl`` and ``./a/x.jsonl`` are one file; the extension is kept
    only when it is the sole difference (``x.json`` and ``x.jsonl``). The same file twice raises
    :class:`ValueError`.
    """
    resolved = [Path(path).resolve() for path in inputs]
    _check_distinct(inputs, resolved)
    # The anchor ("/") is left out: distinct resolved paths differ below it, at the latest in the extension.
    stems = [r.parts[1:-1] + (r.stem,) for r in resolved]
    names = [r.parts[1:] for r in resolved]
    depth = max(len(parts) for parts in names)
    tries = (["/".join(parts[-d:]) for parts in paths] for paths in (stems, names) for d in range(1, depth + 1))
    return next(prefixes for prefixes in tries if len(set(prefixes)) == len(prefixes))


def _check_distinct(inputs: Sequence[str | Path], resolved: Sequence[Path]) -> None:
    first: dict[Path, str | Path] = {}
    for path, real in zip(inputs, resolved):
        if real in first:
            raise ValueError(
                f"inputs {first[real]} and {path} are the same file; give it once "
                "(a ratio of 2 takes every record twice)"
            )
        first[real] = path


def mix(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    ratios: Sequence[float] | None = None,
    seed: int = 0,
    prefix_ids: bool = False,
) -> list[MixPart]:
    """Write the shuffled mixture of ``inputs`` to ``output`` (a JSON array for a ``.json`` name, in any letter
    case, else JSON Lines).

    With ``prefix_ids`` every id becomes ``<prefix>:<id>``, the prefix from :func:`id_prefixes`. The same
    file given twice raises :class:`ValueError`; an id in two inputs raises :class:`RecordError`.
    """
    output = Path(output)
    ratios = list(ratios) if ratios else [1.0] * len(inputs)
    if len(ratios) != len(inputs):
        raise ValueError(f"{len(inputs)} inputs but {len(ratios)} ratios")
    prefixes = id_prefixes(inputs)
    mixed: list[dict] = []
    errors: list[dict] = []
    parts = []
    origin: dict[str, list[str]] = {}
    for position, (path, ratio, prefix) in enumerate(zip(inputs, ratios, prefixes)):
        path = Path(path)
        valid, n_errors, seen = [], 0, set()
        for line, record in iter_records(path):
            try:
                check_llava_record(record, path=str(path), line=line)
                if str(record["id"]) in seen:
                    raise RecordError(
                        "duplicate id in this file", path=path, line=line, record_id=record["id"], field="id"
                    )
            except RecordError as err:
                errors.append(error_record(record, str(err), file=str(path), line=line, field=err.field))
                n_errors += 1
                continue
            seen.add(str(record["id"]))
            record = {**record, "id": f"{prefix}:{record['id']}" if prefix_ids else str(record["id"])}
            valid.append(record)
        chosen = take(valid, ratio, random.Random(f"{seed}:{position}"))
        for record in chosen:
            origin.setdefault(record["id"], []).append(str(path))
        mixed += chosen
        parts.append(MixPart(str(path), len(valid) + n_errors, n_errors, ratio, len(chosen)))
    duplicated = {rid: files for rid, files in origin.items() if len(files) > 1}
    if duplicated:
        examples = dict(list(duplicated.items())[:3])
        # Prefixes do not help when a copy's "#1" equals another id of its own file, or when an id holding ':'
        # meets another input's prefix plus id ("a" + "b:c" = "a:b" + "c").
        within_files = all(len(set(files)) == 1 for files in duplicated.values())
        advice = "rename the ids" if prefix_ids or within_files else \
            "use --prefix-ids to prefix each id with its input's path"
        raise RecordError(
            f"{len(duplicated)} id(s) occur more than once in the mixture, e.g. {examples}; {advice}",
            path=output,
        )
    random.Random(seed).shuffle(mixed)
    write_records(output, mixed)
    write_jsonl(errors_path(output), errors)
    return parts
