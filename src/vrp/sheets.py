"""Tables that vrp writes for people to open in a spreadsheet: CSV with formula protection, xlsx with text cells.

Knows: CSV injection (OWASP "CSV Injection"; CWE-1236): Excel, LibreOffice Calc and Google Sheets run a CSV cell
that starts with `=`, `+`, `-` or `@` as a formula (and a tab or carriage return before one), so a title or a
generated comment such as `=HYPERLINK(...)` becomes a live formula in the file a creator opens. OWASP's remedy,
applied here to every text cell: prefix a cell that starts with one of `FORMULA_TRIGGERS` with a single quote
(`'=5 tips` is shown as text), quote every text field, and double embedded quotes (RFC 4180 section 2.7; the csv
module does that). Numbers (`logprob` -0.5) are not text and stay as they are. Machine consumers can turn the
protection off (`escape_formulas=False`) or read the JSONL output. In xlsx no prefix is needed: openpyxl makes a
string cell a formula when it starts with `=` and an error cell when it is an Excel error code (`#N/A`, `#REF!`,
its `ERROR_CODES`), so every string cell is set back to a string (`data_type = "s"`) after pandas wrote it; Excel
never evaluates a string cell. Control characters that xlsx cannot hold are dropped (openpyxl refuses them).
Does not know: what the rows mean (see `vrp.generate.run`).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def escape_formula(value: Any) -> Any:
    """`value` with a leading `'` when it is text starting with a formula trigger (`=`, `+`, `-`, `@`, tab, CR;
    OWASP "CSV Injection"); anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def write_csv(df: Any, path: str | Path, escape_formulas: bool = True) -> None:
    """Write a pandas DataFrame to CSV (UTF-8, header row, no index, CRLF line ends as RFC 4180 section 2 has
    them). With `escape_formulas` every text cell is quoted and a cell starting with a formula trigger gets a
    leading `'` (see the module doc); without it the cells are written as they are, quoted only where RFC 4180
    needs it (a separator, quote, CR or LF inside)."""
    if escape_formulas:
        df = df.map(escape_formula)
    df.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC if escape_formulas else csv.QUOTE_MINIMAL,
              lineterminator="\r\n")  # RFC 4180 line ends: a lone CR in a cell is then quoted, too


def write_xlsx(df: Any, path: str | Path) -> None:
    """Write a pandas DataFrame to one xlsx sheet (header row, no index) in which every text cell is a string cell,
    never a formula or an error value, and illegal control characters are dropped (see the module doc)."""
    import pandas as pd
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    df = df.map(lambda x: ILLEGAL_CHARACTERS_RE.sub("", x) if isinstance(x, str) else x)
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        df.to_excel(writer, index=False)
        for sheet in writer.sheets.values():
            for row in sheet.iter_rows():
                for cell in row:
                    if isinstance(cell.value, str):
                        cell.data_type = "s"
