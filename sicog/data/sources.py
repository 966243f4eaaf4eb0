"""Where input records come from: JSON files, or HF ``datasets`` sources.

- ``.jsonl`` / ``.json``, or a file of any other name that is not one of the below: JSON Lines or a JSON array, by
  its content (:func:`sicog.data.jsonl.iter_records`; the number given with each record is its line);
- a folder written by ``Dataset.save_to_disk`` (a ``DatasetDict`` folder: its ``train`` split, or its only one);
- a ``.parquet`` file, or an ``.arrow`` file as ``datasets`` writes them;
- a Hub dataset id ``owner/name`` (``owner/name:split`` for a split other than ``train``), read from the local
  cache when offline: the dataset as ``load_dataset`` prepared it, else the files ``hf download`` fetched.

A data path (``sicog train --data_path``, ``sicog data check|head``) may name several sources: a comma-separated
list, each part possibly a brace pattern as the published ``train.py`` documents (``/data/{captions,reasoning}.json``;
ranges such as ``part{1..3}.jsonl`` too), expanded by :func:`split_data_path`.

Dataset rows are LLaVA records like the JSON ones; the number given with each is its 1-based row. Columns a
row lacks are null in Arrow; they are dropped, as if the field were absent. Images must be file paths:
a column of embedded images (a ``datasets.Image`` feature) stops with an error naming it.
"""

from __future__ import annotations

import datetime
import decimal
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from braceexpand import UnbalancedBracesError, braceexpand

from sicog.data.jsonl import DATASET_SUFFIXES, MIXTURE_SUFFIXES, RecordError, iter_records

JSON_SUFFIXES = (".jsonl", ".json")
# owner/name, optionally :split (a Hub repository id cannot hold a colon).
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?::(?P<split>[\w.-]+))?$")
BATCH_ROWS = 1024


def can_be_hub_id(name: str) -> bool:
    """Whether ``name`` is a valid Hugging Face Hub repository id (``owner/name``; huggingface_hub's own check)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def names_hub_dataset(source: str) -> bool:
    """Whether ``source`` reads as a Hub dataset id (``owner/name[:split]``): no file or folder of that name, and no
    data file's suffix ("sft/a.jsonl" is a missing file)."""
    return (HUB_ID.match(source) is not None and not os.path.exists(source)
            and not source.lower().endswith((*JSON_SUFFIXES, *DATASET_SUFFIXES, *MIXTURE_SUFFIXES)))


def expand_braces(pattern: str) -> list[str]:
    """The paths a brace pattern names, in order (``a/{x,y}.json`` -> ``a/x.json``, ``a/y.json``); a path without
    braces is itself. Unbalanced braces raise :class:`RecordError`."""
    if "{" not in pattern:
        return [pattern]
    try:
        # escape=False: a backslash is part of a path here, not an escape to drop.
        return list(braceexpand(pattern, escape=False))
    except UnbalancedBracesError:
        raise RecordError("unbalanced braces in the path pattern (write {a,b} for a or b)", path=pattern) from None


def split_data_path(data_path: str | os.PathLike) -> list[str]:
    """The sources a data path names: its comma-separated parts, each brace pattern expanded, in order.

    A comma inside braces belongs to the pattern (``/d/{a,b}.json,/e/c.json`` is three files); empty parts and
    the spaces around a part are dropped. A path that names a file or folder as a whole is that one source, commas
    and braces in its name included.
    """
    text = str(data_path)
    if os.path.exists(text):
        return [text]
    parts, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "," and depth <= 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [path for part in parts if part.strip() for path in expand_braces(part.strip())]


def resolved_data_path(data_path: str | os.PathLike) -> str:
    """The sources :func:`split_data_path` names, comma-separated, each that exists as its real path: the same data
    named from another working folder, or as a brace pattern or a list, gives the same text."""
    return ",".join(os.path.realpath(path) if os.path.exists(path) else path for path in split_data_path(data_path))


def iter_data_path(data_path: str | os.PathLike) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(source, line_or_row, record)`` from every source :func:`split_data_path` names, in order."""
    for source in split_data_path(data_path):
        for line, record in iter_input_records(source):
            yield source, line, record


def iter_input_records(source: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_or_row, record)`` from any input this module reads (see the module docstring).

    Every problem raises :class:`RecordError` naming the source (and the row or field when known).
    """
    text, path = str(source), Path(source)
    if text.lower().endswith(JSON_SUFFIXES) or path.is_file() and path.suffix.lower() not in DATASET_SUFFIXES:
        yield from iter_records(source)  # any other file read by its content, as every reader of records reads it
        return
    row = 0
    try:
        for batch in dataset_batches(text):
            for record in batch.to_pylist():
                row += 1
                yield row, _as_json(record, source, row)
    except _read_errors() as err:  # a damaged or truncated file
        raise RecordError(f"cannot read after row {row}: {err}", path=source) from None


