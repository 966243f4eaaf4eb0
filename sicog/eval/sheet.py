"""The results spreadsheet, like VLMEvalKit's: one row per item, and the accuracy table.

Sheet "predictions": the row's fields (index, category, question, hint, options ...), the answer,
the model's prediction, the extracted answer, whether it is correct, and the error for failed rows.
Sheet "accuracy": overall and per category. Text is written as text (a reply starting with "=" is not
a formula), characters that Excel cannot store are removed, and over-long cells are cut at Excel's
cell limit with a marker.
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
    accuracy = workbook.create_sheet("accuracy")
    _append(accuracy, ("split", "name", "correct", "scored", "accuracy"))
    _append(accuracy, ("overall", "all", summary["correct"], summary["scored"], summary["accuracy"]))
    for split in ("by_category", "by_l2_category"):
        for name, stats in summary.get(split, {}).items():
            _append(accuracy, (split.removeprefix("by_"), name, stats["correct"], stats["scored"], stats["accuracy"]))
    with atomic_file(path, "wb") as handle:
        workbook.save(handle)
    return path
