"""Reading benchmarks in VLMEvalKit's TSV format (MMStar, MMBench, AI2D, ScienceQA, POPE, ...).

Columns: ``index``, ``image`` (base64; or ``image_path``, a file), ``question``, optional ``hint``,
options ``A``, ``B``, ... (multiple choice), ``answer`` (a letter, or yes/no), optional ``category``
and ``l2-category``. As in VLMEvalKit, a short ``image`` cell holding another row's index reuses
that row's image (MMBench stores each picture once), a one-element list cell (``['<base64>']``,
``['a.png']``) is that one image, and the cells pandas reads as NaN (empty, ``nan``, ``NA``, ``None``,
``N/A``, ...) are missing values.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import hashlib
import io
import itertools
import json
import os
import re
import string
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from sicog.data.jsonl import RecordError, read_text, require_file
from sicog.model.image_io import ImageError, load_image
from sicog.model.tokens import IMAGE_TOKEN

MULTIPLE_CHOICE = "multiple-choice"
YES_NO = "yes/no"
# The cells that pandas' read_csv turns into NaN by default (pandas._libs.parsers.STR_NA_VALUES, the same set
# from pandas 2.0 to 3.1), matched exactly as written as pandas matches them: VLMEvalKit reads TSVs with plain
# pd.read_csv and drops NaN options, so an option "None" or "N/A" is no option there (and "NAN" is one).
# pandas is not a dependency of SICOG, hence the copy.
MISSING = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
})
# VLMEvalKit's rule: an image cell this short is a reference to another row's index, not base64.
IMAGE_REFERENCE_MAX = 64


@dataclass(frozen=True)
class Benchmark:
    """The rows of one benchmark file (every value a string) and what kind of benchmark it is."""

    path: Path
    rows: list[dict[str, str]]
    kind: str
    image_root: Path
    by_index: dict[str, dict[str, str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_index", {row["index"]: row for row in self.rows})

    @property
    def name(self) -> str:
        """The file name without its extension (``MMStar`` for ``MMStar.tsv``)."""
        return self.path.stem

    @cached_property
    def row_hashes(self) -> dict[str, str]:
        """Row index -> :func:`row_hash` of the row, computed once per benchmark."""
        return {row["index"]: row_hash(self, row) for row in self.rows}

    @property
    def indices(self) -> list[str]:
        """Every row's index, in file order."""
        return [row["index"] for row in self.rows]


def is_missing(value: object) -> bool:
    """Whether a cell is missing: one of pandas' NA strings (missing in VLMEvalKit's reading; a NaN or None
    value passed in reads as one of them too), or blank. pandas keeps a cell of spaces as text, but no
    question, option or answer can be made of one."""
    text = str(value)  # None, NaN and pandas' NA print as "None", "nan" and "<NA>"
    return text in MISSING or not text.strip()


def row_options(row: dict[str, str]) -> dict[str, str]:
    """The row's options, letter -> text, in letter order (missing letters are skipped)."""
    return {letter: row[letter] for letter in string.ascii_uppercase if letter in row and not is_missing(row[letter])}


