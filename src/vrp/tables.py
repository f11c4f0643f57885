"""Table files (CSV, JSONL, Parquet, xlsx) as pandas DataFrames whose cells are text exactly as written.

Knows: how each format is read so that no cell changes (`007`, `1.10`, `1e5`, `NA` stay text; a JSONL number keeps
its literal; an xlsx cell the spreadsheet typed, such as a date, is the text it shows, `vrp.xlsx_cells`), CSV/JSONL
bytes through `vrp.charsets`; the CSV delimiter from Excel's `sep=X` line or the header (`,`, `;` or tab); the shape
checks a table must pass (every CSV row has as many fields as the header, RFC 4180 quoting; no column named twice, in
any format; no key twice in a JSONL object); missing values (None, NaN, `pd.NA`, `NaT`) as ''; Parquet bytes as
UTF-8; NUL characters removed from text cells.
Does not know: what the columns mean or how rows become videos (`vrp.sources`), chunked reading (`vrp.table_chunks`).
"""
from __future__ import annotations

import io
import math
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from vrp import clean
from vrp.charsets import decode_bytes
from vrp.errors import VrpError
from vrp.files import loads_json
from vrp.xlsx_cells import read_xlsx_rows

TABLE_EXTS = (".xlsx", ".csv", ".tsv", ".jsonl", ".parquet")


def read_table(path: Path, stats: Counter | None = None) -> Any:
    """A table file as a DataFrame whose text cells are the text as written (see `cell`).

    CSV and xlsx are read with every column as text and no NA words (`NA`, `null`, `None` stay text; an empty cell is
    ''; a typed xlsx cell is shown through its number format, `read_xlsx_table`); JSONL is read by
    `read_jsonl_table`; Parquet keeps its column types (text stays text, numbers become text in `cell`). CSV and
    JSONL bytes are decoded by `vrp.charsets.decode_bytes` (any UTF BOM, UTF-8, else a guessed encoding, recorded in
    `stats["source_encoding"]` and logged). Raises VrpError naming the file."""
    import pandas as pd

    ext = check_table_ext(path)
    try:
        if ext in (".csv", ".tsv", ".jsonl"):
            decoded = decode_table_bytes(path, stats)
            if ext == ".jsonl":
                return read_jsonl_table(decoded, path)
            text, sep = csv_delimiter(decoded, path)
            check_csv_shape(text, path, sep)
            # index_col=False: a row with an extra field must never turn the first column into an index
            return pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, index_col=False)
        if ext == ".xlsx":
            return read_xlsx_table(path)
        df = pd.read_parquet(path)
        check_unique_columns([str(c) for c in df.columns], path)
        return df
    except VrpError:
        raise
    except Exception as e:  # pandas/openpyxl/pyarrow raise many types for a corrupt file
        detail = " ".join(str(e).split())  # one line: pandas' ParserError spans two
        raise VrpError(f"{path}: cannot read as {ext[1:]} ({type(e).__name__}: {detail})") from None


def check_table_ext(path: Path) -> str:
    """The lower-case extension of a table file; VrpError naming `path` when it is not one of `TABLE_EXTS`."""
    ext = path.suffix.lower()
    if ext not in TABLE_EXTS:
        raise VrpError(f"{path}: unknown extension {ext!r}; expected {', '.join(TABLE_EXTS)} or a collect dir "
                       f"(a tab-separated .txt from Excel: rename it to .tsv)")
    return ext


def decode_table_bytes(path: Path, stats: Counter | None = None) -> str:
    """The text of a CSV/JSONL file, read whole and decoded by `vrp.charsets.decode_bytes`; a guessed encoding is
    recorded in `stats["source_encoding"]`, removed NUL characters in `stats["nul_characters_removed"]`."""
    decoded = decode_bytes(path.read_bytes(), str(path))
    if decoded.how == "guessed" and stats is not None:
        stats["source_encoding"] = f"{decoded.encoding} (guessed)"  # type: ignore[assignment]
    if decoded.nul_removed and stats is not None:
        stats["nul_characters_removed"] += decoded.nul_removed
    return decoded.text


