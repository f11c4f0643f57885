"""Typed xlsx cells read as the text the spreadsheet shows (`vrp.xlsx_cells`, `vrp.tables.read_xlsx_table`).

The workbooks are written with openpyxl as a spreadsheet stores what a person typed: `10/10/2025` as a date with
Excel's built-in short-date format 14, `50%` as 0.5 with format `0%`, `TRUE` as a boolean."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from vrp.cli import main
from vrp.errors import VrpError
from vrp.sources import load_source
from vrp.xlsx_cells import cell_text
from vrp.xlsx_formats import UnsupportedFormat, format_number, general


def write_xlsx(path: Path, comments: list[tuple[Any, str | None]], likes: list[tuple[Any, str | None]] | None = None
               ) -> Path:
    """A table with title, transcript, comment (and like_count) columns; each comment/like is (value, format)."""
    from openpyxl import Workbook

    wb = Workbook()
    ws = wb.active
    ws.append(["title", "transcript", "comment"] + (["like_count"] if likes else []))
    for i, (value, fmt) in enumerate(comments, 2):
        ws.cell(i, 1, "a title")
        ws.cell(i, 2, "a transcript about cooking")
        c = ws.cell(i, 3, value)
        if isinstance(value, str):
            c.data_type = "s"  # openpyxl would make `=...` a formula; a person typed text
        if fmt is not None:
            c.number_format = fmt
        if likes:
            lc = ws.cell(i, 4, likes[i - 2][0])
            if likes[i - 2][1]:
                lc.number_format = likes[i - 2][1]
    wb.save(path)
    return path


def comments_of(path: Path) -> list[str]:
    videos, _ = load_source(path)
    return [c.text for v in videos for c in v.comments]


def test_a_comment_typed_as_a_date_stays_the_text_the_sheet_shows(tmp_path):
    """The handed member: Excel stores `10/10/2025` as a date with built-in format 14 (the locale's short date)."""
    path = write_xlsx(tmp_path / "t.xlsx", [(dt.datetime(2025, 10, 10), "mm-dd-yy"), ("first!", None)])
    assert comments_of(path) == ["10/10/2025", "first!"]


@pytest.mark.parametrize("value, fmt, shown", [
    (dt.datetime(2025, 10, 10), "dd.mm.yyyy", "10.10.2025"),          # a date in a custom format
    (dt.datetime(2025, 3, 4, 13, 5), "d-mmm-yy h:mm", "4-Mar-25 13:05"),  # a datetime
    (dt.time(13, 5), "h:mm AM/PM", "1:05 PM"),                         # a time
    (True, None, "TRUE"),                                              # a boolean
    (0.5, "0%", "50%"),                                                # a number with a display format
    (1.1, "0.00", "1.10"),
    (1234567, "#,##0", "1,234,567"),
    (0.1 + 0.2, None, "0.3"),                                          # General: what the formula bar shows
    ("007", None, "007"),                                              # text cells stay as written
    ("=1+1 is two", None, "=1+1 is two"),
    ("10/10/2025", None, "10/10/2025"),
])
def test_other_typed_cells_are_read_as_shown(tmp_path, value, fmt, shown):
    path = write_xlsx(tmp_path / "t.xlsx", [(value, fmt)])
    assert comments_of(path) == [shown]


def test_like_counts_with_a_thousands_format_are_still_counts(tmp_path):
    path = write_xlsx(tmp_path / "t.xlsx", [("top", None), ("low", None)], likes=[(1200, "#,##0"), (3, None)])
    videos, _ = load_source(path)
    assert [(c.text, c.like_count) for c in videos[0].comments] == [("top", 1200), ("low", 3)]


def test_a_cell_whose_format_cannot_be_shown_is_refused_naming_file_and_cell(tmp_path, capsys):
    path = write_xlsx(tmp_path / "t.xlsx", [("fine", None), (0.5, "# ?/?")])
    with pytest.raises(VrpError, match=r"t\.xlsx: cell C3 holds 0\.5 with the number format '# \?/\?'.*fraction"):
        load_source(path)
    assert main(["prepare", str(path), "--out", str(tmp_path / "ds")]) == 2
    assert "cell C3" in capsys.readouterr().err and not (tmp_path / "ds").exists()


def test_empty_rows_and_cells_are_laid_out_as_pandas_did(tmp_path):
    from openpyxl import Workbook

    from vrp.tables import read_xlsx_table

    wb = Workbook()
    ws = wb.active
    ws.append(["title", "transcript", "comment"])
    ws.append(["t", "x", 5])
    ws.append([None, None, None])
    ws.append(["t", None, "y"])
    ws.cell(9, 1).number_format = "0.00"   # a formatted but empty cell below: no row
    wb.save(tmp_path / "e.xlsx")
    df = read_xlsx_table(tmp_path / "e.xlsx")
    assert list(df.columns) == ["title", "transcript", "comment"]
    assert df.values.tolist() == [["t", "x", "5"], ["", "", ""], ["t", "", "y"]]


@pytest.mark.parametrize("value, code, shown", [
    (1234567.891, "#,##0.00", "1,234,567.89"), (-1234.5, "#,##0_);(#,##0)", "(1,235)"), (0.5, "#.##", ".5"),
    (12345.678, "0.00E+00", "1.23E+04"), (12345, "##0.0E+0", "12.3E+3"), (1234567, "#,##0,", "1,235"),
    (3, '[$€-407] #,##0.00', "€ 3.00"), (0, '0;-0;"zero"', "zero"), (5, ";;;", ""), (7, "000", "007"),
    (2.5, "0", "3"), (-2.5, "0", "-3"), (9.995, "0.00", "10.00"), (1, "0.0?", "1.0 "), (5, "@", "5"),
])
def test_number_formats(value, code, shown):
    assert format_number(value, code) == shown


@pytest.mark.parametrize("value, code, fmt_id, shown", [
    (dt.datetime(2025, 3, 4), "mm-dd-yy", 14, "3/4/2025"),
    (dt.datetime(2025, 3, 4), "mm-dd-yy", 164, "03-04-25"),      # the same code as a custom format is not the locale's
    (dt.datetime(2025, 3, 4), "dddd, mmmm d, yyyy", 164, "Tuesday, March 4, 2025"),
    (dt.datetime(2025, 3, 4, 13, 5, 9), "m/d/yy h:mm", 22, "3/4/2025 13:05"),
    (dt.time(13, 5, 59, 600000), "h:mm", 20, "13:06"),             # rounded to the second, then shown
    (dt.time(13, 5, 9, 250000), "mm:ss.0", 47, "05:09.3"),
    (dt.timedelta(hours=30, minutes=5), "[h]:mm:ss", 46, "30:05:00"),
    (dt.datetime(2025, 3, 4), "[$-409]mmmm d, yyyy;@", 164, "March 4, 2025"),
    (45940, "m/d/yyyy", 164, "10/10/2025"),                        # a serial that openpyxl did not convert
    (dt.datetime(2025, 3, 4), 'yyyy"年"m"月"d"日"', 164, "2025年3月4日"),
])
def test_date_and_time_formats(value, code, fmt_id, shown):
    assert cell_text(value, code, fmt_id) == shown


@pytest.mark.parametrize("value, code, why", [
    (5, "[>100]0;0", r"condition"), (5, "000-00-0000", "between digit placeholders"),
    (dt.time(9, 0), "m/d/yyyy h:mm", "time of day"), (dt.datetime(2025, 3, 4), "ggge", "calendars"),
])
def test_formats_that_cannot_be_shown_are_refused(value, code, why):
    with pytest.raises(UnsupportedFormat, match=why):
        cell_text(value, code, 164)


def test_general_shows_fifteen_significant_digits():
    assert [general(x) for x in (3, 2.0, 1 / 3, 1e20, 1.5e-7, -0.25)] == [
        "3", "2", "0.333333333333333", "1E+20", "1.5E-07", "-0.25"]


def test_a_date_cell_outside_the_sheets_date_range_is_refused_naming_the_cell(tmp_path):
    # Excel shows a negative date serial as #####; openpyxl would turn -5 into 1899-12-25
    path = write_xlsx(tmp_path / "neg.xlsx", [("fine", None), (-5, "yyyy-mm-dd")])
    with pytest.raises(VrpError, match=r"neg\.xlsx: cell C3 holds .*outside the spreadsheet's range"):
        load_source(path)
    ok = write_xlsx(tmp_path / "ok.xlsx", [(45940, "yyyy-mm-dd")])                # 2025-10-10 stays as shown
    assert comments_of(ok) == ["2025-10-10"]