def _read_errors() -> tuple[type[Exception], ...]:
    """What reading a damaged file raises: OSError, and pyarrow's errors where pyarrow is installed."""
    try:
        from pyarrow import ArrowException
    except ImportError:
        return (OSError,)
    return (OSError, ArrowException)


def _as_json(value: Any, source: str | os.PathLike, row: int, field: str | None = None) -> Any:
    """A row's value as JSON holds it, as a .jsonl record would: nulls left out of objects (a column another row
    fills), times and dates as ISO text, decimals as text (exactly); binary data, which no record field holds,
    raises :class:`RecordError` naming the row and column."""
    if isinstance(value, dict):
        return {k: _as_json(v, source, row, k if field is None else f"{field}.{k}")
                for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_as_json(v, source, row, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime is a date
        return value.isoformat()
    if isinstance(value, (datetime.timedelta, decimal.Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise RecordError("holds binary data; SICOG records hold text, numbers and image paths", path=source,
                          line=row, field=field)
    return value


def dataset_batches(source: str) -> Iterator:
    """The rows of the dataset that ``source`` names (a saved folder, a .parquet or .arrow file, or a Hub id) as
    Arrow batches, in order, undecoded; a column of embedded media raises :class:`RecordError` naming it.

    Parquet is read with pyarrow, so a local file leaves nothing in the ``datasets`` cache.
    """
    try:
        import datasets
    except ImportError:
        raise RecordError("reading a dataset needs the `datasets` package (pip install datasets, or the "
                          "'train' extra of sicog)", path=source) from None
    path = Path(source)
    if path.is_file() and path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(source)
        _check_features(datasets.Features.from_arrow_schema(parquet.schema_arrow), source)
        return parquet.iter_batches(batch_size=BATCH_ROWS)
    if path.is_dir():
        try:
            dataset = datasets.load_from_disk(source)
        except FileNotFoundError:
            raise RecordError("not a dataset folder (none written by save_to_disk)", path=source) from None
        dataset = _one_split(dataset, None, source)
    elif path.is_file() and path.suffix.lower() == ".arrow":
        dataset = datasets.Dataset.from_file(source)
    elif path.suffix.lower() in DATASET_SUFFIXES or not HUB_ID.match(source):
        raise RecordError("file not found", path=source)
    else:
        dataset = _from_hub(source)
    _check_features(dataset.features, source)
    return dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)


def _one_split(dataset, split: str | None, source: str):
    """The split asked for; else ``train``; else the only split of a ``DatasetDict``."""
    if not hasattr(dataset, "keys"):
        return dataset
    splits = list(dataset.keys())
    chosen = split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if chosen not in splits:
        how = "name one as owner/name:SPLIT" if HUB_ID.match(source) else "give the split's folder"
        wanted = f"no split {split!r}" if split else "no 'train' split"
        raise RecordError(f"{wanted}; it holds {', '.join(splits)} ({how})", path=source)
    return dataset[chosen]


def _from_hub(source: str):
    """A Hub dataset from the local cache (or the Hub, when online)."""
    import datasets
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    match = HUB_ID.match(source)
    repo, split = match["repo"], match["split"]
    try:
        return _one_split(datasets.load_dataset(repo), split, source)
    except (ConnectionError, FileNotFoundError) as err:
        prepared_error = err
    # Files fetched with `hf download --repo-type dataset` are in the Hub cache, not in the datasets cache.
    try:
        folder = snapshot_download(repo, repo_type="dataset", local_files_only=True)
    except LocalEntryNotFoundError:
        raise RecordError(f"no local file or folder, and not a Hub dataset in the local cache ({prepared_error})",
                          path=source) from None
    try:
        snapshot = datasets.load_dataset(folder)
    except (datasets.exceptions.DatasetsError, FileNotFoundError, ValueError) as err:
        raise RecordError(f"cannot read its files in the Hub cache ({folder}): {err}", path=source) from None
    return _one_split(snapshot, split, source)


def _check_features(features, source: str) -> None:
    from datasets.features.features import require_decoding

    for name, feature in (features or {}).items():
        if require_decoding(feature, ignore_decode_attribute=True):
            raise RecordError(
                f"holds embedded {type(_leaf(feature)).__name__.lower()} data; SICOG records name image files: "
                "write the images out and store their paths (docs/data_formats.md)", path=source, field=name)


def _leaf(feature):
    while hasattr(feature, "feature"):
        feature = feature.feature
    return feature