def read_xlsx_table(path: Path) -> Any:
    """The first sheet of an xlsx file as a DataFrame of the texts the spreadsheet shows (`vrp.xlsx_cells`: a comment
    typed as `10/10/2025`, which Excel stores as a date, stays `10/10/2025`; text cells as written), the first row as
    the header. Raises VrpError naming the file and the cell for a typed cell whose format cannot be shown."""
    import pandas as pd

    try:
        rows = read_xlsx_rows(path)
    except ValueError as e:
        if str(e).startswith("cell "):
            raise VrpError(f"{path}: {e}") from None
        raise
    if not rows:
        return pd.DataFrame()
    header = [cell(x) for x in rows[0]]
    check_unique_columns(header, path)
    return pd.DataFrame(rows[1:], columns=header, dtype=object)


def check_unique_columns(header: list[str], path: Path) -> None:
    """VrpError naming `path` and the column when a header names a column twice (pandas would rename or drop
    one silently)."""
    seen: set[str] = set()
    for name in header:
        if name in seen and name:
            raise VrpError(f"{path}: column {name!r} appears twice in the header; give each column one name")
        seen.add(name)


CSV_DELIMITERS = (",", ";", "\t")


def csv_delimiter(text: str, path: Path | str = "") -> tuple[str, str]:
    """(text, delimiter) of a CSV file's text. Excel's first line `sep=X` names the delimiter and becomes a blank
    line (line numbers stay those of the file); otherwise the delimiter is the one of `CSV_DELIMITERS` that the
    first non-blank line (the header) holds most often outside quotes (Excel in many European locales saves CSV with
    `;`), ',' when it holds none (a one-column file). Lines may end in CRLF, LF or CR alone (old Mac Excel). Raises
    VrpError naming `path` when a `sep=` line names no usable delimiter (none, several characters, a quote, a line
    break)."""
    lines = (line.rstrip("\r\n") for line in io.StringIO(text, newline=""))  # \r\n, \n or \r ends a line
    first = next(lines, "")
    header = first
    sep_line = first[1:-1] if len(first) > 1 and first[0] == first[-1] == '"' else first   # `"sep=;"` as a cell
    if sep_line[:4].lower() == "sep=":
        sep = sep_line[4:].rstrip(" ") or sep_line[4:]                        # `sep= ` names the space
        sep = sep[0] if sep and sep == sep[0] * len(sep) else sep             # `sep=;;;`: the line saved as a row
        if len(sep) != 1 or sep in "\"\r\n":
            raise VrpError(f"{path}:1: the first line {first!r} must name one delimiter character, as `sep=;` does")
        header = next((line for line in lines if line.strip()), "")
        if sep not in header and any(d in header for d in CSV_DELIMITERS):
            found = next(d for d in CSV_DELIMITERS if d in header)
            raise VrpError(f"{path}:1: the first line {first!r} names {sep!r} as the delimiter, but the header has "
                           f"no {sep!r} (it has {found!r}); fix or delete the `sep=` line")
        return text[len(first):], sep
    if not header.strip():
        header = next((line for line in lines if line.strip()), "")
    outside = "".join(part for i, part in enumerate(header.split('"')) if i % 2 == 0)
    counts = {d: outside.count(d) for d in CSV_DELIMITERS}
    best = max(CSV_DELIMITERS, key=lambda d: counts[d])
    return text, best if counts[best] else ","


def check_csv_shape(text: str, path: Path, delimiter: str = ",") -> None:
    """Check CSV `text` (RFC 4180 quoting, as pandas reads it) row by row: every row must have as many fields as
    the header, and the header no column twice. Blank lines are skipped (pandas skips them too). Raises VrpError
    naming `path`, the line where the row starts, the expected and the found number of fields: an unquoted comma
    in a cell (`wow, amazing`) otherwise shifts every column, or turns the first column into an index."""
    check_csv_rows(io.StringIO(text, newline=""), path, delimiter)


