"""Which records a training run reads: one file, a comma-separated list, or a YAML mixture.

A mixture file::

    datasets:
      - path: captions.jsonl          # relative to the YAML file's folder, or absolute
        sampling: all                 # all | first:N | first:P% | random:N | random:P%
      - path: reasoning.json
        sampling: random:50%

Each loaded record remembers its source as ``(path, line)`` so every later error can point at it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from sicog.data.jsonl import RecordError, iter_records, read_text


@dataclass(frozen=True)
class Source:
    """Where a record came from."""

    path: str
    line: int


def _sample(items: list, rule: str, seed: int, path: str) -> list:
    if rule in (None, "all"):
        return items
    how, _, amount = str(rule).partition(":")
    try:
        count = round(len(items) * float(amount[:-1]) / 100) if amount.endswith("%") else int(amount)
    except ValueError:
        count = -1
    if how not in ("first", "random") or count < 0:
        raise RecordError(
            f"invalid sampling rule {rule!r} (use all, first:N, first:P%, random:N, random:P%)",
            path=path, field="sampling",
        )
    if how == "first":
        return items[:count]
    picked = sorted(random.Random(seed).sample(range(len(items)), min(count, len(items))))
    return [items[i] for i in picked]


def load_mixture(data_path: str | os.PathLike, seed: int = 0) -> list[tuple[dict, Source]]:
    """Records (with their sources) named by ``data_path``: a .json/.jsonl file, a comma list, or a .yaml mixture."""
    text = str(data_path)
    if text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise RecordError("mixture file not found", path=path)
        try:
            spec = yaml.safe_load(read_text(path)) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            raise RecordError(f"not valid YAML: {getattr(err, 'problem', None) or err}", path=path,
                              line=None if mark is None else mark.line + 1) from None
        entries = spec.get("datasets") if isinstance(spec, dict) else None
        if not isinstance(entries, list) or not entries:
            raise RecordError("expected a non-empty 'datasets' list", path=path, field="datasets")
        records: list[tuple[dict, Source]] = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "path" not in entry:
                raise RecordError("each dataset needs a 'path'", path=path, field=f"datasets[{index}]")
            file = Path(entry["path"])
            file = file if file.is_absolute() else path.parent / file
            loaded = [(r, Source(str(file), line)) for line, r in iter_records(file)]
            records += _sample(loaded, entry.get("sampling", "all"), seed + index, str(path))
        return records
    records = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            records += [(r, Source(part, line)) for line, r in iter_records(part)]
    return records
