"""Reading and writing records: JSON Lines (or a JSON array), atomic and resumable.

Every error names the file, the line (1-based) and, where known, the record id and field, so that a
bad record in a 100K-record file can be found and fixed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sicog.data.staging import remove_stale_staging, staging_path


class RecordError(ValueError):
    """A record that cannot be used, located by file, line, id and field.

    ``kind`` is a short category of the problem ("empty answer", "role order", ...) by which summaries group
    many errors; ``None`` where the raiser gives none.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        record_id: Any = None,
        field: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.reason = message
        self.path = None if path is None else str(path)
        self.line = line
        self.record_id = record_id
        self.field = field
        self.kind = kind
        where = []
        if self.path is not None:
            where.append(self.path if line is None else f"{self.path}:{line}")
        if record_id is not None:
            where.append(f"id={record_id!r}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{' '.join(where)}: {message}" if where else message)


def _is_json_array(path: Path) -> bool:
    with path.open("rb") as handle:
        if handle.read(3) != b"\xef\xbb\xbf":  # a UTF-8 byte order mark is not content
            handle.seek(0)
        while True:
            char = handle.read(1)
            if not char:
                return False
            if not char.isspace():
                return char == b"["


def decode_error(path: str | os.PathLike, data: bytes, err: UnicodeDecodeError, first_line: int = 1) -> RecordError:
    """A :class:`RecordError` naming the line and column of the first byte of ``data`` that is not UTF-8."""
    mark = len(data) - len(err.object)  # utf-8-sig decodes (and counts) after a byte order mark, no column
    start = err.start + mark
    line = first_line + data.count(b"\n", 0, start)
    column = start - max(data.rfind(b"\n", 0, start) + 1, mark) + 1
    bad = data[start : start + 1]
    message = f"not UTF-8 text (byte {bad!r} at column {column}); save the file as UTF-8"
    return RecordError(message, path=path, line=line)


def read_text(path: str | os.PathLike) -> str:
    """A whole text file as UTF-8 (a leading BOM dropped); bad bytes raise :class:`RecordError` naming the line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise decode_error(path, data, err) from None


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff). Only lines holding one can decode to a string that
# UTF-8 cannot encode (an unpaired surrogate); the regex spares the costlier check on every other line.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def unpaired_surrogate(text: str) -> str | None:
    """The escape (``\\ud83d``) of the first unpaired surrogate in ``text``, half of a UTF-16 pair and no character,
    which no UTF-8 file can hold (``json`` reads one from an escape); None when there is none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return ascii(err.object[err.start])[1:-1]
    return None


def _check_encodable(path: Path, line: int, record: dict) -> None:
    """Raise :class:`RecordError` when a string of ``record`` holds an unpaired surrogate
    (:func:`unpaired_surrogate`): writing the record would fail far from its line."""
    for key, value in record.items():
        if char := unpaired_surrogate(dumps({key: value})):
            raise RecordError(f"holds the escape {char}, half of a UTF-16 pair and no character: fix or drop it",
                              path=path, line=line, record_id=record.get("id"), field=str(key))


def require_file(path: str | os.PathLike, what: str = "file") -> None:
    """Raise :class:`RecordError` naming ``path`` unless it is a file to read: ``"{what} not found"``, or, for a
    folder, ``"is a folder, not a {what}"`` (it exists: "not found" would send the user looking for it)."""
    path = Path(path)
    if path.is_dir():
        raise RecordError(f"is a folder, not a {what}", path=path)
    if not path.is_file():
        raise RecordError(f"{what} not found", path=path)


# Datasets saved as tables (read by sicog.data.sources), and a YAML mixture's suffixes (sicog/data/mixture.py).
DATASET_SUFFIXES = (".parquet", ".arrow")
MIXTURE_SUFFIXES = (".yaml", ".yml")
# Files that hold no JSON text, by suffix, with what to do: named as such rather than read as text that is "not UTF-8".
_CONVERT = "`sicog data head --input FILE --output FILE.jsonl --limit ROWS` writes its rows as JSON Lines"
_TABLE = "records are JSON Lines or a JSON array (`sicog eval` reads benchmark TSVs)"
_MIXTURE = "a YAML mixture is read by `sicog train --data_path` and `sicog data check`"
NOT_JSON = {".gz": "decompress it first", ".bz2": "decompress it first", ".xz": "decompress it first",
            ".zst": "decompress it first", ".zip": "unzip it first", **dict.fromkeys(DATASET_SUFFIXES, _CONVERT),
            **dict.fromkeys(MIXTURE_SUFFIXES, _MIXTURE), ".csv": _TABLE, ".tsv": _TABLE}