def check_csv_rows(lines: Iterable[str], path: Path, delimiter: str = ",") -> None:
    """`check_csv_shape` over the lines of a CSV file (each with its line end, as a file opened with `newline=""`
    gives them), read one at a time: the check of a file too large to hold in memory."""
    import csv

    csv.field_size_limit(2 ** 31 - 1)  # a transcript of a 3-hour talk is over the default 131,072 characters
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            if row and (len(row) > 1 or row[0].strip()):  # a blank line has no field or one blank field
                if header is None:
                    header = [name.strip() for name in row]
                    check_unique_columns(header, path)
                elif len(row) != len(header):
                    name = {",": "comma", ";": "semicolon", "\t": "tab"}.get(delimiter, f"{delimiter!r}")
                    hint = (f"; quote a cell that holds a {name} (\"wow{delimiter} amazing\")" if len(row) > len(header)
                            else f"; add the missing cells (empty ones as {delimiter}{delimiter})")
                    raise VrpError(f"{path}:{start}: expected {len(header)} fields like the header "
                                   f"({', '.join(header)}), found {len(row)} separated by {delimiter!r}{hint}")
            start = reader.line_num + 1
    except csv.Error as e:
        raise VrpError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def read_jsonl_table(text: str, path: Path) -> Any:
    """JSON Lines text (one object per line, blank lines skipped) as a DataFrame of Python values, one row per
    line (`iter_jsonl_objects`). Row numbers for messages come with the rows from `vrp.table_chunks`, never in
    `DataFrame.attrs` (pandas deep-copies `attrs` on every column access, so a per-row list there makes reading
    cells cost O(rows^2)). Raises VrpError naming `path` and the line for invalid JSON or a line that is not an
    object."""
    import pandas as pd

    return pd.DataFrame([obj for _, obj in iter_jsonl_objects(text.split("\n"), path)], dtype=object)


def iter_jsonl_objects(lines: Iterable[str], path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of JSON Lines text (`lines`: the text split at `\n` only, not
    `splitlines()`: a U+2028 may sit inside a JSON string). Strings stay as written (`"007"`, `"1.10"`, `"1e5"`),
    and so do numbers: they are kept as the text of their JSON literal (`1.10` -> `"1.10"`, `1e5` -> `"1e5"`), never
    converted to float and back. Raises VrpError naming `path` and the line for invalid JSON, a key twice in one
    object, or a line that is not an object."""
    for lineno, raw in enumerate(lines, 1):
        line = clean.strip_format_chars(raw)
        if not line.strip():
            continue
        obj = loads_json(line, f"{path}:{lineno}", name_line=False, parse_int=str, parse_float=str,
                         parse_constant=str, object_pairs_hook=no_duplicate_keys)
        if not isinstance(obj, dict):
            raise VrpError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict; ValueError naming the key when a key appears twice (json keeps the last
    silently, which would drop a column's value)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def cell(value: Any) -> str:
    """A table cell as stripped text; None, NaN and pandas' missing values (`pd.NA` of a nullable Int64 or string
    column, `NaT`) become '' (unknown). Numbers (Parquet numeric columns) become their shortest text: an integer as
    is, a whole float without `.0` (`100000.0` -> `100000`, as a spreadsheet shows it), other floats by `repr`.
    Bytes (a Parquet binary column) are decoded as UTF-8. ValueError for what is not text: a list or mapping, a
    boolean (JSON `true`), bytes that are not UTF-8."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or _is_missing(value):
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # bool_: numpy booleans
        raise ValueError(f"the boolean {value} is not text")
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(float(value))  # float(): np.float64 repr
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValueError(f"bytes that are not UTF-8 text (bad byte at offset {e.start})") from None
    if isinstance(value, (dict, list, tuple, set)) or (getattr(value, "ndim", 0) or 0) > 0:  # ndim: numpy arrays
        raise ValueError(f"a {type(value).__name__} is not text")
    return str(value).strip()


def _is_missing(value: Any) -> bool:
    """True for pandas' scalar missing values (`pd.NA`, `pd.NaT`) and numpy NaN of any float type."""
    import pandas as pd

    try:
        return bool(pd.api.types.is_scalar(value) and pd.isna(value))
    except (TypeError, ValueError):
        return False


def remove_nuls(columns: dict[str, list[Any]]) -> int:
    """Remove NUL characters (U+0000) from every text cell of `columns` (a table's columns as lists, changed in
    place); returns how many were removed. NUL is never text (a spreadsheet export or a binary tool left it), and it
    would end up in the training data; the caller counts and reports them (`vrp.sources`)."""
    removed = 0
    for values in columns.values():
        for i, x in enumerate(values):
            if isinstance(x, str) and "\x00" in x:
                removed += x.count("\x00")
                values[i] = x.replace("\x00", "")
    return removed
