"""Table files (CSV, TSV, JSONL, Parquet, xlsx) read in chunks of rows, so that memory is bounded by a chunk, not by
the file: each chunk is the columns of a few thousand rows as plain lists, with each row's number for messages.

Knows: how each format is read in pieces with the same cells as a whole-file read (`vrp.tables.read_table`): a
UTF-8 CSV or JSONL file (with or without a UTF-8 byte-order mark, no NUL byte) is read from disk line by line (CSV
with pandas' `read_csv(chunksize=...)`, after the shape check of `vrp.tables.check_csv_rows` over the same lines;
JSONL one line at a time with Python's `json`, after a first pass over the file that checks every line and collects
the union of the objects' keys, which are the table's columns as pandas makes them); Parquet by record batches
(`pyarrow.parquet.ParquetFile.iter_batches`, each converted by `to_pandas` as `pandas.read_parquet` converts the
whole table). A CSV or JSONL file in another encoding (UTF-16/32, a guessed legacy code page) or holding NUL bytes is
decoded whole as before (`vrp.charsets.decode_bytes`: the guess needs the whole file) and then cut into chunks;
xlsx is read whole (`vrp.xlsx_cells` reads openpyxl's read-only, streaming worksheet, but pads rows to the widest
row; the format holds at most 1,048,576 rows), then cut into chunks.
Row numbers are those of `vrp.sources`' messages: a JSONL file's line, a CSV/TSV/xlsx row's index + 2 (the header
is row 1), a Parquet row's index + 1.
Does not know: what the columns mean (`vrp.sources`).
"""
from __future__ import annotations

import codecs
import io
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vrp.charsets import BOMS
from vrp.errors import VrpError
from vrp.tables import (
    check_csv_rows,
    check_table_ext,
    check_unique_columns,
    csv_delimiter,
    decode_table_bytes,
    iter_jsonl_objects,
    read_table,
)

CHUNK_ROWS = 4096  # rows per chunk: about 25 MB of Python strings for rows with a 5 KB transcript each
SNIFF_BLOCK = 1 << 20  # bytes read at a time while checking that a file is plain UTF-8