def read_benchmark(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> Benchmark:
    """Read a VLMEvalKit-style TSV and check its columns and indices.

    ``image_root``: where relative ``image_path`` values start (default: the TSV's folder). Raises
    :class:`RecordError` naming file, line and column for a missing or repeated column, a missing or repeated
    index, a probably unbalanced quote, no row under the header (no line), or (without options) an answer that is
    not yes/no; row-level problems are found by :func:`row_problem` so that they can be reported without stopping
    the run.
    """
    path = Path(path)
    require_file(path, "benchmark file")
    csv.field_size_limit(1 << 30)  # base64 images exceed csv's default field limit
    # strict: a quoted cell must close right before a tab or a line end, as pandas (VLMEvalKit's TSVs) and csv write
    # them. A stray '"' at the start of a cell opens a quoted cell up to the next '"', swallowing the rows in
    # between (lost, or another row's answer scored); that quote is then followed by other text, or never comes.
    reader = csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", strict=True)
    rows, start = [], 1
    try:
        columns = next(reader, [])
        _check_unique_columns(columns, path)
        missing = [c for c in ("index", "question") if c not in columns]
        if "image" not in columns and "image_path" not in columns:
            missing.append("image or image_path")
        if missing:
            raise RecordError(f"missing columns: {', '.join(missing)}", path=path, line=1)
        start = reader.line_num + 1
        for cells in reader:
            line = reader.line_num  # the line the row ends on: blank lines and cells spanning lines counted
            if len(cells) > len(columns):
                raise RecordError(f"{len(cells) - len(columns)} more cells than columns", path=path, line=line)
            if cells:  # a blank line is no row, as in csv.DictReader and pandas
                rows.append((line, dict(itertools.zip_longest(columns, cells, fillvalue=""))))
            start = line + 1
    except csv.Error as err:  # its own words hold a raw tab ("'\t' expected after '\"'")
        how = "is never closed" if "end of data" in str(err) else f"closes before other text on line {reader.line_num}"
        raise RecordError(f'probably an unbalanced quote (") in the row starting on this line: a quoted cell {how}',
                          path=path, line=start) from None
    if not rows:  # nothing to score: an accuracy of "n/a" and exit 0 would pass for a result
        raise RecordError("holds no rows under its header", path=path)
    seen: dict[str, int] = {}
    for line, row in rows:
        index = row["index"].strip()
        if not index:
            raise RecordError("empty index", path=path, line=line, field="index")
        if index in seen:
            raise RecordError(f"index repeats line {seen[index]}", path=path, line=line, record_id=index, field="index")
        seen[index] = line
        row["index"] = index
    root = Path(image_root) if image_root is not None else path.parent
    return Benchmark(path, [row for _, row in rows], _kind(columns, rows, path), root)


def _check_unique_columns(columns: list[str], path: Path) -> None:
    """Raise :class:`RecordError` (line 1) for a column named twice: each row would keep only its last cell
    (pandas, and so VLMEvalKit, would rename the second one instead), so which one is meant is unclear."""
    repeated = list(dict.fromkeys(name for name in columns if columns.count(name) > 1))  # in header order
    if repeated:
        raise RecordError(f"repeated column(s): {', '.join(repeated)}", path=path, line=1)


def _kind(columns: list[str], rows: list[tuple[int, dict[str, str]]], path: Path) -> str:
    """Multiple choice when there are options A and B; yes/no when every answer is yes or no (and one at least
    is given: without options and answers, open questions look the same)."""
    if "A" in columns and "B" in columns:
        return MULTIPLE_CHOICE
    if all(is_missing(row.get("answer", "")) for _, row in rows):
        raise RecordError(
            "no options A, B and no answers: the rows may be open questions (an open benchmark's test split), "
            "which the built-in runner does not score and must not ask as yes/no questions (use VLMEvalKit)",
            path=path, line=1, field="answer",
        )
    for line, row in rows:
        answer = row.get("answer", "")
        if not is_missing(answer) and answer.strip().lower() not in ("yes", "no"):
            raise RecordError(
                f"answer {answer.strip()!r} is neither yes nor no and there are no options A, B: the built-in "
                "runner scores multiple-choice and yes/no benchmarks (use VLMEvalKit for open questions)",
                path=path, line=line, record_id=row["index"], field="answer",
            )
    return YES_NO


def row_problem(row: dict[str, str], kind: str) -> tuple[str, str] | None:
    """``(field, reason)`` when a row cannot be asked or scored, else None (a missing answer is fine:
    test splits such as MMBench_TEST are predicted, not scored)."""
    if is_missing(row.get("question")):
        return "question", "empty question"
    if kind == MULTIPLE_CHOICE:
        options = row_options(row)
        if len(options) < 2:
            return "A", f"a multiple-choice row needs at least two options, found {', '.join(options) or 'none'}"
        answer = row.get("answer", "")
        if not is_missing(answer) and answer.strip() not in options:
            return "answer", f"answer {answer.strip()!r} is not one of the options {', '.join(options)}"
    # The row's one image goes in front of its text: a placeholder in the text would make it stand twice.
    placeholder = next((name for name in ("hint", "question", *row_options(row)) if IMAGE_TOKEN in row.get(name, "")),
                       None)
    if placeholder is not None:
        return placeholder, f"a literal {IMAGE_TOKEN} placeholder in its text: the row's image would stand twice"
    return None


def image_cell(benchmark: Benchmark, row: dict[str, str]) -> str:
    """The row's base64 image cell, a reference to another row's index (VLMEvalKit stores each picture once)
    resolved; "" when the row has none. :class:`ImageError` for a reference to no row."""
    value = row.get("image", "").strip()
    if 0 < len(value) <= IMAGE_REFERENCE_MAX:
        referenced = benchmark.by_index.get(value)
        if referenced is None:
            raise ImageError(f"image cell {value!r} is neither base64 nor the index of another row")
        value = referenced.get("image", "").strip()
    return value


def row_hash(benchmark: Benchmark, row: dict[str, str]) -> str:
    """A digest of what the row asks: its hint, question, options and image (a referenced row's image
    resolved). Stored with each prediction and error, so that a rerun reuses them only for the same row,
    not for the row of another benchmark (or an edited one) that has the same index."""
    try:
        image = image_cell(benchmark, row)
    except ImageError:
        image = row.get("image", "")  # a dangling reference: the row is reported as an error all the same
    asked = [row.get("hint", ""), row.get("question", ""), row_options(row), image, row.get("image_path", "")]
    return hashlib.sha256(json.dumps(asked, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def single_image(cell: str) -> str:
    """An ``image`` or ``image_path`` cell as its one image: a list cell (``"['x']"``, which VLMEvalKit's
    ``toliststr`` reads as a list) unwrapped when it holds exactly one; :class:`ImageError` for a list of
    several or none, or a cell written like a list that is not one."""
    if not (len(cell) > 1 and cell.startswith("[") and cell.endswith("]")):
        return cell
    try:
        items = ast.literal_eval(cell)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ImageError("image cell starts with '[' and ends with ']' but is not a list") from None
    if not isinstance(items, list):
        raise ImageError("image cell starts with '[' and ends with ']' but is not a list")
    if len(items) != 1:
        raise ImageError("several images in one row are not supported" if items else "image cell is an empty list")
    return str(items[0])


def decode_image(data: str) -> Image.Image:
    """A base64 image cell (or a one-element list of one) as an RGB image; :class:`ImageError` says why one
    cannot be used. Line breaks and other whitespace inside the base64 are skipped, as VLMEvalKit's decoder
    skips them (MIME-wrapped base64 has one every 76 characters); any other character is an error."""
    data = single_image(data)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", data), validate=True)
    except (binascii.Error, ValueError) as err:
        raise ImageError(f"image is not valid base64: {err}") from None
    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot read the decoded image: {err}") from None
    return load_image(image)


def row_image(benchmark: Benchmark, row: dict[str, str]) -> Image.Image:
    """The row's image, from base64 (``image``) or from a file (``image_path``)."""
    data = image_cell(benchmark, row)
    if data:
        return decode_image(data)
    relative = single_image(row.get("image_path", "").strip())
    if not relative:
        raise ImageError("no image: both image and image_path are empty")
    file = Path(relative) if Path(relative).is_absolute() else benchmark.image_root / relative
    try:
        return load_image(file)
    except Image.DecompressionBombError as err:
        raise ImageError(f"image {file} is too large: {err}") from None