def iter_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_or_index, record)`` from a ``.jsonl`` file or a ``.json`` array.

    Line numbers are 1-based for JSON Lines; for a JSON array the position is the 1-based index.
    Blank lines are skipped; a line that is not UTF-8, not a JSON object, or holds a string that UTF-8
    cannot encode (an unpaired ``\\ud800``-style escape) raises :class:`RecordError`.
    """
    path = Path(path)
    require_file(path)
    suffix = path.suffix.lower()
    if suffix in NOT_JSON:
        raise RecordError(f"is a {suffix} file, not JSON or JSON Lines: {NOT_JSON[suffix]}", path=path)
    if _is_json_array(path):
        text = read_text(path)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordError(f"invalid JSON: {err}", path=path, line=err.lineno) from None
        except ValueError as err:  # a number json will not convert (an integer of over 4300 digits)
            raise RecordError(f"invalid JSON: {err}", path=path) from None
        except RecursionError:
            raise RecordError(f"invalid JSON: {_TOO_DEEP}", path=path) from None
        surrogates = _SURROGATE_ESCAPE.search(text) is not None
        for index, record in enumerate(data, start=1):
            if not isinstance(record, dict):
                raise RecordError(f"expected an object, got {type(record).__name__}", path=path, line=index)
            if surrogates:
                _check_encodable(path, index, record)
            yield index, record
        return
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise decode_error(path, raw, err, first_line=lineno) from None
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecordError(f"invalid JSON: {err.msg} (column {err.colno})", path=path, line=lineno) from None
            except ValueError as err:  # a number json will not convert (an integer of over 4300 digits)
                raise RecordError(f"invalid JSON: {err}", path=path, line=lineno) from None
            except RecursionError:
                raise RecordError(f"invalid JSON: {_TOO_DEEP}", path=path, line=lineno) from None
            if not isinstance(record, dict):
                raise RecordError(f"expected an object, got {type(record).__name__}", path=path, line=lineno)
            if _SURROGATE_ESCAPE.search(text):
                _check_encodable(path, lineno, record)
            yield lineno, record


# Python's json parser recurses once per level: a line of thousands of nested brackets exceeds the recursion limit.
_TOO_DEEP = "nested too deeply (arrays or objects within each other past Python's recursion limit)"


def load_records(path: str | os.PathLike) -> list[dict]:
    """Read every record of a ``.jsonl`` or ``.json`` file into a list."""
    return [record for _, record in iter_records(path)]


def record_id(record: dict, *, path: str | os.PathLike | None = None, line: int | None = None) -> str:
    """Return the record's ``id`` as a string; a missing or empty id raises :class:`RecordError`."""
    value = record.get("id")
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        raise RecordError("missing or invalid 'id'", path=path, line=line, field="id")
    return str(value)