@dataclass
class TableChunk:
    """Consecutive rows of a table. columns: column name -> the rows' cells (Python values as pandas reads them;
    a JSONL key missing from a row is None); rows: each row's number for messages (see the module doc)."""

    columns: dict[str, list[Any]]
    rows: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def iter_table_chunks(path: Path, stats: Counter | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[TableChunk]:
    """The rows of the table file `path` in chunks of at most `chunk_rows` rows, in file order; every chunk has the
    same columns. File-level checks run before the first chunk is yielded: an unknown extension, JSONL that is not
    valid JSON objects (every line is checked first, as a whole-file read would), a CSV row with another field count
    than the header, a column named twice. Raises VrpError naming the file (and line), as `vrp.tables.read_table`
    does; a decoding guess or removed NUL characters are recorded in `stats` as `read_table` records them."""
    ext = check_table_ext(path)
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    try:
        if ext in (".csv", ".tsv", ".jsonl"):
            plain = is_plain_utf8(path)
            if ext == ".jsonl":
                lines: Callable[[], Iterable[str]] = (lambda: _utf8_lines(path)) if plain else _decoded(path, stats)
                yield from _jsonl_chunks(lines, path, chunk_rows)
            else:
                yield from _csv_chunks(path, stats, chunk_rows, plain)
        elif ext == ".parquet":
            yield from _parquet_chunks(path, chunk_rows)
        else:
            yield from _frame_chunks(read_table(path, stats), path, chunk_rows, first_row=2)
    except VrpError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for a corrupt file
        detail = " ".join(str(e).split())
        raise VrpError(f"{path}: cannot read as {ext[1:]} ({type(e).__name__}: {detail})") from None


def is_plain_utf8(path: Path) -> bool:
    """True when the file's bytes are valid UTF-8 (after an optional UTF-8 byte-order mark) without a NUL byte and
    without a UTF-16/32 byte-order mark: then `vrp.charsets.decode_bytes` would give exactly the text that reading
    the file as `utf-8-sig` gives, so it can be read from disk in pieces. Reads the file once, a block at a time."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        head = f.read(4)
        if any(head.startswith(bom) for bom, enc in BOMS if enc != "utf-8"):
            return False
        block = head
        while block:
            if b"\x00" in block:
                return False
            try:
                decoder.decode(block)
            except UnicodeDecodeError:
                return False
            block = f.read(SNIFF_BLOCK)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _utf8_lines(path: Path) -> Iterator[str]:
    """The lines of a plain UTF-8 file (`is_plain_utf8`) split at `\\n` only, without it (a U+2028 inside a JSON
    string is no line end), a leading byte-order mark removed."""
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            line = raw.decode("utf-8-sig" if i == 0 else "utf-8")
            yield line.removesuffix("\n")


def _decoded(path: Path, stats: Counter | None) -> Callable[[], Iterable[str]]:
    """The lines of a file that is not plain UTF-8, decoded whole by `vrp.tables.read_table`'s decoder."""
    text = decode_table_bytes(path, stats)
    return lambda: iter(text.split("\n"))


def _jsonl_chunks(lines: Callable[[], Iterable[str]], path: Path, chunk_rows: int) -> Iterator[TableChunk]:
    """Two passes: the first checks every line and collects the keys (in order of first appearance, pandas' column
    order for a list of objects); the second yields the chunks."""
    keys: dict[str, None] = {}
    for _, obj in iter_jsonl_objects(lines(), path):
        keys.update(dict.fromkeys(obj))
    check_unique_columns(list(keys), path)
    names = list(keys)
    objects = iter_jsonl_objects(lines(), path)
    while batch := list(itertools.islice(objects, chunk_rows)):
        yield TableChunk({k: [obj.get(k) for _, obj in batch] for k in names}, [n for n, _ in batch])


def _csv_chunks(path: Path, stats: Counter | None, chunk_rows: int, plain: bool) -> Iterator[TableChunk]:
    """CSV/TSV: delimiter (`csv_delimiter` on the first lines), the shape check over every row, then pandas'
    chunked reader with every cell as text; from disk when `plain`, else from the whole decoded text."""
    import pandas as pd

    if plain:
        def stream() -> io.TextIOBase:
            return open(path, encoding="utf-8-sig", newline="")
    else:
        text = decode_table_bytes(path, stats)

        def stream() -> io.TextIOBase:
            return io.StringIO(text, newline="")
    with stream() as f:
        head = _head_lines(f)
    rest, sep = csv_delimiter(head, path)
    skip_sep_line = rest != head  # Excel's `sep=X` first line, which a whole-file read turns into a blank line
    with stream() as f:
        if skip_sep_line:
            f.readline()
        check_csv_rows(itertools.chain(["\n"] if skip_sep_line else [], f), path, sep)
    with stream() as f:
        reader = pd.read_csv(f, sep=sep, dtype=str, keep_default_na=False, index_col=False, chunksize=chunk_rows,
                             skiprows=1 if skip_sep_line else None)
        start = 0
        for df in reader:
            yield TableChunk({str(c): df[c].tolist() for c in df.columns}, list(range(start + 2, start + 2 + len(df))))
            start += len(df)


def _head_lines(f: io.TextIOBase) -> str:
    """The first line and the lines up to and including the first non-blank one after it (what `csv_delimiter`
    reads: a `sep=` line and the header)."""
    out = [f.readline()]
    while (line := f.readline()) and not line.strip():
        out.append(line)
    return "".join(out) + line


def _parquet_chunks(path: Path, chunk_rows: int) -> Iterator[TableChunk]:
    """Parquet by record batches, each converted to pandas with the file's schema (its pandas metadata restores
    an index stored as a column, as `pandas.read_parquet` does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    schema = pf.schema_arrow
    start = 0
    for batch in pf.iter_batches(batch_size=chunk_rows, use_pandas_metadata=True):
        df = pa.Table.from_batches([batch], schema=schema).to_pandas()
        check_unique_columns([str(c) for c in df.columns], path)
        yield TableChunk({str(c): df[c].tolist() for c in df.columns}, list(range(start + 1, start + 1 + len(df))))
        start += len(df)


def _frame_chunks(df: Any, path: Path, chunk_rows: int, first_row: int) -> Iterator[TableChunk]:
    """A DataFrame read whole, cut into chunks; its columns are read once as lists (never a cell at a time through
    the DataFrame, whose `attrs` pandas copies on every column access)."""
    cols = {str(c): df[c].tolist() for c in df.columns}
    n = len(df)
    del df
    for start in range(0, n, chunk_rows):
        stop = min(n, start + chunk_rows)
        yield TableChunk({k: v[start:stop] for k, v in cols.items()}, list(range(start + first_row, stop + first_row)))
