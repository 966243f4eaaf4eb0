"""Which records a training run reads: one source, a comma-separated list (with brace patterns, see
:func:`sicog.data.sources.split_data_path`), or a YAML mixture.

A source is anything :func:`sicog.data.sources.iter_input_records` reads (JSON files, HF ``datasets``
folders, parquet and arrow files, cached Hub datasets). A mixture file, in SICOG's keys or in
LLaVA-NeXT / LLaVA-OneVision's (``json_path``, ``sampling_strategy``)::

    datasets:
      - path: captions.jsonl          # relative to the YAML file's folder (else to the working folder), or absolute
        sampling: all                 # all | first:N | end:N | random:N; N a count or a percentage (10%)
      - json_path: reasoning.json
        sampling_strategy: random:50%

A percentage is rounded up (as LLaVA-NeXT does); ``random`` keeps the file order of a seeded draw. Any other
key, at the top or in an entry, is refused: a misspelt rule would otherwise train on the whole source.
Each loaded record remembers its source as ``(path, line)`` so every later error can point at it.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from sicog.data.jsonl import RecordError, require_file
from sicog.data.sources import HUB_ID, MIXTURE_SUFFIXES, expand_braces, iter_input_records, split_data_path
from sicog.data.yaml_file import read_yaml

# The seed of the random: sampling rules when none is given: `sicog train`'s --seed default (42, transformers'
# TrainingArguments.seed), so that `sicog data check` without --seed checks the records a run trains on.
DEFAULT_SEED = 42
SAMPLING_RULES = ("first", "end", "random")
# SICOG's key, then LLaVA-NeXT's, for the source and for the sampling rule of one mixture entry.
PATH_KEYS = ("path", "json_path")
SAMPLING_KEYS = ("sampling", "sampling_strategy")
ENTRY_KEYS = PATH_KEYS + SAMPLING_KEYS
TOP_KEYS = ("datasets",)


@dataclass(frozen=True)
class Source:
    """Where a record came from: the file or dataset and its line (JSON Lines), index (JSON array) or row."""

    path: str
    line: int


def sample(items: list, rule: str | None, seed: int, *, path: str | None = None, field: str = "sampling") -> list:
    """``items`` picked by a sampling rule: ``all``, or ``first``/``end``/``random`` ``:N`` (a count or ``P%``).

    ``random`` draws with ``random.Random(seed)`` and keeps the drawn items in their original order; a
    count larger than ``items`` keeps them all. An invalid rule raises :class:`RecordError` naming ``field``.
    """
    if rule in (None, "all"):
        return items
    how, _, amount = str(rule).strip().partition(":")
    try:
        count = math.ceil(Fraction(amount[:-1]) * len(items) / 100) if amount.endswith("%") else int(amount)
    except (ValueError, ZeroDivisionError):
        count = -1
    if how not in SAMPLING_RULES or count < 0:
        raise RecordError(f"invalid sampling rule {rule!r} (use all, or first, end or random followed by :N or :P%)",
                          path=path, field=field)
    if how == "first":
        return items[:count]
    if how == "end":
        return items[len(items) - min(count, len(items)) :]
    picked = sorted(random.Random(seed).sample(range(len(items)), min(count, len(items))))
    return [items[i] for i in picked]


def _entry_value(entry: dict, keys: tuple[str, ...], mixture: Path, index: int) -> tuple[str | None, str]:
    """The entry's value under one of ``keys`` (at most one may be given) and the key it was under."""
    given = [key for key in keys if key in entry]
    if len(given) > 1:
        raise RecordError(f"give {' or '.join(keys)}, not both", path=mixture, field=f"datasets[{index}]")
    return (entry[given[0]], given[0]) if given else (None, keys[0])


def _refuse_unknown_keys(mapping: dict, allowed: tuple[str, ...], mixture: Path, prefix: str) -> None:
    """Raise :class:`RecordError` naming the first key of ``mapping`` (as ``prefix`` + key) not in ``allowed``.

    Nothing reads such a key: a misspelt ``sampling_stratgy`` would leave the entry's rule at ``all`` and silently
    train on the whole source.
    """
    for key in mapping:
        if key not in allowed:
            raise RecordError(f"unknown key (allowed: {', '.join(allowed)})", path=mixture, field=f"{prefix}{key}")


def _entry_source(name: str, mixture: Path) -> str:
    """An entry's source: relative to the YAML file's folder, else to the working folder (where LLaVA-NeXT's
    scripts resolve them), else a Hub dataset id."""
    path = Path(name)
    if path.is_absolute():
        return name
    for candidate in (mixture.parent / path, path):
        if candidate.exists():
            return str(candidate)
    return name if HUB_ID.match(name) else str(mixture.parent / path)


def _mixture_entries(path: Path) -> Iterator[tuple[int, list[str], str | None, str]]:
    """Each entry of a mixture file, checked: its index, its sources (a brace pattern names several), its sampling
    rule and the key the rule was under."""
    require_file(path, "mixture file")
    spec = read_yaml(path) or {}
    if isinstance(spec, dict):
        _refuse_unknown_keys(spec, TOP_KEYS, path, "")
    entries = spec.get("datasets") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RecordError("expected a non-empty 'datasets' list", path=path, field="datasets")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise RecordError("each dataset must be a mapping", path=path, field=f"datasets[{index}]")
        _refuse_unknown_keys(entry, ENTRY_KEYS, path, f"datasets[{index}].")
        name, _ = _entry_value(entry, PATH_KEYS, path, index)
        if not isinstance(name, str) or not name:
            raise RecordError(f"each dataset needs a {' or '.join(PATH_KEYS)}", path=path, field=f"datasets[{index}]")
        rule, key = _entry_value(entry, SAMPLING_KEYS, path, index)
        yield index, [_entry_source(part, path) for part in expand_braces(name)], rule, key


def _read_mixture(path: Path, seed: int) -> list[tuple[dict, Source]]:
    records: list[tuple[dict, Source]] = []
    for index, sources, rule, key in _mixture_entries(path):
        # A brace pattern names several files; the entry's rule samples them together, as one source.
        loaded = [(r, Source(source, line)) for source in sources for line, r in iter_input_records(source)]
        records += sample(loaded, rule, seed + index, path=str(path), field=f"datasets[{index}].{key}")
    return records


def _is_mixture(part: str) -> bool:
    return part.lower().endswith(MIXTURE_SUFFIXES)


def data_sources(data_path: str | os.PathLike) -> list[str]:
    """Every source ``data_path`` reads, a mixture's entries included (their records are not read): what a
    command's output must not be."""
    return [source for part in split_data_path(data_path)
            for source in ([part, *(s for _, sources, _, _ in _mixture_entries(Path(part)) for s in sources)]
                           if _is_mixture(part) else [part])]


def load_mixture(data_path: str | os.PathLike, seed: int = DEFAULT_SEED) -> list[tuple[dict, Source]]:
    """Records (with their sources) named by ``data_path``: one source, a comma list or brace pattern of them,
    or a .yaml mixture (``seed`` draws its ``random:`` rules)."""
    records = []
    for part in split_data_path(data_path):
        if _is_mixture(part):
            records += _read_mixture(Path(part), seed)
        else:
            records += [(r, Source(part, line)) for line, r in iter_input_records(part)]
    return records