def dumps(record: dict) -> str:
    """One JSON line (UTF-8 kept readable, no trailing newline)."""
    return json.dumps(record, ensure_ascii=False)


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Files a command writes get the mode a plain open() would give them. Read once, at import (single
# threaded): setting the umask to read it would race with threads creating files.
FILE_MODE = 0o666 & ~_process_umask()


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` that replaces ``path`` when the block ends without error.

    Readers never see a half-written file; a killed writer leaves only a hidden ``.NAME.writing-HOST-PID.*.tmp``,
    which the next write of ``path`` removes once that process is gone (:func:`~sicog.data.staging.
    remove_stale_staging`). The file gets the permissions of the user's umask (``mkstemp`` alone would make it
    private, 0600).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    with _naming(path):
        blocked = blocked_reason(path, folder=False)
        if blocked is not None:  # mkdir would say "File exists" about the output, not about the file in the way
            raise NotADirectoryError(errno.ENOTDIR, blocked, str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(path.parent, path.name)  # each a whole copy of the file, left by a killed writer
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{staging_path(path, 'writing').name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        with _naming(path):
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def blocking_file(folder: str | os.PathLike) -> Path | None:
    """The file that keeps ``folder`` from being a folder or being made one: ``folder`` itself, or the nearest
    existing path above it, when that is not a folder; ``None`` when nothing is in the way."""
    folder = Path(folder)
    # A relative path's parents end at ".", which exists: the file is named as the user spelled its path.
    # os.path.exists, not Path.exists: it answers False instead of raising for a folder that cannot be searched.
    existing = next(p for p in (folder, *folder.parents) if os.path.exists(p))
    return None if existing.is_dir() else existing


def blocked_reason(path: str | os.PathLike, *, folder: bool = True) -> str | None:
    """Why a file keeps ``path`` from being written, worded to follow the path in a message, else ``None``.

    ``folder``: ``path`` must be a folder: "is a file, not a folder" when it is a file, "cannot be made a folder
    (X is a file)" when a path above it is. Otherwise ``path`` is a file to write and only the folders above it
    must be: "cannot be written (X is a file)". Every command words this one way, naming the file in the way,
    where mkdir would say only "File exists" or "Not a directory" about another path.
    """
    path = Path(path)
    blocker = blocking_file(path if folder else path.parent)
    if blocker is None:
        return None
    if blocker == path:
        return "is a file, not a folder"
    return f"cannot be {'made a folder' if folder else 'written'} ({blocker} is a file)"


def same_file(one: str | os.PathLike, other: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same inode (through links, ``..`` or another spelling) where both
    exist, else the same resolved path."""
    try:
        return os.path.samefile(one, other)
    except OSError:  # one of them does not exist (yet): only the same name can become the other
        return Path(one).resolve() == Path(other).resolve()


def refuse_overwriting(
    inputs: Iterable[tuple[str, str | os.PathLike]],
    option: str,
    output: str | os.PathLike,
    *,
    also: Iterable[str | os.PathLike] = (),
) -> None:
    """Raise :class:`ValueError` when ``output`` (given as the command-line ``option``), or a file it implies
    (``also``: its errors file, the files of an output folder), is the same file as one of ``inputs``
    (``(option, path)`` pairs): writing it would replace the records the command reads, so nothing may be
    written. Commands call it before they read or write anything."""
    inputs = list(inputs)
    for written in (output, *also):
        for input_option, path in inputs:
            if not same_file(written, path):
                continue
            what = f"{option} {output}" if written is output else f"{option} {output} writes {written}, which"
            raise ValueError(f"{what} is the same file as {input_option} {path}; writing it would replace the "
                             f"input: choose another {option}")


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Re-raise an ``OSError`` of the block as one about ``path``: the user named the output, not the hidden
    temporary file beside it, so a message such as "Permission denied: '.x.jsonl.ab12.tmp'" would mislead."""
    try:
        yield
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically (temp file + rename); return how many were written."""
    count = 0
    with atomic_file(path) as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
            count += 1
    return count


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON document atomically."""
    with atomic_file(path) as handle:
        json.dump(obj, handle, ensure_ascii=False, indent=2)
        handle.write("\n")


def is_json_array_path(path: str | os.PathLike) -> bool:
    """Whether records written to ``path`` form one JSON array: a ``.json`` name, in any letter case
    (readers such as the published ``train.py`` load a ``.json`` file whole with ``json.load``)."""
    return Path(path).suffix.lower() == ".json"


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically as a JSON array when ``path`` ends in ``.json`` (any case), else as JSON Lines;
    return how many were written. The array is written record by record, never held whole in memory."""
    if not is_json_array_path(path):
        return write_jsonl(path, records)
    count = 0
    with atomic_file(path) as handle:
        handle.write("[")
        for record in records:
            handle.write(("\n  " if count == 0 else ",\n  ") + dumps(record))
            count += 1
        handle.write("\n]\n" if count else "]\n")
    return count


def unfinished_line(path: str | os.PathLike) -> int | None:
    """The number of the last line of a JSON Lines file when it lacks its newline (a killed writer's
    line, cut by :func:`drop_partial_tail` before anything is appended), else ``None``."""
    path = Path(path)
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        if end == 0:
            return None
        handle.seek(end - 1)
        if handle.read(1) == b"\n" or _is_json_array(path):
            return None
        handle.seek(0)
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b"")) + 1


def drop_partial_tail(path: str | os.PathLike) -> None:
    """Cut a last line that a killed writer left without its newline, so appends stay valid JSONL (a JSON array,
    whose last line needs none, is left as it is)."""
    path = Path(path)
    if path.is_file() and unfinished_line(path) is not None:
        with path.open("rb+") as handle:
            handle.truncate(handle.read().rfind(b"\n") + 1)


class JsonlAppender:
    """Append records to a JSONL file, flushed and fsynced on :meth:`flush`, safe to resume.

    Opening repairs a partial last line left by a killed run; :attr:`done_ids` holds the ids already
    in the file so a rerun can skip them.
    """

    def __init__(self, path: str | os.PathLike, id_key: str = "id") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_partial_tail(self.path)
        self.done_ids: set[str] = set()
        if self.path.exists():
            for _, record in iter_records(self.path):
                if id_key in record:
                    self.done_ids.add(str(record[id_key]))
        self._id_key = id_key
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        """Queue one record (written on the next :meth:`flush`)."""
        self._handle.write(dumps(record) + "\n")
        if self._id_key in record:
            self.done_ids.add(str(record[self._id_key]))

    def flush(self) -> None:
        """Make everything written so far durable."""
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        """Flush and close."""
        if not self._handle.closed:
            self.flush()
            self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_record(record: dict | None, reason: str, *, record_id: Any = None, **extra: Any) -> dict:
    """The line written to an errors file: the id, why it failed, and the original record. Texts in ``reason`` and
    ``extra`` (a server's reply) that UTF-8 cannot encode (an unpaired surrogate) keep it as its escape, so that the
    errors file can always take the line."""
    rid = record_id if record_id is not None else (record or {}).get("id")
    reason, extra = _writable(reason), {key: _writable(value) for key, value in extra.items()}
    return {"id": None if rid is None else str(rid), "reason": reason, **extra, "record": record}


def _writable(value: Any) -> Any:
    """``value``, a text with any unpaired surrogate written as its escape (``\\ud83d``)."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(value, str) else value


def errors_path(output: str | os.PathLike) -> Path:
    """Where the error records of ``output`` go: ``<stem>.errors.jsonl`` in the same folder."""
    output = Path(output)
    return output.with_name(f"{output.stem}.errors.jsonl")
