"""xlsx cells as the text the spreadsheet shows: typed cells through their number format, text cells as written.

Knows: that a spreadsheet stores what a person typed as a typed value when it looks like one (`10/10/2025` becomes a
date serial with a date format, `50%` the number 0.5 with format `0%`, `TRUE` a boolean) and shows it through the
cell's number format, so the text a person wrote and saw is the formatted value, not Python's `str` of it
(`2025-10-10 00:00:00`). The number format codes read here (ECMA-376 Part 1, 18.8.30 numFmt, and Excel's "Number
format codes" help page): up to four sections `positive;negative;zero;text`; colours (`[Red]`, `[Color10]`),
locale tags (`[$-409]`) and currency tags (`[$€-407]` shows `€`); literal text (`"quoted"`, `\\x`, the characters
`$ - + / ( ) : ! ^ & ' ~ { } < > =` and space); `_x` (a space as wide as x: one space); `*x` (repeat x to fill the
column: nothing); digit placeholders `0 # ?`, the decimal point, thousands separators and scaling commas, `%`,
scientific `E+ E-`; the date and time codes `y m d h s AM/PM A/P`, elapsed `[h] [m] [s]` and fractional seconds
(shown by `vrp.xlsx_dates`).
Excel's built-in formats come by id (openpyxl's `BUILTIN_FORMATS`), where ids 14 and 22 are "the system's short
date", shown here as en-US shows them (`m/d/yyyy`), the locale of the built-in table; `General` shows up to 15
significant digits, as the formula bar does (a narrow column can show fewer). Booleans show as `TRUE` / `FALSE`,
error values (`#N/A`) and empty cells as ''. Separators and month names are en-US.
Does not know (raises `UnsupportedFormat`, and the reader names the cell): conditions (`[>100]`), fractions
(`# ?/?`), other calendars and era codes (`B2`, `g`, `e`), digit placeholders with literal text between them
(`000-00-0000`), a time of day shown with a date code. Charts, formulas (the value cached by the application that
saved the file is read, as pandas reads it) and other sheets than the first are none of its business.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from vrp.xlsx_dates import format_datetime
from vrp.xlsx_formats import (
    LOCALE_BUILTINS,
    UnsupportedFormat,
    format_number,
    is_date_section,
    resolve_brackets,
    split_sections,
    tokenize,
)


def cell_text(value: Any, number_format: str | None, format_id: int | None = None, data_type: str = "n",
              epoch: dt.datetime | None = None) -> str:
    """The text a spreadsheet shows for a cell with `value` (as openpyxl reads it), `number_format` (its code) and
    `format_id` (the numFmtId; ids 14 and 22 are the locale's short date, `LOCALE_BUILTINS`). Text stays as
    written; None and error values are ''. Raises UnsupportedFormat for what this module cannot show."""
    from openpyxl.utils.datetime import WINDOWS_EPOCH

    if value is None or data_type == "e":
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    code = LOCALE_BUILTINS.get(format_id or -1, number_format or "General")
    epoch = epoch or WINDOWS_EPOCH
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta)):
        return format_datetime(value, code, epoch)
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnsupportedFormat(f"the number {value}")
        section = split_sections(code)[0]
        if code.strip().lower() not in ("general", "") and is_date_section(resolve_brackets(tokenize(section))):
            return format_datetime(value, code, epoch)
        return format_number(value, code)
    return str(value)


def read_xlsx_rows(path: str | Path) -> list[list[str]]:
    """The first worksheet of an xlsx file as rows of cell texts (`cell_text`), trailing empty rows and cells
    dropped and every row padded to the widest, as pandas' `read_excel` lays them out. Raises ValueError naming the
    cell (`B7`), its value and format when a cell cannot be shown as the spreadsheet shows it; openpyxl's own errors
    for a file that is not xlsx."""
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    wb = load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        rows: list[list[str]] = []
        for r, row in enumerate(ws.iter_rows(), 1):
            texts = []
            for c, cell in enumerate(row, 1):
                value = getattr(cell, "value", None)
                fmt = getattr(cell, "number_format", None)
                style = getattr(cell, "style_array", None)
                try:
                    texts.append(cell_text(value, fmt, style.numFmtId if style is not None else None,
                                           getattr(cell, "data_type", "n"), wb.epoch))
                except UnsupportedFormat as e:
                    raise ValueError(f"cell {get_column_letter(c)}{r} holds {value!r} with the number format "
                                     f"{fmt!r}, and vrp cannot show {e} as the spreadsheet does; format the cell "
                                     f"as text (or General) and save again") from None
            while texts and texts[-1] == "":
                texts.pop()
            rows.append(texts)
    finally:
        wb.close()
    while rows and not rows[-1]:
        rows.pop()
    width = max((len(r) for r in rows), default=0)
    return [r + [""] * (width - len(r)) for r in rows]
