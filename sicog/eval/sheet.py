"""The results spreadsheet, laid out like VLMEvalKit's: one row per item, and the accuracy table.

Sheet "predictions": the row's fields (index, category, question, hint, options ...), the answer,
the model's prediction, the extracted answer, whether it is correct, and the error for failed rows. The answer and
the extracted answer are as scored here (yes/no in lower case), not the TSV's as VLMEvalKit's sheets keep it: its
yes/no rating reads a sheet of its own, not this one.
Sheet "accuracy": overall and per category. Sheet "headline": the metric VLMEvalKit reports for the
benchmark and its value. Yes/no benchmarks add sheet "yes_no" (accuracy, precision, recall and F1 overall and
per category), circularly evaluated ones sheet "circular" (circular accuracy overall and per category). Text
is written as text (a reply starting with "=" is not a formula), characters that Excel cannot store are
removed, and over-long cells are cut at Excel's cell limit with a marker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.worksheet.worksheet import Worksheet

from sicog.data.jsonl import atomic_file

EXCEL_CELL_LIMIT = 32767
CUT_MARKER = " [...cut]"
LEADING = ("index", "category", "l2-category", "question", "hint")
TRAILING = ("answer", "prediction", "extracted", "correct", "error")
STATS = ("correct", "scored", "accuracy")


def _cell_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = ILLEGAL_CHARACTERS_RE.sub("", str(value))
    if len(text) > EXCEL_CELL_LIMIT:
        text = text[: EXCEL_CELL_LIMIT - len(CUT_MARKER)] + CUT_MARKER
    return text


def _append(sheet: Worksheet, values: Iterable[object]) -> None:
    sheet.append([_cell_value(value) for value in values])
    for cell in sheet[sheet.max_row]:
        if cell.data_type == "f":
            cell.data_type = "s"  # a reply such as "=1+1" is text, not a formula


def item_columns(items: list[dict]) -> list[str]:
    """Known columns first, then the benchmark's own (options A, B, ...), then the results."""
    seen = list(dict.fromkeys(key for item in items for key in item))
    middle = [k for k in seen if k not in LEADING and k not in TRAILING]
    return [k for k in LEADING if k in seen] + middle + [k for k in TRAILING if k in seen]


def _write_table(sheet: Worksheet, table: dict, stats: tuple[str, ...]) -> None:
    """One line for ``table`` overall, then one per category (and l2-category) of it."""
    _append(sheet, ("split", "name", *stats))
    _append(sheet, ("overall", "all", *(table[stat] for stat in stats)))
    for split in ("by_category", "by_l2_category"):
        for name, group in table.get(split, {}).items():
            _append(sheet, (split.removeprefix("by_"), name, *(group[stat] for stat in stats)))


def write_xlsx(path: str | os.PathLike, items: list[dict], summary: dict) -> Path:
    """Write the spreadsheet atomically (temp file + rename) and return its path."""
    path = Path(path)
    workbook = Workbook()
    predictions = workbook.active
    predictions.title = "predictions"
    columns = item_columns(items)
    _append(predictions, columns)
    for item in items:
        _append(predictions, (item.get(column) for column in columns))
    _write_table(workbook.create_sheet("accuracy"), summary, STATS)
    headline = workbook.create_sheet("headline")
    _append(headline, ("metric", "value"))
    _append(headline, (summary["headline"]["metric"], summary["headline"]["value"]))
    if "yes_no" in summary:
        _write_table(workbook.create_sheet("yes_no"), summary["yes_no"], (*STATS, "precision", "recall", "f1"))
    if "circular" in summary:
        _write_table(workbook.create_sheet("circular"), summary["circular"], STATS)
    with atomic_file(path, "wb") as handle:
        workbook.save(handle)
    return path
